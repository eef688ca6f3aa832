"""The federation in containers, end to end: `docker compose build` (started in the background as the session
began, conftest.py), `docker compose up -d`, the `submit` service runs a 2-round FedProx run of the embedded default
on 2 SuperNode containers, and then the real Prometheus, the outputs volume, the images and a misconfigured node
are checked. One federation serves every test here; it is taken down with its volumes at the end, also on failure.

Without Docker the module skips, except under CI=true, where a missing Docker is a failure (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.ops.launch import free_port
from tests.containers.images import FAKE_TOKEN, docker_ready, image_build
from tests.helpers import write_dataset_with
from tests.integration.conftest import assert_run_outputs

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 2
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2700)]


@dataclass
class Federation:
    project: str
    env: dict[str, str]
    prometheus: str
    outputs: Path
    submit_code: int
    lost_at: float | None = None  # when test_a_node_is_lost froze operator_1

    def compose(self, *args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", "compose", "-p", self.project, *args], cwd=REPO, env=self.env,
                                capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scrape(self, service: str, port: int) -> str:
        fetch = f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
        return self.compose("exec", "-T", service, "python3", "-c", fetch).stdout


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    if not docker_ready():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but Docker with Compose v2 is not available: .ci/run starts it with .ci/docker-offline.sh")
        pytest.skip("Docker with Compose v2 is not available here")
    ports = {name: free_port() for name in ("FEDVLA_API_PORT", "FEDVLA_FLEET_PORT", "FEDVLA_PROMETHEUS_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "HF_TOKEN": FAKE_TOKEN,
           "FEDVLA_RUN_CONFIG": f"num-server-rounds={ROUNDS} local-steps=20"}
    federation = Federation(f"fedvla-test-{os.getpid()}", env, f"http://127.0.0.1:{ports['FEDVLA_PROMETHEUS_PORT']}",
                            tmp_path_factory.mktemp("compose-outputs"), submit_code=-1)
    try:
        image_build(tmp_path_factory.getbasetemp() / "image-build.log").wait(timeout=1800)
        federation.compose("up", "-d", timeout=900)
        federation.submit_code = wait_for_exit(federation, "submit", timeout=1800)
        federation.compose("cp", "serverapp:/var/lib/fedvla/outputs/.", str(federation.outputs))
        wait_for_final_round_in_prometheus(federation)
        yield federation
    finally:
        logs = federation.compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose.log").write_text(logs)
        federation.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def wait_for_exit(federation: Federation, service: str, timeout: float) -> int:
    """The exit code of a one-shot service (`docker compose wait` fails on one that has already exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(federation.compose("ps", "-a", "--format", "json", service).stdout.splitlines()[0])
        if state["State"] == "exited":
            return int(state["ExitCode"])
        time.sleep(5)
    raise TimeoutError(f"{service} still running after {timeout} s")


def wait_for_final_round_in_prometheus(federation: Federation, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [float(r["value"][1]) for r in federation.query("max(fedvla_server_round)")] == [ROUNDS]:
            return
        time.sleep(3)


def test_the_run_finishes(federation):
    logs = federation.compose("logs", "--no-color", "submit").stdout
    assert federation.submit_code == 0, logs[-4000:]
    assert "finished:completed" in logs


def test_outputs_and_final_checkpoint_reload_with_plain_lerobot(federation):
    (run_dir,) = [p for p in federation.outputs.iterdir() if p.is_dir()]
    assert_run_outputs(run_dir, ROUNDS, ["operator_0", "operator_1"])
    checkpoint = f"/var/lib/fedvla/outputs/{run_dir.name}/models/checkpoint_round_{ROUNDS}"
    reload = (
        "from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy\n"
        "from lerobot.policies.factory import make_pre_post_processors\n"
        f"policy = SmolVLAPolicy.from_pretrained({checkpoint!r})\n"
        f"pre, post = make_pre_post_processors(policy.config, pretrained_path={checkpoint!r})\n"
        "print('reloaded', type(policy).__name__, sum(p.numel() for p in policy.parameters()), len(pre.steps))\n"
    )
    result = federation.compose("exec", "-T", "serverapp", "python", "-c", reload, timeout=300)
    assert "reloaded SmolVLAPolicy" in result.stdout


def test_prometheus_scraped_the_server_and_every_node(federation):
    targets = {}
    with urllib.request.urlopen(f"{federation.prometheus}/api/v1/targets", timeout=10) as response:
        for target in json.load(response)["data"]["activeTargets"]:
            targets.setdefault(target["labels"]["job"], []).append(target["health"])
    assert targets == {"superlink": ["up"], "serverapp": ["up"], "supernode": ["up", "up"]}
    assert [float(r["value"][1]) for r in federation.query("fedvla_server_round")] == [ROUNDS]
    assert [float(r["value"][1]) for r in federation.query("fedvla_server_rounds_planned")] == [ROUNDS]
    assert len(federation.query("fedvla_server_eval_loss")) == 1
    assert [float(r["value"][1]) for r in federation.query("fedvla_server_round_duration_seconds_count")] == [ROUNDS]
    assert {r["metric"]["state"]: float(r["value"][1]) for r in federation.query("fedvla_server_round_nodes")} == {
        "sampled": 2, "replied": 2, "dropped": 0}
    assert [float(r["value"][1]) for r in federation.query("fedvla_server_last_checkpoint_round")] == [ROUNDS]
    # Flower's node list, from the SuperLink's exporter: both SuperNodes online
    assert [float(r["value"][1]) for r in federation.query("fedvla_superlink_node_online")] == [1.0, 1.0]
    for metric in ("fedvla_node_train_loss", "fedvla_node_train_samples_per_second", "fedvla_node_sent_bytes_total",
                   "fedvla_node_dataset_episodes", "fedvla_gpus", "fedvla_process_resident_memory_bytes"):
        nodes = {r["metric"]["node"] for r in federation.query(f'{metric}{{job="supernode"}}')}
        assert nodes == {"operator_0", "operator_1"}, metric
    # Each SuperNode container's warm worker started once and built one policy for the run.
    for metric in ("fedvla_node_worker_starts_total", "fedvla_node_worker_policy_builds_total"):
        assert [float(r["value"][1]) for r in federation.query(metric)] == [1.0, 1.0], metric
    sent = sum(float(r["value"][1]) for r in federation.query("fedvla_node_sent_bytes_total"))
    received = sum(float(r["value"][1]) for r in federation.query("fedvla_server_received_bytes_total"))
    assert sent == received > 0


def test_every_dashboard_panel_has_data(federation):
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "fedvla.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    empty = [expr for expr in exprs if not federation.query(expr)]
    assert empty == []


def test_prometheus_loads_the_alert_rules_and_they_pass_their_tests(federation):
    for check in (("check", "config", "/etc/prometheus/prometheus.yml"),
                  ("test", "rules", "/etc/prometheus/alerts_test.yml")):
        result = federation.compose("exec", "-T", "-w", "/etc/prometheus", "prometheus", "promtool", *check, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    with urllib.request.urlopen(f"{federation.prometheus}/api/v1/rules", timeout=10) as response:
        (group,) = json.load(response)["data"]["groups"]
    assert len(group["rules"]) == 7 and all(rule["health"] == "ok" for rule in group["rules"]), group


def test_a_node_is_lost(federation):
    """operator_1's container is frozen from here on (no heartbeat, no scrape answer), as a hung robot PC or a cut
    network leaves it; the tests after this one use operator_0 only, and the last checks what Prometheus made of it."""
    federation.compose("pause", "supernode-1")
    federation.lost_at = time.monotonic()


@pytest.mark.parametrize(("service", "port"), [("superlink", 9402), ("serverapp", 9401), ("supernode-0", 9400)])
def test_promtool_accepts_every_exporter(federation, service, port):
    text = federation.scrape(service, port)
    assert "fedvla_process_cpu_seconds_total" in text
    check = federation.compose("exec", "-T", "prometheus", "promtool", "check", "metrics", input=text, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_images_run_as_non_root_and_hold_no_secret(federation, ledger):
    for service in ("superlink", "serverapp", "supernode-0", "prometheus"):
        assert federation.compose("exec", "-T", service, "id", "-u").stdout.strip() != "0", service
    found = []
    for image in ("fedvla-app:dev", "fedvla-superlink:dev", "fedvla-prometheus:dev"):
        history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True).stdout
        found += [f"{image} history"] * (FAKE_TOKEN in history or "HF_TOKEN=" in history)
        found += [f"{image}:{path}" for path in image_files_holding(image, FAKE_TOKEN)]
    found += ["compose logs"] * (FAKE_TOKEN in federation.compose("logs", "--no-color").stdout)
    ledger.book("HF_TOKEN in images and container logs", secrets_found=len(found))
    assert found == []


def image_files_holding(image: str, text: str) -> list[str]:
    """The files of `image` (where software and state live) that contain `text`."""
    found = subprocess.run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "grep", image, "-rlsF", text,
                            "/opt", "/etc", "/home", "/usr/local", "/var/lib"], capture_output=True, text=True,
                           timeout=600)
    assert found.returncode in (0, 1), found.stderr  # grep: 0 = found, 1 = none, 2 = trouble
    return found.stdout.split()


def test_a_node_whose_dataset_does_not_fit_exits_before_joining(federation, tmp_path):
    bad = write_dataset_with(tmp_path / "recordings", drop=("observation.images.wrist",))
    bad.chmod(0o755)
    result = federation.compose("run", "--rm", "--no-deps", "-v", f"{bad}:/data/recordings:ro",
                                "-e", "FEDVLA_DATASET=/data/recordings", "supernode-0", check=False, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no camera 'observation.images.wrist'" in result.stderr
    assert "Traceback" not in result.stderr and "supernode_start" not in result.stderr


def test_nodes_see_the_ca_certificate_but_not_its_key(federation):
    listing = federation.compose("exec", "-T", "supernode-0", "ls", "/var/lib/fedvla/certs").stdout.split()
    assert listing == ["ca.crt"]


def test_the_apis_speak_only_tls_with_the_federations_ca(federation, tmp_path):
    federation.compose("cp", "superlink:/var/lib/fedvla/certs/ca.crt", str(tmp_path / "ca.crt"))
    api = f"127.0.0.1:{federation.env['FEDVLA_API_PORT']}"
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with urllib.request.urlopen(f"https://{api}/health", timeout=10, context=context) as response:
        assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{api}/health", timeout=10)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # trusting only the system's CAs
        urllib.request.urlopen(f"https://{api}/health", timeout=10)


def test_a_node_with_an_unregistered_key_is_refused(federation):
    stranger = ("fedvla keys --name stranger --out /tmp/keys"
                " && FEDVLA_AUTH_KEY=/tmp/keys/stranger.key FEDVLA_NODE_NAME=stranger exec supernode-entrypoint")
    result = federation.compose("run", "--rm", "--no-deps", "supernode-0", "sh", "-c", stranger, check=False,
                                timeout=600)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "does not know this node's key (/tmp/keys/stranger.key)" in result.stderr


def test_no_private_key_reaches_a_log_or_an_image(federation, ledger):
    keys = {path: federation.compose("exec", "-T", service, "cat", path).stdout.strip()
            for service, path in (("supernode-0", "/var/lib/fedvla/keys/operator_0.key"),
                                  ("superlink", "/var/lib/fedvla/certs/server.key"))}
    assert all("PRIVATE KEY" in key for key in keys.values())
    logs = federation.compose("logs", "--no-color").stdout
    found = []
    for path, key in keys.items():
        body = key.splitlines()[1]  # a line of the key itself
        found += [f"{path} in compose logs"] * (body in logs)
        found += [f"{path} in fedvla-app:dev:{hit}" for hit in image_files_holding("fedvla-app:dev", body)]
    ledger.book("private keys in images and container logs", secrets_found=len(found))
    assert found == []


def test_the_lost_node_stays_listed_offline_and_its_alert_fires(federation):
    assert federation.lost_at is not None, "runs after test_a_node_is_lost"
    deadline = federation.lost_at + 300  # Flower's heartbeat takes about a minute, the alert 30 s more
    firing = []
    while time.monotonic() < deadline and not firing:
        with urllib.request.urlopen(f"{federation.prometheus}/api/v1/alerts", timeout=10) as response:
            alerts = json.load(response)["data"]["alerts"]
        firing = [a for a in alerts if a["labels"]["alertname"] == "FedvlaSuperNodeOffline" and a["state"] == "firing"]
        time.sleep(5)
    assert len(firing) == 1, alerts
    online = {r["metric"]["node_id"]: float(r["value"][1]) for r in federation.query("fedvla_superlink_node_online")}
    assert sorted(online.values()) == [0.0, 1.0] and online[firing[0]["labels"]["node_id"]] == 0.0
    assert "is offline" in firing[0]["annotations"]["summary"]
