import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from app.federation import codec, wire
from app.common.config import AGGREGATIONS, RunConfig
from app.federation.aggregation import aggregator
from app.federation.screening import ExpectedUpdate, reply_problem
from app.federation.strategy import FedVLA

KEYS = {"w", "b"}
GLOBAL = ArrayRecord({k: Array(np.zeros((2,), dtype=np.float32)) for k in sorted(KEYS)})
EXPECTED = ExpectedUpdate.like(GLOBAL)  # fp32 updates


@pytest.fixture(autouse=True)
def run_identity():
    """Messages are stamped with the current run, as inside a ServerApp."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def _from_node(node_id: int) -> Metadata:
    return Metadata(run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="m",
                    group_id="1", created_at=time.time(), ttl=600, message_type="train")


def train_reply(node_id: int, value: float, examples: int, name: str = "", keys=KEYS) -> Message:
    arrays = ArrayRecord({k: Array(np.full((2,), value, dtype=np.float32)) for k in sorted(keys)})
    content = RecordDict({
        "arrays": arrays,
        "metrics": MetricRecord({"num-examples": examples, "train-loss": value}),
        "node": ConfigRecord({"node-name": name or f"n{node_id}", "dataset": "d"}),
    })
    return Message(content=content, metadata=_from_node(node_id))


def strategy(**run_overrides) -> tuple[FedVLA, list]:
    seen = []
    run = RunConfig.from_mapping({"num-server-rounds": 4, "update-encoding": "fp32", **run_overrides})
    s = FedVLA(run, "abc123", {"action/mean": [0.0]}, GLOBAL, lambda kind, rnd, reps: seen.append((kind, rnd, reps)))
    return s, seen


def test_aggregation_is_weighted_by_samples():
    s, seen = strategy()
    arrays, metrics = s.aggregate_train(1, [train_reply(1, 1.0, 30), train_reply(2, 4.0, 10)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1.75, 1.75])
    assert metrics["train-loss"] == pytest.approx(1.75)
    assert [r.name for r in seen[0][2]] == ["n1", "n2"]


def with_w(array: Array) -> Message:
    reply = train_reply(3, 1.0, 10)
    reply.content["arrays"]["w"] = array
    return reply


def declared_as_w(data: bytes, stype: str = "numpy.ndarray") -> Array:
    """An array whose metadata says it is the model's float32[2], whatever its bytes hold."""
    return Array("float32", (2,), stype, data)


def with_metric(reply: Message, key: str, value) -> Message:
    reply.content["metrics"][key] = value
    return reply


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (train_reply(3, float("nan"), 10), "array 'b' holds NaN or inf"),
        (train_reply(3, 1.0, 0), "no positive, finite num-examples (got 0)"),
        (with_metric(train_reply(3, 1.0, 10), "num-examples", float("inf")), "no positive, finite num-examples"),
        (with_metric(train_reply(3, 1.0, 10), "num-examples", float("nan")), "no positive, finite num-examples"),
        (train_reply(3, 1.0, 10, keys={"w"}), "do not match the model's trainable parameters: unexpected [], missing"),
        (train_reply(3, 1.0, 10, keys={"w", "b", "backdoor"}), "unexpected ['backdoor'], missing []"),
        (with_w(Array(np.ones((3,), np.float32))), "array 'w' is float32[3], the model's float32[2]"),
        (with_w(Array(np.ones((2,), np.float64))), "array 'w' is float64[2], the model's float32[2]"),
        (with_w(declared_as_w(Array(np.ones((2, 50), np.float32)).data)), "'w' is declared float32[2] but holds float32[2, 50]"),
        (with_w(declared_as_w(b"not numpy")), "array 'w' cannot be decoded"),
        (with_w(declared_as_w(Array(np.ones(2, np.float32)).data, stype="torch.Tensor")), "'w' cannot be decoded"),
        (Message(error=Error(code=0, reason="dataset broke"), metadata=_from_node(3)), "dataset broke"),
    ],
)
def test_bad_replies_are_dropped_not_averaged(bad, why):
    s, _ = strategy()
    assert why in reply_problem(bad, EXPECTED)
    arrays, _ = s.aggregate_train(1, [train_reply(1, 1.0, 10), bad])
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 1.0])
    assert why in s.dropped[1][0]


