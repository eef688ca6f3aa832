"""app.ops.launch: the security flags a deployment gives its processes, and how it treats a SuperNode that exits."""

import subprocess

import pytest

from app.ops import launch
from app.ops.launch import Deployment


def test_tls_is_the_default_and_insecure_is_asked_for(tmp_path):
    secure = Deployment(tmp_path / "tls")
    assert secure.superlink_security()[:2] == ["--ssl-ca-certfile", str(secure.certs.ca_cert)]
    assert "--root-certificates" in secure.node_args("n", "d", "m") and "--insecure" not in secure.node_args("n", "d", "m")
    plain = Deployment(tmp_path / "plain", tls=False)
    assert plain.superlink_security() == ["--insecure"]
    assert "--insecure" in plain.node_args("n", "d", "m") and not (tmp_path / "plain" / "certs").exists()


def test_authentication_needs_tls(tmp_path):
    with pytest.raises(ValueError, match="needs TLS"):
        Deployment(tmp_path, tls=False, auth=True)


def node(deployment: Deployment, name: str, command: str) -> None:
    deployment.start_supernode(name, "", "", args=["sh", "-c", command])


def test_a_lost_node_is_restarted_but_not_one_whose_dataset_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "NODE_RESTART_DELAY", 0.0)
    with Deployment(tmp_path, tls=False, restart_nodes=True) as deployment:
        node(deployment, "crashes", "exit 1")
        node(deployment, "misfit", "exit 2")
        node(deployment, "steady", "sleep 30")
        for name in ("crashes", "misfit"):
            deployment.processes[name].wait()
        deployment.check_alive()  # notices both exits, and restarts the one that may recover
        assert deployment.restarts == {"crashes": 1}
        assert set(deployment.lost) == {"misfit"}


def test_the_deployment_gives_up_when_every_node_is_gone_for_good(tmp_path):
    with Deployment(tmp_path, tls=False, restart_nodes=False) as deployment:
        node(deployment, "a", "exit 1")
        node(deployment, "b", "exit 1")
        for process in deployment.processes.values():
            process.wait()
        with pytest.raises(RuntimeError, match="every SuperNode has exited"):
            deployment.check_alive()


def test_a_lost_superlink_is_fatal(tmp_path):
    with Deployment(tmp_path, tls=False) as deployment:
        deployment.processes["superlink"] = subprocess.Popen(["sh", "-c", "exit 3"])
        deployment.processes["superlink"].wait()
        with pytest.raises(RuntimeError, match="superlink exited with code 3"):
            deployment.check_alive()
