"""The ClientApp's handlers called directly with real Flower records (no federation around them)."""

import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from app.federation import client_app, codec, wire

from app.learning import model
from app.common.config import EMBEDDED_OVERRIDES
from app.common.errors import ModelError
from app.learning.learner import flatten_stats


def _message(content: RecordDict, kind: str) -> Message:
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600, message_type=kind)
    return Message(content=content, metadata=metadata)


def _context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config={"dataset-uri": "embedded:operator-0", "name": "op0"},
                   state=RecordDict(), run_config={**EMBEDDED_OVERRIDES, "local-steps": 3, **run_config})


def _train_message(tiny_policy, operator0, fingerprint: str, evaluate_received: bool = False) -> Message:
    config = ConfigRecord({"server-round": 2, "lr": 1e-3, "proximal-mu": 0.01, "base-fingerprint": fingerprint,
                           "evaluate-received": evaluate_received})
    return _message(RecordDict({
        "arrays": wire.encode(codec.FP32, {k: v.numpy() for k, v in model.trainable_state(tiny_policy).items()}),
        "config": config,
        "norm-stats": ConfigRecord(flatten_stats(operator0.meta.stats)),
    }), "train")


def _reply_content(reply: Message) -> RecordDict:
    return wire.unpack_records(reply.content)


def test_train_reply_carries_arrays_metrics_and_traffic(tiny_policy, operator0):
    msg = _train_message(tiny_policy, operator0, model.frozen_fingerprint(tiny_policy))
    reply = client_app.train(msg, _context({"update-encoding": "fp32"}))
    # On the wire the reply is one record of one Array: the metrics and the node's name are in its header.
    assert list(reply.content) == ["arrays"] and len(reply.content["arrays"]) == 1
    content = _reply_content(reply)
    metrics = content["metrics"]
    assert metrics["steps"] == 3 and metrics["num-examples"] == 24
    assert metrics["bytes-sent"] == metrics["bytes-received"] > 0
    assert set(wire.unpack(content["arrays"])) == set(model.trainable_state(tiny_policy))
    assert content["node"]["node-name"] == "op0"
    assert content["node"]["dataset"] == "embedded:operator-0"
    # The default encoding: full weights came in (round 1, or a node without the reference), an int8 delta goes out.
    delta = _reply_content(client_app.train(_train_message(tiny_policy, operator0,
                                                           model.frozen_fingerprint(tiny_policy)), _context({})))
    layout = codec.layout_of({k: v.numpy() for k, v in model.trainable_state(tiny_policy).items()})
    assert {k: (a.shape, str(a.dtype)) for k, a in wire.unpack(delta["arrays"]).items()} == codec.wire_layout(
        "int8-delta", layout)
    assert delta["metrics"]["bytes-sent"] < metrics["bytes-sent"] / 3


def test_a_train_message_can_first_evaluate_the_model_it_brings(tiny_policy, operator0):
    """One message per round: the held-out loss of the received global model, measured before training moves it,
    equals what a separate evaluate message would have reported."""
    msg = _train_message(tiny_policy, operator0, model.frozen_fingerprint(tiny_policy), evaluate_received=True)
    metrics = _reply_content(client_app.train(msg, _context({})))["metrics"]
    assert metrics["received-eval-examples"] == len(operator0.heldout)
    evaluate = _message(RecordDict({key: msg.content[key] for key in ("arrays", "config", "norm-stats")}), "evaluate")
    alone = client_app.evaluate(evaluate, _context({})).content["metrics"]
    assert metrics["received-eval-loss"] == pytest.approx(alone["eval-loss"], rel=1e-6)
    assert metrics["steps"] == 3


def test_a_node_with_a_different_frozen_base_refuses_to_train(tiny_policy, operator0):
    msg = _train_message(tiny_policy, operator0, "0123456789abcdef")
    with pytest.raises(ModelError, match="frozen base model .* differs from the server's"):
        client_app.train(msg, _context({}))