def test_a_reply_with_an_extra_metric_record_is_dropped_not_left_to_flower_to_raise_on():
    bad = train_reply(3, 1.0, 10)
    bad.content["more-metrics"] = MetricRecord({"x": 1.0})
    assert reply_problem(bad, EXPECTED) == "reply must carry exactly one MetricRecord"


def test_an_update_above_max_update_mb_is_dropped_before_it_is_decoded(monkeypatch):
    s, _ = strategy(**{"max-update-mb": 0.001})  # 1000 bytes; an honest reply here is 2 x 137
    assert reply_problem(train_reply(1, 1.0, 10), s.expected) is None
    big = with_w(Array(np.ones((1000,), np.float32)))
    monkeypatch.setattr(Array, "numpy", lambda self: pytest.fail("decoded an oversized update"))
    assert reply_problem(big, s.expected) == "update is 0.00427 MB, above max-update-mb=0.001"
    assert reply_problem(big, ExpectedUpdate.like(GLOBAL, max_mb=0)) != reply_problem(big, s.expected)  # 0: no cap


def test_a_round_with_only_bad_replies_aggregates_nothing():
    s, _ = strategy()
    assert s.aggregate_train(1, [train_reply(1, float("inf"), 10)]) == (None, None)


class FakeGrid:
    def get_node_ids(self):
        return [1, 2]


def test_train_messages_carry_lr_fingerprint_stats_and_mu():
    s, _ = strategy(lr=1e-3)
    (msg, _) = s.configure_train(1, ArrayRecord({"w": Array(np.zeros(2))}), ConfigRecord(), FakeGrid())
    config = msg.content["config"]
    assert config["lr"] == pytest.approx(1e-3)
    assert config["base-fingerprint"] == "abc123"
    assert config["proximal-mu"] == pytest.approx(0.01)
    assert list(msg.content["norm-stats"]["action/mean"]) == [0.0]


def test_nodes_evaluate_the_received_model_when_its_round_was_an_evaluation_round():
    s, _ = strategy(**{"eval-frequency": 2, "num-server-rounds": 5})
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    flags = {r: s.configure_train(r, arrays, ConfigRecord(), FakeGrid())[0].content["config"]["evaluate-received"]
             for r in range(1, 6)}
    assert flags == {1: False, 2: False, 3: True, 4: False, 5: True}  # rounds 2 and 4 were evaluation rounds
    assert [r for r in range(1, 6) if s.is_eval_round(r)] == [2, 4, 5]


def test_evaluations_in_train_replies_count_for_the_previous_round():
    s, seen = strategy()
    evaluated = [train_reply(1, 1.0, 30), train_reply(2, 2.0, 30)]
    for reply, (loss, examples) in zip(evaluated, ((0.5, 10), (2.0, 30))):
        reply.content["metrics"]["received-eval-loss"] = loss
        reply.content["metrics"]["received-eval-examples"] = examples
    s.aggregate_train(3, evaluated)
    assert s.client_eval[2]["eval-loss"] == pytest.approx((0.5 * 10 + 2.0 * 30) / 40)
    assert 3 not in s.client_eval
    kind, evaluated_round, reports = seen[-1]
    assert (kind, evaluated_round) == ("evaluate", 2)
    assert {r.name: r.metrics for r in reports} == {"n1": {"eval-loss": 0.5, "num-examples": 10},
                                                   "n2": {"eval-loss": 2.0, "num-examples": 30}}


class ChangingGrid:
    """Nodes come and go: each call returns the next list of connected node ids (the last one repeats)."""

    def __init__(self, *connected):
        self.connected = list(connected)

    def get_node_ids(self):
        return self.connected.pop(0) if len(self.connected) > 1 else self.connected[0]


def test_waiting_for_nodes_ends_when_enough_are_connected():
    from app.federation.exchange import wait_for_nodes

    assert wait_for_nodes(ChangingGrid([1], [1], [1, 2]), 2, timeout=5, poll_seconds=0.01) == [1, 2]


def test_waiting_for_nodes_gives_up_naming_the_missing_ones():
    from app.federation.exchange import wait_for_nodes

    with pytest.raises(TimeoutError, match=r"only 1 of min-available-nodes=2 .* missing: operator_1 \(2\): start"):
        wait_for_nodes(ChangingGrid([1]), 2, timeout=0.05, known={1: "operator_0", 2: "operator_1"},
                       poll_seconds=0.01)


