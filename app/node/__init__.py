"""The node runtime on an operator's machine: the warm worker that keeps the run's policy between messages and
serves the node's ClientApps (worker), the supervision of the processes beside flower-supernode (supervisor), and
the watch on flower-supernode's own output (supernode_watch). Imports app.common, app.learning and app.federation."""
