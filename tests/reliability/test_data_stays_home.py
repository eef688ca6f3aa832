"""Data stays home: in a real federated run on the shared deployment (tests/reliability/conftest.py), every reply
a node sends holds only the trainable parameters (as the run's update encoding carries them: by default int8 deltas
and their scales), scalar metrics, the node's public name and (once, before round 1) its state/action normalization
stats. No frame, no image, no episode and no path of the operator's machine leaves it. The replies are recorded
where the ClientApp hands them to Flower, after the node's warm worker produced them; a packed reply's records are
taken out of its update's header (wire.unpack_records) and checked like any other."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.serde import ProtoRecordDict, recorddict_from_proto

from app.federation import codec, wire

from app.learning import embedded
from app.learning import model as models
from app.common.config import RunConfig, fedvla_home
from app.learning.learner import NORMALIZED_KEYS, STAT_FIELDS

pytestmark = pytest.mark.integration

# What a node may say about itself, in every reply (ConfigRecord "node"): the name the operator chose for it
# (reports are per node) and its dataset's public name (Hub id, embedded name or local:<directory name>), which
# tells the coordinator whose data a model learned from without revealing where it lies on the operator's disk.
NODE_KEYS = {"node-name", "dataset"}
# The stats reply (ConfigRecord "norm-stats"): per-dimension mean/std/min/max and the frame count of state and
# action, which the server merges into one normalization for the federation (lerobot#1763). Summaries of at most
# one value per joint, never frames.
STATS_KEYS = {f"{key}/{field}" for key in NORMALIZED_KEYS for field in STAT_FIELDS}


def problems(kind: str, name: str, record, trainable: dict, joints: int) -> list[str]:
    """What in one record of a `kind` reply should not have left the node (`trainable`: the trainable parameters'
    arrays as the update encoding carries them, name -> (shape, dtype); `joints`: the widest of state and action)."""
    where = f"{kind} reply, record {name!r}"
    if isinstance(record, ArrayRecord):
        if kind != "train" or name != "arrays":
            return [f"{where}: arrays in a reply that carries none"]
        try:
            parts = wire.unpack(record)  # unpack refuses any header metadata but the records checked beside it
        except ValueError as exc:
            return [f"{where}: {exc}"]
        if set(parts) != set(trainable):
            return [f"{where}: arrays {sorted(set(parts) ^ set(trainable))[:5]} are not the trainable parameters"]
        return [f"{where}: {key} is {values.dtype}{list(values.shape)}, the encoded parameter's "
                f"{trainable[key][1]}{list(trainable[key][0])}" for key, values in parts.items()
                if (values.shape, str(values.dtype)) != trainable[key]]
    if isinstance(record, MetricRecord):
        return [f"{where}: metric {key} is {type(value).__name__}, not a scalar" for key, value in record.items()
                if isinstance(value, bool) or not isinstance(value, (int, float))]
    if isinstance(record, ConfigRecord) and name == "node":
        found = [f"{where}: keys {sorted(record)}"] if set(record) != NODE_KEYS else []
        return found + [f"{where}: {key}={record[key]!r} names a local path" for key in NODE_KEYS & set(record)
                        if isinstance(record[key], str) and record[key].startswith(("/", "~", "."))]
    if isinstance(record, ConfigRecord) and name == "norm-stats" and kind == "query":
        found = [f"{where}: keys {sorted(record)}"] if set(record) != STATS_KEYS else []
        return found + [f"{where}: {key} holds {len(value)} values" for key, value in record.items()
                        if not isinstance(value, list) or len(value) > joints]
    return [f"{where}: a {type(record).__name__} that no reply should carry"]


def test_a_node_sends_only_weights_scalar_metrics_stats_and_its_public_name(recorded_run, tiny_config, tiny_policy,
                                                                            ledger):
    trainable = models.trainable_state(tiny_policy)
    encoded = codec.wire_layout(RunConfig.from_mapping(recorded_run.run_config).update_encoding,
                                codec.layout_of({k: v.numpy() for k, v in trainable.items()}))
    schema = models.policy_schema(tiny_config, None)
    joints = max(schema.state_dim, schema.action_dim)
    places = [str(embedded.ensure_operator_dataset(i)) for i in (0, 1)]
    places += [str(fedvla_home()), str(recorded_run.outputs), str(recorded_run.shared.deployment.workdir)]
    found, kinds = [], []
    for path in recorded_run.replies:
        kind = path.name.split("-")[0]
        kinds.append(kind)
        sent = path.read_bytes()
        # Whatever the structure, no path of this machine is in the bytes that went out.
        found += [f"{kind} reply names {place}" for place in places if place.encode() in sent]
        content = wire.unpack_records(recorddict_from_proto(ProtoRecordDict.FromString(sent)))
        for name, record in content.items():
            found += problems(kind, name, record, encoded, joints)
    ledger.book("what leaves a node: every reply of a run checked",
                runs_completed=int(recorded_run.status == "finished:completed"), secrets_found=len(found))

    assert recorded_run.status == "finished:completed"
    assert found == []
    # Both nodes answered every kind of message: stats before round 1, a train and a final evaluate message.
    assert sorted(kinds) == ["evaluate"] * 2 + ["query"] * 2 + ["train"] * 2, kinds
