"""EnvelopeEncoder: the client frame of a kernel message, byte for byte.

The reference is the plain construction (a dict with the raw frames as
orjson fragments): the encoder joins pre-encoded pieces instead, and must
produce exactly the same bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from kallichore.errors import RemoteProtocolError
from kallichore.protocol.envelope import EnvelopeEncoder
from kallichore.wire.message import WireMessage


def reference(channel: str, msg: WireMessage) -> bytes:
    parent_id = msg.parent_msg_id
    return orjson.dumps(
        {
            "kind": "jupyter",
            "header": {"msg_id": msg.msg_id, "msg_type": msg.msg_type},
            "parent_header": (
                {"msg_id": parent_id, "msg_type": msg.parent_msg_type or ""} if parent_id else None
            ),
            "channel": channel,
            "content": orjson.Fragment(msg.content),
            "metadata": orjson.Fragment(msg.metadata or b"{}"),
            "buffers": [base64.b64encode(b).decode("ascii") for b in msg.buffers],
        }
    )


def message(
    msg_id: str = "m1",
    msg_type: str = "stream",
    parent: dict[str, Any] | None = None,
    content: bytes = b'{"name":"stdout","text":"hi\\n"}',
    metadata: bytes = b"{}",
    buffers: tuple[bytes, ...] = (),
) -> WireMessage:
    return WireMessage(
        {"msg_id": msg_id, "msg_type": msg_type, "session": "s"},
        {} if parent is None else parent,
        metadata,
        content,
        buffers,
    )


PARENT = {"msg_id": "p1", "msg_type": "execute_request", "date": "2026-01-01T00:00:00Z"}

CASES = [
    ("iopub", message(parent=PARENT)),
    ("iopub", message()),  # no parent: null
    ("shell", message(msg_type="execute_reply", parent=PARENT, content=b'{"status": "ok"}')),
    ("iopub", message(msg_id='quote " and \\ and é and \n', parent={"msg_id": "p\u2028"})),
    ("iopub", message(parent={"msg_type": "x"})),  # a parent without msg_id: null
    ("iopub", message(metadata=b'{"a": [1, 2]}', parent=PARENT)),
    ("iopub", message(metadata=b"", parent=PARENT)),  # an empty metadata frame becomes {}
    ("iopub", message(buffers=(b"\x00\x01", b""), parent=PARENT)),
    ("stdin", message(msg_type="input_request", content=b'{"prompt": "? "}', parent=PARENT)),
    ("control", message(content=b"[1, 2, 3]")),  # content that is JSON but not an object
]


@pytest.mark.parametrize(("channel", "msg"), CASES)
def test_same_bytes_as_the_plain_construction(channel: str, msg: WireMessage) -> None:
    assert EnvelopeEncoder().encode(channel, msg) == reference(channel, msg)


def test_one_encoder_across_messages_parents_and_channels() -> None:
    encoder = EnvelopeEncoder()
    other_parent = {"msg_id": "p2", "msg_type": "kernel_info_request"}
    for channel, msg in CASES * 2 + [("iopub", message(parent=other_parent))] + CASES:
        assert encoder.encode(channel, msg) == reference(channel, msg)


def test_a_new_parent_dict_with_the_same_id_is_not_confused() -> None:
    encoder = EnvelopeEncoder()
    first = message(parent={"msg_id": "p1", "msg_type": "a"})
    second = message(parent={"msg_id": "p1", "msg_type": "b"})
    assert encoder.encode("iopub", first) == reference("iopub", first)
    assert encoder.encode("iopub", second) == reference("iopub", second)


@pytest.mark.parametrize(
    ("content", "metadata"),
    [(b"{not json", b"{}"), (b"", b"{}"), (b"{}", b"{broken"), (b'{"a": "\xff"}', b"{}")],
)
def test_content_or_metadata_that_is_not_json_is_refused(content: bytes, metadata: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not JSON"):
        EnvelopeEncoder().encode("iopub", message(content=content, metadata=metadata))