def test_a_round_closes_with_the_replies_it_has_if_enough():
    s, _ = strategy()
    s.names[2] = "operator_1"
    s.missing("train", 1, [2])
    arrays, _ = s.aggregate_train(1, [train_reply(1, 1.0, 10)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 1.0])
    assert s.dropped[1] == ["train node 2 (operator_1): no reply within round-timeout"]
    strict, _ = strategy(**{"min-replies": 2})
    assert strict.aggregate_train(1, [train_reply(1, 1.0, 10)]) == (None, None)


def test_the_final_model_is_evaluated_by_the_nodes_still_connected():
    s, _ = strategy()
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    (msg,) = s.configure_evaluate(4, arrays, ConfigRecord({"final": True}), ChangingGrid([2]))  # node 1 is gone
    assert msg.metadata.dst_node_id == 2 and msg.metadata.message_type == "evaluate"
    assert msg.content["config"]["server-round"] == 4 and msg.content["config"]["final"]
    assert msg.content["config"]["base-fingerprint"] == "abc123" and "norm-stats" in msg.content


HONEST = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def poisoned_round(**run_overrides):
    """Six honest updates and one 20x too large with the sign flipped, aggregated as `run_overrides` say."""
    s, _ = strategy(**{"min-train-nodes": 7, "min-available-nodes": 7, **run_overrides})
    replies = [train_reply(n, value, 10) for n, value in enumerate(HONEST, start=1)] + [train_reply(7, -20.0, 10)]
    return s.aggregate_train(1, replies)


def test_plain_averaging_follows_a_poisoned_update():
    arrays, _ = poisoned_round()
    assert arrays["w"].numpy()[0] == pytest.approx((sum(HONEST) - 20) / 7)


@pytest.mark.parametrize("aggregation", [a for a in AGGREGATIONS if a != "fedprox"])
def test_robust_aggregations_keep_the_poisoned_update_out(aggregation):
    arrays, metrics = poisoned_round(aggregation=aggregation)
    assert min(HONEST) <= arrays["w"].numpy()[0] <= max(HONEST)
    assert metrics["train-loss"] == pytest.approx((sum(HONEST) - 20) / 7)  # every usable node's training loss


def test_the_aggregation_is_flowers():
    from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    def built(aggregation, **more):
        return aggregator(RunConfig.from_mapping({"aggregation": aggregation, "min-train-nodes": 7,
                                                  "min-available-nodes": 7, **more}))

    assert type(built("fedprox")) is FedAvg  # FedProx's server side
    assert isinstance(built("fedtrimmedavg", **{"trim-beta": 0.3}), FedTrimmedAvg)
    assert built("fedtrimmedavg", **{"trim-beta": 0.3}).beta == 0.3
    assert isinstance(built("fedmedian"), FedMedian)
    assert isinstance(built("krum"), Krum) and built("krum").num_malicious_nodes == 1
    assert built("multikrum").num_nodes_to_select == 6  # n - f
    assert isinstance(built("bulyan", **{"num-malicious-nodes": 1}), Bulyan)
    arrays, _ = poisoned_round(aggregation="fedmedian")
    np.testing.assert_allclose(arrays["w"].numpy(), np.median([*HONEST, -20.0]))


def test_robust_aggregation_still_sends_proximal_mu():
    s, _ = strategy(aggregation="fedmedian", **{"min-train-nodes": 3, "min-available-nodes": 3, "proximal-mu": 0.1})
    (msg, *_) = s.configure_train(1, GLOBAL, ConfigRecord(), ChangingGrid([1, 2, 3]))
    assert msg.content["config"]["proximal-mu"] == pytest.approx(0.1)


def test_a_round_with_fewer_updates_than_the_aggregation_needs_aggregates_nothing():
    s, _ = strategy(aggregation="bulyan", **{"min-train-nodes": 7, "min-available-nodes": 7})
    assert s.replies_needed == 7
    assert s.aggregate_train(1, [train_reply(n, 1.0, 10) for n in range(1, 7)]) == (None, None)


