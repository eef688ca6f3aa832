"""app.node.supernode_watch: Flower's connection output turned into lines that name the address and the fix."""

from pathlib import Path

from app.node.supernode_watch import SuperNodeWatch


def test_retries_before_the_connection_count_and_stop_once_connected():
    watch = SuperNodeWatch("fl.example.org:9092", Path("ca.crt"))
    watch("WARNING :   Connection attempt failed, retrying in 0.71 seconds")
    watch("WARNING :   Connection attempt failed, retrying in 2.10 seconds")
    watch("INFO :      SuperNode ID: 123")
    watch("WARNING :   Connection attempt failed, retrying in 0.50 seconds")  # the node's own executor, later
    assert (watch.attempts, watch.connected, watch.problem) == (2, True, None)


def test_each_refusal_names_its_fix():
    watch = SuperNodeWatch("fl.example.org:9092", Path("certs/ca.crt"), Path("keys/op0.key"))
    cases = {
        "Tls handshake failed ... CERTIFICATE_VERIFY_FAILED: certificate has expired: OK": "expired TLS certificate",
        "SSL_ERROR_SSL: BAD_SIGNATURE: certificate signature failure": "not signed by --root-certificates certs/ca.crt",
        "[code: 2001] SuperNode authentication is enabled.": "only admits registered SuperNodes",
        "[code: 2004] Failed to activate SuperNode.": "send keys/op0.pub to the federation's owner",
    }
    for line, fix in cases.items():
        watch.problem = None
        watch(line)
        assert fix in watch.problem and "fl.example.org:9092" in watch.problem, line
