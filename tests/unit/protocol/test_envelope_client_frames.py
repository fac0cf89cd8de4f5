"""Client frames on the channel WebSocket: what is accepted, what is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kallichore.errors import RemoteProtocolError
from kallichore.protocol.envelope import client_message, execute_content, parse_client_frame


def frame(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "header": {
            "msg_id": "abc123",
            "msg_type": "execute_request",
            "session": "s",
            "username": "u",
            "date": "2026-01-01T00:00:00.000Z",
            "version": "5.3",
        },
        "parent_header": None,
        "channel": "shell",
        "content": {"code": "1 + 1"},
        "metadata": {},
        "buffers": [],
    }
    body.update(overrides)
    return body


def test_positron_frame_round_trips() -> None:
    sent = frame()
    msg = parse_client_frame(json.dumps(sent))
    assert msg == sent


def test_bytes_input_is_accepted() -> None:
    assert parse_client_frame(json.dumps(frame()).encode())["channel"] == "shell"


def test_kind_jupyter_is_accepted_and_dropped() -> None:
    msg = parse_client_frame(json.dumps(frame(kind="jupyter")))
    assert "kind" not in msg
    assert msg["header"]["msg_type"] == "execute_request"


def test_optional_fields_get_defaults() -> None:
    body = frame()
    for key in ("parent_header", "metadata", "buffers"):
        del body[key]
    msg = parse_client_frame(json.dumps(body))
    assert msg["parent_header"] is None
    assert msg["metadata"] == {}
    assert msg["buffers"] == []


def test_unknown_fields_are_ignored() -> None:
    msg = parse_client_frame(json.dumps(frame(extra=1)))
    assert "extra" not in msg


def test_parent_header_and_buffers_pass_through() -> None:
    parent = {"msg_id": "k1", "msg_type": "input_request"}
    msg = parse_client_frame(
        json.dumps(frame(parent_header=parent, channel="stdin", buffers=["AAEC", ""]))
    )
    assert msg["parent_header"] == parent
    assert msg["buffers"] == ["AAEC", ""]


def test_content_may_be_any_json() -> None:
    assert parse_client_frame(json.dumps(frame(content=None)))["content"] is None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[1, 2]", "JSON object, not an array"),
        ('"text"', "JSON object, not a string"),
        (json.dumps(frame(kind="kernel")), "kind 'kernel'"),
        (json.dumps(frame(header=None)), "no 'header' object"),
        (json.dumps(frame(header={"msg_type": "x"})), "string 'msg_id'"),
        (json.dumps(frame(header={"msg_id": "x", "msg_type": 3})), "string 'msg_type'"),
        (json.dumps(frame(parent_header=[])), "'parent_header' must be an object or null"),
        (json.dumps(frame(channel=None)), "string 'channel'"),
        (json.dumps(frame(metadata=[])), "'metadata' must be an object"),
        (json.dumps(frame(buffers="AAEC")), "list of base64 strings"),
        (json.dumps(frame(buffers=[1])), "list of base64 strings"),
        (json.dumps(frame(buffers=["not base64!"])), "buffer 0 is not valid base64"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(data: str, needle: str) -> None:
    with pytest.raises(RemoteProtocolError, match=needle):
        parse_client_frame(data)


def test_missing_content_is_refused() -> None:
    body = frame()
    del body["content"]
    with pytest.raises(RemoteProtocolError, match="no 'content'"):
        parse_client_frame(json.dumps(body))


def test_client_message_round_trips_through_the_parser() -> None:
    msg = client_message(
        "comm_msg",
        {"comm_id": "c1", "data": {}},
        channel="shell",
        parent={"msg_id": "p1", "msg_type": "execute_request"},
        buffers=[b"\x00\x01\xff"],
        msg_id="m1",
    )
    parsed = parse_client_frame(json.dumps(msg))
    assert parsed["header"]["msg_id"] == "m1"
    assert parsed["header"]["msg_type"] == "comm_msg"
    assert parsed["buffers"] == ["AAH/"]
    assert parsed["parent_header"]["msg_id"] == "p1"
    assert execute_content("1")["allow_stdin"] is False
    assert execute_content("1", allow_stdin=True)["allow_stdin"] is True