def test_a_dataset_reported_as_a_local_path_is_kept_by_its_directory_name_only():
    from app.federation.strategy import node_report

    reply = train_reply(5, 1.0, 10)
    reply.content["node"]["dataset"] = "/home/alice/robot/so100_kitchen"
    assert node_report(reply).dataset == "local:so100_kitchen"


def test_streaming_aggregation_equals_flowers_batch_aggregation():
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(1)
    shapes = {"w": (64, 33), "b": (7,)}
    global_arrays = ArrayRecord({k: Array(np.zeros(shape, np.float32)) for k, shape in shapes.items()})
    replies = []
    for node_id, examples in zip(range(1, 6), (10, 400, 33, 1, 90)):
        reply = train_reply(node_id, 0.0, examples)
        reply.content["arrays"] = ArrayRecord({k: Array(rng.normal(size=shape).astype(np.float32))
                                               for k, shape in shapes.items()})
        replies.append(reply)
    batch = aggregate_arrayrecords([r.content for r in replies], "num-examples")
    s = FedVLA(RunConfig.from_mapping({"update-encoding": "fp32"}), "abc123", {}, global_arrays)
    s.configure_train(1, global_arrays, ConfigRecord(), ChangingGrid([1, 2, 3, 4, 5]))
    s.open_train_round(1)
    for reply in replies:  # one at a time, as they arrive
        s.receive_train(reply)
    streamed, _ = s.close_train_round()
    for name in shapes:
        np.testing.assert_allclose(streamed[name].numpy(), batch[name].numpy(), rtol=1e-6, atol=1e-7)

    sent = wire.encode(codec.FP32, wire.numpy_arrays(global_arrays))  # the packed fp32 broadcast
    assert s.traffic[1] == {"bytes-sent": 5 * wire.update_bytes(sent),
                            "bytes-received": sum(wire.update_bytes(r.content["arrays"]) for r in replies)}


def test_int8_delta_updates_are_screened_and_rebuilt_on_the_global_weights():

    s, _ = strategy(**{"update-encoding": "int8-delta"})
    first = s.configure_train(1, GLOBAL, ConfigRecord(), FakeGrid())
    assert {m.content["config"]["reference-round"] for m in first} == {wire.FULL}  # round 1: nobody holds weights
    reply = train_reply(1, 0.0, 10)
    reply.content["arrays"] = wire.encode("int8-delta", {k: np.full(2, 0.5, np.float32) for k in sorted(KEYS)})
    assert reply_problem(train_reply(1, 0.5, 10), s.expected).startswith("reply arrays do not match")  # fp32 is not
    arrays, _ = s.aggregate_train(1, [reply])
    np.testing.assert_allclose(arrays["w"].numpy(), [0.5, 0.5], rtol=1e-2)
    second = {m.metadata.dst_node_id: m.content for m in s.configure_train(2, arrays, ConfigRecord(), FakeGrid())}
    assert second[1]["config"]["reference-round"] == 0, "node 1 replied: it gets a delta"
    assert sorted(wire.unpack(second[1]["arrays"])) == ["b", "b#scale", "w", "w#scale"]
    assert second[2]["config"]["reference-round"] == wire.FULL, "node 2 did not reply: full weights"


def test_a_node_that_lost_its_reference_is_sent_the_rounds_full_weights_once_and_its_update_counts():

    s, seen = strategy(**{"update-encoding": "int8-delta"})
    s.configure_train(1, GLOBAL, ConfigRecord(), FakeGrid())
    arrays, _ = s.aggregate_train(1, [int8_reply(1, 0.5), int8_reply(2, 0.5)])
    s.configure_train(2, arrays, ConfigRecord(), FakeGrid())
    s.open_train_round(2)
    refused = Message(error=Error(code=0, reason="WorkerFailed: ReferenceMissing: the server sent a delta against "
                                               "round 1's global weights, this node holds none"),
                      metadata=_from_node(2))
    resend = s.receive_train(refused)
    assert resend.metadata.dst_node_id == 2 and resend.metadata.message_type == "train"
    assert resend.content["config"]["reference-round"] == wire.FULL
    assert resend.content["config"]["server-round"] == 2 and "norm-stats" in resend.content
    assert s.receive_train(refused) is None, "once per node and round: a node that refuses full weights is dropped"
    assert s.receive_train(int8_reply(1, 0.5)) is None and s.receive_train(int8_reply(2, 0.5)) is None
    s.close_train_round()
    kind, rnd, reports = seen[-1]
    assert (kind, rnd) == ("train", 2) and sorted(r.node_id for r in reports) == [1, 2], "both updates count"
    assert len(s.dropped[2]) == 1, "the second refusal is dropped, with its reason"


