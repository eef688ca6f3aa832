"""fedvla: federated fine-tuning of SmolVLA for SO-100/SO-101 operators, on Flower and LeRobot.

The packages, lowest first; each may import only the packages before it (tests/test_layering.py checks it):

  app.common      errors, run/node configuration, logging, Prometheus metric definitions, W&B tracking, atomic files
  app.learning    the Flower-free learning core: datasets, the policy, local training and evaluation, checkpoints,
                  run outputs and reports, the Hub, the embedded tiny model and datasets
  app.federation  the Flower apps: the ServerApp and its round loop, the strategy's arithmetic, the ClientApp and
                  a node's work on each message, the wire format, the server's resume state
  app.node        the node runtime beside flower-supernode: the warm worker process, process supervision
  app.ops         operations: starting federations, TLS and node keys, the Prometheus exporter, status, the demo
  app.cli         `fedvla`, one module per command
"""
