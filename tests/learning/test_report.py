import json

from structlog.testing import capture_logs

from app.learning.report import NodeNames, RunOutputs, round_summary

TRAIN = {"train-loss": 1.0, "num-examples": 8, "compute-seconds": 1.0, "bytes-received": 10, "bytes-sent": 10}


def test_unique_names_keep_the_plain_layout_and_labels(tmp_path):
    outputs = RunOutputs(tmp_path)
    outputs.record_client_reply("train", 1, "operator_0", 11, "embedded:operator-0", TRAIN)
    outputs.record_client_reply("evaluate", 1, "operator_0", 11, "embedded:operator-0", {"eval-loss": 0.5})
    assert [d.name for d in outputs.clients.iterdir()] == ["client_operator_0"]
    entry = json.loads((outputs.clients / "client_operator_0" / "round_1.json").read_text())
    assert entry["node_id"] == 11 and entry["train"] == TRAIN and entry["evaluate"] == {"eval-loss": 0.5}
    assert outputs.nodes.label(11) == "operator_0"


def test_two_nodes_sharing_a_name_keep_their_own_metrics_and_are_told_apart_by_id(tmp_path):
    outputs = RunOutputs(tmp_path)
    with capture_logs() as logs:
        for node_id in (11, 22):  # one round's replies, every name registered first (as the ServerApp does)
            outputs.nodes.add(node_id, "operator_0")
        for node_id, loss in ((11, 0.5), (22, 2.0)):
            outputs.record_client_reply("evaluate", 1, "operator_0", node_id, "d", {"eval-loss": loss})
            outputs.record_client_reply("evaluate", 2, "operator_0", node_id, "d", {"eval-loss": loss / 2})
    assert [entry for entry in logs if entry["event"] == "node_name_shared"] == [
        {"event": "node_name_shared", "name": "operator_0", "node_ids": [11, 22], "log_level": "warning",
         "fix": "give each node its own name (fedvla node --name); reports tell them apart by node id"}]
    for node_id, loss in ((11, 0.5), (22, 2.0)):
        entry = json.loads((outputs.clients / f"client_operator_0_node{node_id}" / "round_1.json").read_text())
        assert entry["evaluate"] == {"eval-loss": loss}
    outputs.write_history_and_charts()
    history = json.loads((outputs.server / "eval_policy_loss_history.json").read_text())
    assert history["clients"] == {"operator_0 (node 11)": {"1": 0.5, "2": 0.25},
                                  "operator_0 (node 22)": {"1": 2.0, "2": 1.0}}


def test_a_node_keeps_its_directory_when_a_later_node_takes_its_name(tmp_path):
    outputs = RunOutputs(tmp_path)
    outputs.record_client_reply("train", 1, "alice", 11, "d", TRAIN)
    outputs.record_client_reply("train", 2, "alice", 22, "d", TRAIN)
    outputs.record_client_reply("train", 2, "alice", 11, "d", TRAIN)
    assert sorted(d.name for d in outputs.clients.iterdir()) == ["client_alice", "client_alice_node22"]
    assert sorted(p.name for p in (outputs.clients / "client_alice").glob("round_*.json")) == ["round_1.json",
                                                                                            "round_2.json"]


def test_round_summaries_show_every_node_of_a_shared_name():
    names = NodeNames()
    names.add(11, "operator_0")
    names.add(22, "operator_0")
    names.add(33, "operator_1")
    per_node = names.labelled({11: {"train": TRAIN}, 22: {"train": {**TRAIN, "train-loss": 3.0}}, 33: {"train": TRAIN}})
    summary = round_summary(1, 1e-3, 5.0, {"train-loss": 2.0}, None, None, per_node, [])
    assert sorted(summary["nodes"]) == ["operator_0 (node 11)", "operator_0 (node 22)", "operator_1"]
    assert summary["nodes"]["operator_0 (node 22)"]["train-loss"] == 3.0


def test_a_reopened_run_has_its_history_and_names_the_run_that_continues_it(tmp_path):
    first = RunOutputs.create(tmp_path, {"lr": 0.001}, run_id=1)
    first.record_server_eval(0, {"eval-loss": 2.0})
    first.record_server_eval(1, {"eval-loss": 1.5})
    first.record_client_reply("train", 1, "operator_0", 11, "embedded:operator-0", TRAIN)
    first.record_client_reply("evaluate", 1, "operator_0", 11, "embedded:operator-0", {"eval-loss": 1.2})
    first.record_round({"round": 1, "train-loss": 1.0})
    again = RunOutputs.reopen(first.root, run_id=2)
    assert again.server_eval == {0: 2.0, 1: 1.5}
    assert again.rounds == [{"round": 1, "train-loss": 1.0}]
    assert again.client_eval == {11: {1: 1.2}} and again.nodes.label(11) == "operator_0"
    assert again.client_dir(11) == first.client_dir(11)
    saved = json.loads((first.root / "run_config.json").read_text())
    assert saved == {"run-id": 1, "run-config": {"lr": 0.001}, "continued-by": [2]}
