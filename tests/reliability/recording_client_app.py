"""The project's ClientApp (app.federation.client_app.app, its real handlers), plus a record of every reply it sends.

test_data_stays_home.py runs a federation with this ClientApp in place of the project's, so the project's code
needs no test hook. Each reply's content is written as Flower serializes it for the wire, one file per reply:
$FEDVLA_RECORDED_REPLIES/<message type>-<uuid>.pb.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto

from app.federation import client_app
app = ClientApp()


def recorded(msg: Message, context: Context) -> Message:
    reply = client_app.app(msg, context)
    record = Path(os.environ["FEDVLA_RECORDED_REPLIES"]) / f"{reply.metadata.message_type}-{uuid.uuid4().hex}.pb"
    record.write_bytes(recorddict_to_proto(reply.content).SerializeToString())
    return reply


for register in (app.query, app.train, app.evaluate):  # every kind of message the project's ClientApp answers
    register()(recorded)
