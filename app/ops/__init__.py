"""Operations: starting a SuperLink and SuperNodes on this machine (launch), TLS files and SuperNode keys (certs),
the Prometheus exporter around each Flower process (exporter), a federation's status (status) and the local demo
(demo). Imports any package below app.cli."""
