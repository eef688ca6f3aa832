"""bench.learning_quality on a tiny setting: its in-process federation is the centralized baseline exactly when
there is nothing to federate (one node, FedAvg, chunks of local-steps), and its figures say what they compare."""

import math

import pytest

import bench.learning_quality as lq


@pytest.fixture
def one_node(monkeypatch):
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(lq, "NODES", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench runs: two threads on a busy 2-core machine ran 10x slower
    yield
    torch.set_num_threads(threads)
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def test_one_node_fedavg_learns_exactly_what_centralized_training_learns(one_node):
    setup = lq.prepare(rounds=2, local_steps=2, seed=42)
    fed = lq.federated(setup, "fedavg", 1, **{"proximal-mu": 0.0})
    central = lq.centralized(setup, "centralized")
    assert len(fed["server-eval-loss-curve"]) == len(central["server-eval-loss-curve"]) == 3  # initial + 2 rounds
    assert fed["server-eval-loss-curve"] == pytest.approx(central["server-eval-loss-curve"], rel=1e-5)
    assert fed["server-eval-loss-curve"][0] == setup.initial_loss
    assert central["total-optimizer-steps"] == fed["total-optimizer-steps"] == 4
    int4 = lq.federated(setup, "int4", 2, **{"update-encoding": "int4-delta"})  # round 2 travels as deltas
    assert all(math.isfinite(x) for x in int4["server-eval-loss-curve"])
    assert int4["per-round"][1]["bytes-sent"] < fed["per-round"][1]["bytes-sent"] / 4


def test_figures_compare_encodings_with_fp32_and_federated_with_centralized():
    runs = {name: {"final-server-eval-loss": loss} for name, loss in
            [("fedprox-fp32", 1.0), ("fedprox-bf16", 1.005), ("fedprox-int4-delta", 0.98), ("fedavg-fp32", 1.1),
             ("centralized", 0.99)]}
    figures = {f["metric"].split(",")[1].strip(): f for f in lq.figures_of(runs)}
    assert figures["update-encoding bf16 vs fp32 (|relative difference|)"]["measured"] == pytest.approx(0.5)
    int4 = figures["update-encoding int4-delta vs fp32 (|relative difference|)"]
    assert int4["measured"] == pytest.approx(2.0) and not int4["met"]
    fedprox = figures["federated FedProx (mu 0.01) vs centralized"]
    assert fedprox["measured"] == pytest.approx(1.01) and fedprox["met"] and fedprox["target"] == 3.0
    assert figures["federated FedAvg (mu 0) vs centralized"]["measured"] == pytest.approx(11.111)
