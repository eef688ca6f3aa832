"""`fedvla`: the project's command line.

  fedvla train   standalone (centralized) fine-tuning of one dataset: the baseline
  fedvla node    an operator's SuperNode: a warm worker that checks the dataset and does the work, beside
                 flower-supernode
  fedvla demo    a real federation on this machine: SuperLink + SuperNodes + `flwr run`, embedded data
  fedvla check   a dataset against the federation's model and settings: what fits, what does not, the fix
  fedvla predict a checkpoint on a recorded episode: per-joint action error against the base model, and a chart
  fedvla status  is the SuperLink reachable, which SuperNodes are connected, which runs exist
  fedvla push    push a saved checkpoint to the Hugging Face Hub
  fedvla certs   the federation owner's TLS files (a CA and the SuperLink's certificate)
  fedvla keys    an operator's SuperNode authentication key pair

Exit codes: 0 done (and for check/status: fits, reachable), 1 the answer is no (check: the dataset does not fit;
status: the SuperLink cannot be reached; demo: the run did not finish completed), 2 a user error (a bad flag, a missing dataset, a schema mismatch), printed
as one line without a traceback, 130 interrupted.
Heavy libraries (torch, lerobot) load only once a command needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.errors import UserError
from app.telemetry import configure_logging, get_logger

log = get_logger("fedvla")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_train_parser(sub) -> None:
    from app.model import DEFAULT_MODEL

    p = sub.add_parser("train", help="standalone fine-tuning of one dataset (the centralized baseline)")
    p.add_argument("--embedded", action="store_true",
                   help="offline default: tiny embedded SmolVLA on embedded:operator-0, lr 1e-3")
    p.add_argument("--model", help=f"Hub id, checkpoint directory or embedded:tiny (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:operator-<i>")
    p.add_argument("--steps", type=_positive_int, default=200)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, help="peak learning rate (default 1e-4; 1e-3 with --embedded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=_positive_int, default=50, help="held-out evaluation interval in steps")
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--fps", type=_positive_int, default=30, help="frame rate the policy expects")
    p.add_argument("--cameras", default="auto", help="policy cameras to use, e.g. camera1,camera2; '' = all "
                   "(default auto: camera1,camera2 for lerobot/smolvla_base, all for other models)")
    p.add_argument("--camera-map", default="auto", help="dataset camera names -> the policy's, e.g. "
                   "top=camera1,wrist=camera2 (default auto: that map for lerobot/smolvla_base, none otherwise)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--output-dir", type=Path, default=Path("outputs"))
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from app.config import EMBEDDED_OVERRIDES, RunConfig, parse_camera_map
    from app.standalone import StandaloneConfig, run_standalone

    defaults = RunConfig.from_mapping(EMBEDDED_OVERRIDES if args.embedded else {})
    if not args.embedded and not args.dataset:
        raise UserError("--dataset is required (hf:<repo_id> or a local path), or pass --embedded for the offline demo")
    model = args.model or defaults.model
    dataset = args.dataset or "embedded:operator-0"
    lr = args.lr or defaults.lr
    parse_camera_map(args.camera_map, model, "--camera-map")
    if not 0 < args.heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be between 0 and 1, got {args.heldout_fraction}")
    cfg = StandaloneConfig(
        model=model, dataset=dataset, steps=args.steps, batch_size=args.batch_size, lr=lr, seed=args.seed,
        heldout_fraction=args.heldout_fraction, eval_every=args.eval_every, fps=args.fps, device=args.device,
        output_dir=args.output_dir, cameras=args.cameras, camera_map=args.camera_map,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("train", total=cfg.steps, loss=float("nan"))
        summary = run_standalone(cfg, progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    out = Console(soft_wrap=True)  # paths stay whole, to be copied
    out.print(f"[bold]Standalone training[/bold]: {cfg.steps} steps of {cfg.model} on {cfg.dataset}")
    out.print(f"  held-out loss  initial {summary.initial_heldout_loss:.4f}  ->  final {summary.final_heldout_loss:.4f}"
              f"  ({summary.final_heldout_loss / summary.initial_heldout_loss:.0%} of initial)")
    out.print(f"  training time  {summary.seconds:.1f} s")
    out.print(f"  checkpoint     {summary.checkpoint}")
    out.print(f"  outputs        {summary.run_dir}")
    return 0


def _add_federation_settings(p) -> None:
    """The run-config settings a dataset is checked against: `fedvla check` and `fedvla node` share them."""
    p.add_argument("--model", default=None, help="the federation's `model` (default lerobot/smolvla_base)")
    p.add_argument("--fps", type=_positive_int, default=30, help="the federation's `fps` (default 30)")
    p.add_argument("--cameras", default="auto",
                   help="the federation's policy `cameras`, as its run-config says (default auto: see README)")
    p.add_argument("--camera-map", default=None,
                   help="your camera names -> the policy's, e.g. top=camera1,wrist=camera2 (default: the run's)")


def _checked_settings(args: argparse.Namespace, dataset_uri: str) -> dict:
    from app.config import RunConfig

    defaults = RunConfig()
    return {"dataset-uri": dataset_uri, "model": args.model or defaults.model, "fps": args.fps, "cameras": args.cameras,
            "camera-map": defaults.camera_map if args.camera_map is None else args.camera_map}


def _add_check_parser(sub) -> None:
    p = sub.add_parser("check", help="a dataset against the federation's model and settings, with the fix")
    p.add_argument("dataset", help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:<name>")
    _add_federation_settings(p)
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    import contextlib
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.markup import escape

    from app.node import inspect_dataset

    settings = _checked_settings(args, args.dataset)
    with contextlib.redirect_stdout(sys.stderr):  # what libraries print while loading is not the report
        check = inspect_dataset(*settings.values())
    if args.json:
        sys.stdout.write(json.dumps({"ok": check.ok, "settings": settings, **asdict(check)}, indent=2) + "\n")
        return 0 if check.ok else 1
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[bold]{args.dataset}[/bold] for model={settings['model']} fps={settings['fps']} "
              f"cameras={settings['cameras']} camera-map={settings['camera-map']}")
    for finding in check.fit.findings:
        out.print(f"  {'[green]ok[/green]' if finding.ok else '[red]no[/red]'}  {escape(finding.detail)}")
    out.print(f"  {check.size.episodes} episodes, {check.size.frames} frames")
    if check.fit.ok:
        out.print("  [green]ok[/green]  first and last episodes decode" if not check.frames_problem
                  else f"  [red]no[/red]  {escape(check.frames_problem)}")
    if check.fit.camera_map:
        out.print(f"fix: --camera-map {check.fit.camera_map}  (check the pairing: your camera on the left)")
    if check.fit.fps:
        out.print(f"fix: the federation's fps={check.fit.fps}, or record at {settings['fps']} fps")
    out.print("[green]fits[/green]" if check.ok else "[red]does not fit[/red]")
    return 0 if check.ok else 1


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="a checkpoint on a recorded episode: per-joint action error and a chart")
    p.add_argument("checkpoint", type=Path, help="e.g. outputs/<timestamp>/models/checkpoint_round_30")
    p.add_argument("--dataset", required=True, help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:<name>")
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    p.add_argument("--baseline", default="auto", help="model to compare with: a Hub id, checkpoint directory or "
                   "embedded:tiny; 'auto' (default): the run's base model; 'none': no comparison")
    p.add_argument("--camera-map", default="auto", help="the dataset's camera names -> the policy's (default auto)")
    p.add_argument("--chart", type=Path, help="PNG of predicted vs recorded joint trajectories (default: "
                   "predictions/<checkpoint>_<dataset>_ep<N>.png in the checkpoint's run directory, else here)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--json", action="store_true", help="the errors as JSON on stdout")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import re

    from rich.console import Console
    from rich.table import Table

    from app.predict import predict

    if not args.checkpoint.is_dir():
        raise UserError(f"checkpoint {str(args.checkpoint)!r} is not a directory: give a models/checkpoint_round_N")
    run_dir = args.checkpoint.resolve().parent.parent  # a checkpoint is sealed: the chart goes beside it
    where = run_dir if (run_dir / "run_config.json").is_file() else Path.cwd()
    name = f"{args.checkpoint.name}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.dataset)}_ep{args.episode}.png"
    chart = args.chart or where / "predictions" / name
    with contextlib.redirect_stdout(sys.stderr):  # LeRobot prints as it builds a policy; stdout is the answer
        result = predict(args.checkpoint, args.dataset, args.episode, None if args.baseline == "none" else args.baseline,
                         args.camera_map, chart, args.device)
    if args.json:
        sys.stdout.write(json.dumps({"dataset": result.dataset, "episode": result.episode, "frames": result.frames,
                                     "chart": str(result.chart), "policies": [
                                         {"policy": s.policy, "mean-error": s.mean_error, "joint-error": s.joint_error}
                                         for s in result.scores]}, indent=2) + "\n")
        return 0
    table = Table(title=f"{args.dataset} episode {args.episode}: mean absolute action error ({result.frames} frames)")
    table.add_column("joint")
    for score in result.scores:
        table.add_column(score.policy, justify="right")
    for joint in result.scores[0].joint_error:
        table.add_row(joint, *(f"{s.joint_error[joint]:.3f}" for s in result.scores))
    table.add_row("mean", *(f"{s.mean_error:.3f}" for s in result.scores), style="bold")
    out = Console(soft_wrap=True)
    out.print(table)
    out.print(f"chart  {result.chart}")
    return 0


def _add_status_parser(sub) -> None:
    p = sub.add_parser("status", help="is the SuperLink reachable, which SuperNodes are connected, which runs exist")
    p.add_argument("connection", nargs="?", default="",
                   help="a SuperLink connection of $FLWR_HOME/config.toml (default: its default one)")
    p.add_argument("--json", action="store_true", help="the answer as JSON on stdout")
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from app.status import federation_status

    status = federation_status(args.connection)
    if args.json:
        sys.stdout.write(json.dumps(asdict(status), indent=2) + "\n")
        return 0 if status.reachable else 1
    out = Console(soft_wrap=True, highlight=False)
    name = args.connection or "the default connection"
    if not status.reachable:
        out.print(f"SuperLink ({escape(name)}): [red]unreachable[/red]: {escape(status.problem)}")
        return 1
    out.print(f"SuperLink ({escape(name)}): [green]reachable[/green], {len(status.online)} of {len(status.nodes)} "
              f"SuperNodes online, {len(status.runs)} runs")
    if status.nodes:
        nodes = Table("node id", "owner", "status", "since")
        for node in status.nodes:
            since = node.get("online-at") if node.get("status") == "online" else node.get("offline-at")
            nodes.add_row(str(node.get("node-id")), str(node.get("owner-name") or ""), str(node.get("status")),
                          str(since or ""))
        out.print(nodes)
    if status.runs:
        runs = Table("run id", "app", "status", "elapsed", "MB moved")
        for run in status.runs:
            moved = run.get("network-traffic", {}).get("total-bytes", 0) / 1e6
            runs.add_row(str(run.get("run-id")), str(run.get("fab-name", "")), str(run.get("status")),
                         str(run.get("elapsed", "")), f"{moved:.1f}")
        out.print(runs)
    if status.problem:
        out.print(f"runs: {escape(status.problem)}")
    return 0


def _add_node_parser(sub) -> None:
    p = sub.add_parser("node", help="check this operator's dataset, then run flower-supernode with it")
    p.add_argument("--superlink", required=True, help="the SuperLink's Fleet API address, host:9092")
    p.add_argument("--dataset-uri", required=True, help="hf:<repo_id> or a local LeRobot dataset directory")
    _add_federation_settings(p)
    p.add_argument("--name", default="", help="how this node appears in the server's reports")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="no TLS: anyone on the path reads and alters the "
                     "model updates; only for a SuperLink on this machine or a private network")
    tls.add_argument("--root-certificates", type=Path, help="CA certificate that signed the SuperLink's")
    p.add_argument("--auth-private-key", type=Path, help="ECDSA key registered with `flwr supernode register`")
    p.add_argument("--clientappio-port", type=_positive_int, default=9094, help="local port for the node's ClientApps")
    p.add_argument("--check-only", action="store_true", help="validate the dataset and exit")
    p.add_argument("--metrics-port", type=_positive_int,
                   help="serve this node's Prometheus metrics (training, traffic, GPU, CPU, memory) on this port")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address the metrics port binds (default all)")
    p.add_argument("--worker-stall-seconds", type=_positive_float, default=1800.0,
                   help="restart the warm worker when a message makes no progress this long (default 1800)")
    p.set_defaults(handler=_node)


def _node(args: argparse.Namespace) -> int:
    import contextlib
    import os
    import shutil
    import tempfile

    from app import supervisor, worker
    from app.config import NodeConfig
    from app.exporter import metrics_endpoint
    from app.launch import config_arg
    from app.supernode_watch import SuperNodeWatch
    from app.telemetry import add_log_file

    check = _checked_settings(args, args.dataset_uri)  # what `fedvla check` checks, the worker checks at start
    if args.check_only:
        from app.node import check_node_dataset

        check_node_dataset(*check.values())
        return 0
    node_config = {"dataset-uri": args.dataset_uri, **({"name": args.name} if args.name else {})}
    if args.camera_map is not None:
        node_config["camera-map"] = args.camera_map
    # Labelled as the node's ClientApps label their own metrics and logs, so the two join.
    name = NodeConfig.from_mapping(node_config).label()
    logs = worker.node_log_dir(NodeConfig(name=name, dataset_uri="-"))  # beside the worker's and ClientApps' logs
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
            warm = worker.start([sys.executable, "-m", "app.worker", "--socket", str(socket_path), "--name", name,
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


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="a real local federation (SuperLink + SuperNodes over gRPC) on embedded data")
    p.add_argument("--nodes", type=_positive_int, default=2, help="number of SuperNodes (operators), 2 to 4")
    p.add_argument("--rounds", type=_positive_int, default=3)
    p.add_argument("--local-steps", type=_positive_int, default=60)
    p.add_argument("--run-config", default="", help="more run-config overrides, 'key=value key2=value2' (TOML values)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs"))
    p.add_argument("--insecure", action="store_true",
                   help="plain gRPC between the local processes (default: TLS, with a CA made for the demo)")
    p.set_defaults(handler=_demo)


def parse_overrides(text: str) -> dict:
    """`key=value key2=value2` with TOML values, parsed as `flwr run --run-config` parses them (Flower's own
    parser): a quoted value may hold spaces."""
    from click import ClickException
    from flwr.common.config import parse_config_args

    try:
        return parse_config_args([text]) if text else {}
    except (ClickException, ValueError):
        raise UserError(f"--run-config {text!r} is not 'key=value ...' with TOML values, e.g. "
                        "'num-server-rounds=5 hf-repo-id=\"me/model\"'") from None


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from app.demo import run_demo

    if not 2 <= args.nodes <= 4:
        raise UserError(f"--nodes must be between 2 and 4 (one per embedded operator family), got {args.nodes}")
    overrides = {"num-server-rounds": args.rounds, "local-steps": args.local_steps, **parse_overrides(args.run_config)}
    console = Console(stderr=True, soft_wrap=True)

    def show(record: dict) -> None:
        if (line := server_event_line(record, overrides["num-server-rounds"])) is not None:
            console.print(line)

    result = run_demo(args.nodes, overrides, args.output_dir, on_event=show, tls=not args.insecure)
    table = Table(title=f"Federated SmolVLA: {args.nodes} SuperNodes, FedProx, run {result.status}")
    for column in ("round", "train loss", "client eval loss", "server eval loss", "round wall s", "max compute s",
                   "MB moved"):
        table.add_column(column, justify="right")
    initial = result.server_eval.get("0")
    table.add_row("0", "", "", f"{initial:.4f}" if initial is not None else "", "", "", "")
    for r in result.rounds:
        traffic = sum((n["bytes-sent"] or 0) + (n["bytes-received"] or 0) for n in r["nodes"].values()) / 1e6
        table.add_row(str(r["round"]), f"{r['train-loss']:.4f}", _fmt(r.get("client-eval-loss")),
                      _fmt(r.get("server-eval-loss")), f"{r['wall-seconds']:.1f}", f"{r['max-compute-seconds']:.1f}",
                      f"{traffic:.2f}")
    out = Console(soft_wrap=True)  # paths stay whole, to be copied
    out.print(table)
    out.print(f"final checkpoint  {result.final_checkpoint}")
    out.print(f"outputs           {result.run_dir}")
    out.print(f"logs              {result.logs}")
    return 0 if result.status == "finished:completed" else 1


def server_event_line(record: dict, rounds: int) -> str | None:
    """The demo's console line (rich markup) for a record of the ServerApp's log, or None for one the summary table
    covers (round starts, checkpoints, the run's end)."""
    from rich.markup import escape

    event = record.get("event")
    if event == "run_start":
        return f"run started, outputs in {escape(record['outputs'])}"
    if event == "round_done":
        return (f"[bold]round {record['round']}/{rounds} done[/bold] in {record['wall-seconds']:.0f} s: "
                f"train loss {record['train-loss']:.4f}, server eval loss {_fmt(record.get('server-eval-loss'))}")
    if event == "reply_dropped":
        return (f"[yellow]round {record['round']}: dropped a {record['kind']} reply from node {record['node_id']}"
                f"[/yellow]: {escape(str(record['why']))}")
    if event == "run_failed":
        error = (record.get("exception") or [{}])[0]  # the exception raised; its causes follow
        return (f"[red]run failed[/red]: {error.get('exc_type')}: {escape(str(error.get('exc_value')))} "
                f"(the ServerApp's log: {escape(record['outputs'])}/run.log)")
    return None


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _add_push_parser(sub) -> None:
    p = sub.add_parser("push", help="push a saved checkpoint directory to the Hugging Face Hub (needs HF_TOKEN)")
    p.add_argument("checkpoint", type=Path, help="e.g. outputs/<timestamp>/models/checkpoint_round_30")
    p.add_argument("--repo-id", help="<user>/<model>; default: the run's hf-repo-id")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=None,
                            help="create the repository private (default: the run's hf-private, else private)")
    visibility.add_argument("--public", dest="private", action="store_false", default=None,
                            help="create the repository public")
    p.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    import json

    from app.hub import push_checkpoint

    run_config_file = args.checkpoint.resolve().parent.parent / "run_config.json"
    run_config = json.loads(run_config_file.read_text()).get("run-config", {}) if run_config_file.exists() else {}
    repo_id = args.repo_id or run_config.get("hf-repo-id") or None
    if not repo_id:
        raise UserError("no --repo-id given and the run had no hf-repo-id: pass --repo-id <user>/<model>")
    # Publishing is a choice made explicitly (--public, or the run's hf-private=false), never a default.
    private = args.private if args.private is not None else str(run_config.get("hf-private", True)).lower() != "false"
    url = push_checkpoint(args.checkpoint, repo_id, private=private)
    log.info("pushed", repo_id=repo_id, commit_url=url)
    return 0