def int8_reply(node_id: int, step: float) -> Message:

    reply = train_reply(node_id, 0.0, 10)
    reply.content["arrays"] = wire.encode("int8-delta", {k: np.full(2, step, np.float32) for k in sorted(KEYS)})
    return reply


def test_a_bf16_update_holding_nan_is_dropped():

    s, _ = strategy(**{"update-encoding": "bf16"})
    reply = train_reply(1, 0.0, 10)
    reply.content["arrays"] = wire.encode("bf16", {"w": np.array([np.nan, 1], np.float32), "b": np.ones(2, np.float32)})
    assert reply_problem(reply, s.expected) == "array 'w' holds NaN or inf"


def test_the_final_model_is_evaluated_by_a_share_of_a_large_federation():
    s, _ = strategy(**{"fraction-train": 0.1, "min-train-nodes": 2, "min-available-nodes": 2})
    arrays = ArrayRecord({"w": Array(np.zeros(2)), "b": Array(np.zeros(2))})
    messages = s.configure_evaluate(4, arrays, ConfigRecord({"final": True}), ChangingGrid(list(range(1, 101))))
    assert len(messages) == 10 and len({m.metadata.dst_node_id for m in messages}) == 10


def test_fedavgm_steps_the_streamed_mean_with_momentum():
    s, _ = strategy(**{"server-optimizer": "fedavgm", "server-momentum": 0.5})
    arrays = GLOBAL  # zeros
    for server_round, expected in ((1, 1.0), (2, 2.5)):
        s.configure_train(server_round, arrays, ConfigRecord(), FakeGrid())
        mean = float(arrays["w"].numpy()[0]) + 1.0  # both nodes move the weights by +1 this round
        arrays, _ = s.aggregate_train(server_round, [train_reply(1, mean, 10), train_reply(2, mean, 30)])
        # round 1: the step is the mean's (+1); round 2: +1 plus half of round 1's step
        np.testing.assert_allclose(arrays["w"].numpy(), [expected, expected])
        assert arrays["w"].dtype == "float32"


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_step_in_float32_and_resume_where_they_were(name):
    from app.federation.strategy import ServerOptimizer

    def run(rounds, optimizer, arrays):
        for server_round in rounds:
            aggregate = ArrayRecord({k: Array(a.numpy() + 0.1 * server_round) for k, a in arrays.items()})
            arrays = optimizer.step(server_round, arrays, aggregate)
        return arrays

    run_config = RunConfig.from_mapping({"server-optimizer": name, "server-lr": 0.01})
    straight = run((1, 2, 3), ServerOptimizer(run_config), GLOBAL)
    first = ServerOptimizer(run_config)
    halfway = run((1, 2), first, GLOBAL)
    carried_on = ServerOptimizer(run_config)  # a ServerApp after a crash, with the state saved after round 2
    carried_on.load_state(first.state())
    resumed = run((3,), carried_on, halfway)
    for key in KEYS:
        assert resumed[key].dtype == "float32" and straight[key].dtype == "float32"
        np.testing.assert_array_equal(resumed[key].numpy(), straight[key].numpy())
        assert 0 < resumed[key].numpy()[0] < 0.6  # it moved towards the aggregates, by adaptive steps


def test_a_server_optimizer_applies_to_a_robust_aggregation_too():
    s, _ = strategy(**{"server-optimizer": "fedavgm", "server-momentum": 0.0, "server-lr": 0.5,
                       "aggregation": "fedmedian", "num-malicious-nodes": 1, "min-train-nodes": 3,
                       "min-available-nodes": 3})
    s.configure_train(1, GLOBAL, ConfigRecord(), ChangingGrid([1, 2, 3]))
    arrays, _ = s.aggregate_train(1, [train_reply(1, 1.0, 10), train_reply(2, 2.0, 10), train_reply(3, 100.0, 10)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 1.0])  # half of the median's step from 0 to 2
