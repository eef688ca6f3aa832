"""`fedvla node`: check this operator's dataset, then run flower-supernode with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.args import add_federation_settings, checked_settings, positive_float, positive_int
from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger("fedvla")


def add_parser(sub) -> None:
    p = sub.add_parser("node", help="check this operator's dataset, then run flower-supernode with it")
    p.add_argument("--superlink", required=True, help="the SuperLink's Fleet API address, host:9092")
    p.add_argument("--dataset-uri", required=True, help="hf:<repo_id> or a local LeRobot dataset directory")
    add_federation_settings(p)
    p.add_argument("--name", default="", help="how this node appears in the server's reports")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="no TLS: anyone on the path reads and alters the "
                     "model updates; only for a SuperLink on this machine or a private network")
    tls.add_argument("--root-certificates", type=Path, help="CA certificate that signed the SuperLink's")
    p.add_argument("--auth-private-key", type=Path, help="ECDSA key registered with `flwr supernode register`")
    p.add_argument("--clientappio-port", type=positive_int, default=9094, help="local port for the node's ClientApps")
    p.add_argument("--check-only", action="store_true", help="validate the dataset and exit")
    p.add_argument("--metrics-port", type=positive_int,
                   help="serve this node's Prometheus metrics (training, traffic, GPU, CPU, memory) on this port")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address the metrics port binds (default all)")
    p.add_argument("--worker-stall-seconds", type=positive_float, default=1800.0,
                   help="restart the warm worker when a message makes no progress this long (default 1800)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import os
    import shutil
    import tempfile

    from app.common.config import NodeConfig
    from app.common.telemetry import add_log_file
    from app.federation.client_work import node_log_dir
    from app.node import supervisor, worker
    from app.node.supernode_watch import SuperNodeWatch
    from app.ops.exporter import metrics_endpoint
    from app.ops.launch import config_arg

    check = checked_settings(args, args.dataset_uri)  # what `fedvla check` checks, the worker checks at start
    if args.check_only:
        from app.learning.learner import check_node_dataset

        check_node_dataset(*check.values())
        return 0
    node_config = {"dataset-uri": args.dataset_uri, **({"name": args.name} if args.name else {})}
    if args.camera_map is not None:
        node_config["camera-map"] = args.camera_map
    # Labelled as the node's ClientApps label their own metrics and logs, so the two join.
    name = NodeConfig.from_mapping(node_config).label()
    logs = node_log_dir(NodeConfig(name=name, dataset_uri="-"))  # beside the worker's and ClientApps' logs
    add_log_file(logs / "node.log")
    socket_dir = Path(tempfile.mkdtemp(prefix="fedvla-node-"))  # 0700: the worker's socket is the node's alone
    socket_path = socket_dir / "worker.sock"
    node_config |= {"worker-socket": str(socket_path), "worker-stall-seconds": args.worker_stall_seconds}
    command = [shutil.which("flower-supernode") or "flower-supernode", "--superlink", args.superlink,
               "--node-config", config_arg(node_config), "--port", str(args.clientappio_port)]
    if args.insecure:
        log.warning("insecure_connection", superlink=args.superlink,
                    why="--insecure: the model updates travel unencrypted and the SuperLink is not authenticated")
        command.append("--insecure")
    else:
        if not args.root_certificates.is_file():
            raise UserError(f"--root-certificates {args.root_certificates} is not a file: pass the federation's "
                            "ca.crt (its owner sends it with the SuperLink address)")
        command += ["--root-certificates", str(args.root_certificates)]
    if args.auth_private_key:
        if not args.auth_private_key.is_file():
            raise UserError(f"--auth-private-key {args.auth_private_key} is not a file: make one with "
                            "`fedvla keys --name <node>` and have the federation's owner register its .pub")
        command += ["--auth-supernode-private-key", str(args.auth_private_key)]
    metrics = (metrics_endpoint(args.metrics_port, args.metrics_address, node=name, role="supernode")
               if args.metrics_port else contextlib.nullcontext(dict(os.environ)))
    try:
        with metrics as env:
            # The SuperNode's executor looks for new messages every second by default: a fifth of that is cheap.
            env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
            # The worker imports torch and LeRobot and checks the dataset (the node joins only if it fits), then
            # stays up for every message of every run; flower-supernode starts once it listens.
            warm = worker.start([sys.executable, "-m", "app.node.worker", "--socket", str(socket_path), "--name", name,
                                 *(f"--{key}={value}" for key, value in check.items())], env, socket_path)
            output = logs / "supernode.log"  # Flower's own lines: the console gets its warnings and errors
            log.info("supernode_start", superlink=args.superlink, name=name, metrics_port=args.metrics_port,
                     output=str(output))
            watch = SuperNodeWatch(args.superlink, args.root_certificates, args.auth_private_key)
            code = supervisor.run(command, env, role="supernode", helper=warm, watch=watch, log_file=output)
            if code != 0 and watch.problem:
                raise UserError(watch.problem)
            return code
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