def _add_certs_parser(sub) -> None:
    p = sub.add_parser("certs", help="the federation owner's TLS files: a CA and the SuperLink's certificate")
    p.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.pem, server.key")
    p.add_argument("--name", action="append", required=True, dest="names",
                   help="a DNS name or IP address nodes reach the SuperLink by (repeat for each)")
    p.set_defaults(handler=_certs)


def _certs(args: argparse.Namespace) -> int:
    from app.certs import ensure_tls

    files = ensure_tls(args.out, args.names)
    log.info("tls_ready", ca_certificate=str(files.ca_cert), server_certificate=str(files.server_cert),
             send_to_operators=str(files.ca_cert), keep_private=[str(args.out / "ca.key"), str(files.server_key)])
    return 0


def _add_keys_parser(sub) -> None:
    p = sub.add_parser("keys", help="an operator's SuperNode key pair, for SuperNode authentication")
    p.add_argument("--name", required=True, help="the node's name, e.g. operator_0")
    p.add_argument("--out", type=Path, default=Path("keys"), help="directory for <name>.key and <name>.pub")
    p.set_defaults(handler=_keys)


def _keys(args: argparse.Namespace) -> int:
    from app.certs import ensure_node_key

    private, public = ensure_node_key(args.out, args.name)
    log.info("node_key_ready", private_key_file=str(private), public_key_file=str(public),
             next_step=f"send {public} to the federation's owner; start the node with --auth-private-key {private}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedvla", description="Federated fine-tuning of SmolVLA on SO-100/SO-101 recordings.")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="console detail (any case; default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    _add_node_parser(sub)
    _add_demo_parser(sub)
    _add_check_parser(sub)
    _add_predict_parser(sub)
    _add_status_parser(sub)
    _add_push_parser(sub)
    _add_certs_parser(sub)
    _add_keys_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.handler(args)
    except UserError as exc:
        sys.stderr.write(f"fedvla {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
