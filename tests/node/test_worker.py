"""app.node.worker: the warm node keeps one policy per run and answers forwarded messages as the ClientApp would in
its own process; a real tiny SmolVLA and a real Unix socket, no federation around them."""

import gc
import threading
import weakref

import pytest

from app.federation import client_app, wire

from app.learning import model
from app.common.config import EMBEDDED_OVERRIDES, NodeConfig, RunConfig
from app.node.worker import Learners, Worker
from tests.federation.test_client_app import _context, _train_message

RUN = RunConfig.from_mapping({**EMBEDDED_OVERRIDES, "local-steps": 3})
OPERATOR_0 = NodeConfig(dataset_uri="embedded:operator-0", name="op0")
OPERATOR_1 = NodeConfig(dataset_uri="embedded:operator-1", name="op0")


def test_a_run_keeps_its_policy_and_a_new_run_or_dataset_gets_a_fresh_one():
    learners = Learners(capacity=1)
    first, state = learners.get(1, RUN, OPERATOR_0)
    assert learners.get(1, RUN, OPERATOR_0) == (first, state) and learners.built == 1
    gone = weakref.ref(first.policy)
    second, second_state = learners.get(2, RUN, OPERATOR_0)  # the next run, same data: still a fresh policy
    del first
    gc.collect()
    assert gone() is None, "the earlier run's policy is freed: one policy in memory"
    assert second_state is not state, "a run starts with nothing kept from another"
    other, _ = learners.get(2, RUN, OPERATOR_1)  # another dataset
    assert other is not second and other.data.ref.uri != second.data.ref.uri
    assert learners.built == 3
    learners.release(2)
    assert not learners.held


@pytest.fixture
def worker(tmp_path):
    warm = Worker(tmp_path / "worker.sock", "op0", idle_release_seconds=900)
    threading.Thread(target=warm.serve_forever, daemon=True).start()
    return warm


def test_a_forwarded_message_gets_the_answer_the_clientapp_would_compute_itself(worker, tiny_policy, operator0):
    msg = _train_message(tiny_policy, operator0, model.frozen_fingerprint(tiny_policy), evaluate_received=True)
    def learned(reply):
        metrics = wire.unpack_records(reply.content)["metrics"]
        return {k: v for k, v in metrics.items() if k != "compute-seconds"}

    in_process = learned(client_app.train(msg, _context({})))
    forwarded_context = _context({})
    forwarded_context.node_config["worker-socket"] = str(worker.socket_path)
    for _ in range(2):
        forwarded = learned(client_app.train(msg, forwarded_context))
        assert forwarded == pytest.approx(in_process, rel=1e-5)
    assert worker.learners.built == 1, "the second message reused the policy"
    assert worker.progress == 2 * forwarded["steps"]

    msg.content["config"]["final"] = True  # the run's last message: the worker lets the policy go
    client_app.train(msg, forwarded_context)
    assert not worker.learners.held


def test_a_run_with_other_settings_than_the_node_checked_is_pointed_out(tmp_path):
    from structlog.testing import capture_logs

    warm = Worker(tmp_path / "worker.sock", "op0", 900, checked={"model": "embedded:tiny", "fps": 30, "cameras": "auto"})
    with capture_logs() as logs:
        warm._compare_settings(7, RUN)  # the same settings: nothing to say
        warm._compare_settings(8, RunConfig.from_mapping({**EMBEDDED_OVERRIDES, "fps": 15}))
    (said,) = logs
    assert said["event"] == "run_settings_differ" and said["settings"] == {"fps": {"checked": 30, "run": 15}}
    assert "--fps" in said["fix"]
