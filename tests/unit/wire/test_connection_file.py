"""Tier 1 (pure): connection info, connection/registration files, JEP 66."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from jupyter_client.session import Session

from kallichore.errors import LocalProtocolError, RemoteProtocolError
from kallichore.wire.codec import Deserializer, ReplayWindow, Signer
from kallichore.wire.connection_file import (
    CHANNELS,
    PORT_FIELDS,
    ConnectionInfo,
    encode_connection_file,
    encode_registration_file,
    generate_key,
    handshake_reply_content,
    parse_handshake_request,
    uses_registration_handshake,
)
from kallichore.wire.message import WireMessage

KEY = "8f2c6a0e4b1d3f5a7c9e0b2d4f6a8c1e"
SPEC_ORDER = [
    "control_port",
    "shell_port",
    "stdin_port",
    "hb_port",
    "iopub_port",
    "signature_scheme",
    "key",
    "transport",
    "ip",
]


def make_info(**overrides: Any) -> ConnectionInfo:
    fields: dict[str, Any] = {
        "control_port": 5001,
        "shell_port": 5002,
        "stdin_port": 5003,
        "hb_port": 5004,
        "iopub_port": 5005,
        "key": KEY,
    }
    fields.update(overrides)
    return ConnectionInfo(**fields)


# --- ConnectionInfo ----------------------------------------------------------------


def test_defaults() -> None:
    info = make_info()
    assert info.signature_scheme == "hmac-sha256"
    assert info.transport == "tcp"
    assert info.ip == "127.0.0.1"


def test_to_json_dict_is_in_spec_order() -> None:
    d = make_info().to_json_dict()
    assert list(d) == SPEC_ORDER
    assert list(PORT_FIELDS) == SPEC_ORDER[:5]
    assert d == {
        "control_port": 5001,
        "shell_port": 5002,
        "stdin_port": 5003,
        "hb_port": 5004,
        "iopub_port": 5005,
        "signature_scheme": "hmac-sha256",
        "key": KEY,
        "transport": "tcp",
        "ip": "127.0.0.1",
    }


def test_json_dict_round_trip_ignores_unknown_keys() -> None:
    info = make_info(ip="10.0.0.2")
    d = info.to_json_dict()
    assert ConnectionInfo.from_json_dict(d) == info
    assert ConnectionInfo.from_json_dict({**d, "kernel_name": "python3"}) == info


def test_from_json_dict_applies_defaults() -> None:
    d = {name: 6000 + i for i, name in enumerate(PORT_FIELDS)} | {"key": KEY}
    info = ConnectionInfo.from_json_dict(d)
    assert info.to_json_dict() == d | {
        "signature_scheme": "hmac-sha256",
        "transport": "tcp",
        "ip": "127.0.0.1",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("control_port", True),
        ("shell_port", False),
        ("stdin_port", 0),
        ("hb_port", 65536),
        ("iopub_port", -1),
        ("shell_port", "5002"),
        ("control_port", 5002.0),
        ("iopub_port", None),
        ("key", 123),
        ("key", None),
        ("ip", 127),
        ("transport", ["tcp"]),
        ("signature_scheme", b"hmac-sha256"),
    ],
)
def test_validation_errors_name_the_field(field: str, value: Any) -> None:
    d = make_info().to_json_dict() | {field: value}
    with pytest.raises(ValueError, match=re.escape(repr(field))):
        ConnectionInfo.from_json_dict(d)
    with pytest.raises(ValueError, match=re.escape(repr(field))):
        make_info(**{field: value})


@pytest.mark.parametrize("field", [*PORT_FIELDS, "key"])
def test_missing_required_field(field: str) -> None:
    d = make_info().to_json_dict()
    del d[field]
    with pytest.raises(ValueError, match=f"missing field {field!r}"):
        ConnectionInfo.from_json_dict(d)


@pytest.mark.parametrize("value", [[], "text", None, 5])
def test_from_json_dict_requires_an_object(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        ConnectionInfo.from_json_dict(value)


def test_port_range_edges_are_valid() -> None:
    info = make_info(control_port=1, iopub_port=65535)
    assert info.control_port == 1
    assert info.iopub_port == 65535


def test_repr_hides_the_key() -> None:
    assert KEY not in repr(make_info())


@pytest.mark.parametrize(
    ("channel", "endpoint"),
    [
        ("control", "tcp://127.0.0.1:5001"),
        ("shell", "tcp://127.0.0.1:5002"),
        ("stdin", "tcp://127.0.0.1:5003"),
        ("hb", "tcp://127.0.0.1:5004"),
        ("iopub", "tcp://127.0.0.1:5005"),
    ],
)
def test_endpoint(channel: str, endpoint: str) -> None:
    assert make_info().endpoint(channel) == endpoint


def test_endpoint_variants() -> None:
    assert make_info(ip="::1").endpoint("shell") == "tcp://[::1]:5002"
    assert make_info(transport="ipc", ip="/tmp/k").endpoint("hb") == "ipc:///tmp/k-5004"
    assert sorted(CHANNELS) == ["control", "hb", "iopub", "shell", "stdin"]


@pytest.mark.parametrize("channel", ["heartbeat", "Shell", "registration", ""])
def test_endpoint_unknown_channel(channel: str) -> None:
    with pytest.raises(LocalProtocolError, match="channel"):
        make_info().endpoint(channel)


def test_endpoint_unsupported_transport() -> None:
    with pytest.raises(LocalProtocolError, match="transport"):
        make_info(transport="udp").endpoint("shell")


# --- files ---------------------------------------------------------------------------


def test_connection_file_bytes() -> None:
    assert encode_connection_file(make_info()) == (
        b"{\n"
        b'  "control_port": 5001,\n'
        b'  "shell_port": 5002,\n'
        b'  "stdin_port": 5003,\n'
        b'  "hb_port": 5004,\n'
        b'  "iopub_port": 5005,\n'
        b'  "signature_scheme": "hmac-sha256",\n'
        b'  "key": "8f2c6a0e4b1d3f5a7c9e0b2d4f6a8c1e",\n'
        b'  "transport": "tcp",\n'
        b'  "ip": "127.0.0.1"\n'
        b"}"
    )
    assert list(orjson.loads(encode_connection_file(make_info()))) == SPEC_ORDER


def test_registration_file_bytes() -> None:
    assert encode_registration_file(key=KEY, registration_port=40123) == (
        b"{\n"
        b'  "transport": "tcp",\n'
        b'  "signature_scheme": "hmac-sha256",\n'
        b'  "ip": "127.0.0.1",\n'
        b'  "key": "8f2c6a0e4b1d3f5a7c9e0b2d4f6a8c1e",\n'
        b'  "registration_port": 40123\n'
        b"}"
    )
    doc = orjson.loads(encode_registration_file(key=KEY, registration_port=1, ip="0.0.0.0"))
    assert doc["ip"] == "0.0.0.0"


@pytest.mark.parametrize("port", [0, 65536, True])
def test_registration_file_rejects_bad_port(port: int) -> None:
    with pytest.raises(LocalProtocolError, match="registration port"):
        encode_registration_file(key=KEY, registration_port=port)


def test_generate_key() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)


# --- JEP 66 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("5.5", True),
        ("5.6", True),
        ("5.10", True),
        ("6.0", True),
        ("10.0", True),
        ("05.05", True),
        ("5.4", False),
        ("5.3", False),
        ("4.9", False),
        ("4.10", False),
        ("5.5.0", False),
        ("6", False),
        ("", False),
        ("5.", False),
        (".5", False),
        ("v5.5", False),
        (" 5.5", False),
        ("5.5 ", False),
        ("5.5\n", False),
        ("-5.5", False),
        ("+5.5", False),
        ("5.-5", False),
        ("5.5a", False),
        ("5,5", False),
        ("\u0665.\u0665", False),  # Arabic-Indic digits are not ASCII digits
    ],
)
def test_uses_registration_handshake(version: str, expected: bool) -> None:
    assert uses_registration_handshake(version) is expected


PORTS = {
    "control_port": 7001,
    "shell_port": 7002,
    "stdin_port": 7003,
    "hb_port": 7004,
    "iopub_port": 7005,
}


def handshake(content: Any, msg_type: str = "handshake_request") -> WireMessage:
    return WireMessage(
        header={"msg_id": "m", "msg_type": msg_type},
        parent_header={},
        metadata=b"{}",
        content=content if isinstance(content, bytes) else orjson.dumps(content),
    )


def test_parse_handshake_request() -> None:
    shuffled = {
        "shell_port": 7002,
        "iopub_port": 7005,
        "stdin_port": 7003,
        "control_port": 7001,
        "hb_port": 7004,
        "kernel_name": "ark",  # extra keys are ignored
    }
    ports = parse_handshake_request(handshake(shuffled))
    assert ports == PORTS
    assert list(ports) == list(PORT_FIELDS)
    info = ConnectionInfo(**ports, key=KEY)
    assert info.to_json_dict() == PORTS | {
        "signature_scheme": "hmac-sha256",
        "key": KEY,
        "transport": "tcp",
        "ip": "127.0.0.1",
    }


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (handshake(PORTS, msg_type="kernel_info_request"), "handshake_request"),
        (handshake(b"not json"), "not valid JSON"),
        (handshake([7001, 7002]), "JSON object"),
        (handshake({k: v for k, v in PORTS.items() if k != "hb_port"}), "hb_port"),
        (handshake(PORTS | {"shell_port": True}), "shell_port"),
        (handshake(PORTS | {"stdin_port": "7003"}), "stdin_port"),
        (handshake(PORTS | {"iopub_port": 0}), "iopub_port"),
        (handshake(PORTS | {"control_port": 70000}), "control_port"),
    ],
)
def test_parse_handshake_request_errors(message: WireMessage, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse_handshake_request(message)


def test_handshake_from_a_jupyter_client_session() -> None:
    # What a JEP 66 kernel sends on the registration socket, signed with the session key.
    session = Session(key=KEY.encode("ascii"), signature_scheme="hmac-sha256")
    frames = session.serialize(session.msg("handshake_request", content=PORTS))
    msg = Deserializer(Signer(KEY.encode("ascii")), ReplayWindow()).receive_frames(frames)
    assert parse_handshake_request(msg) == PORTS


def test_handshake_reply_content() -> None:
    reply = handshake_reply_content()
    assert reply == {"status": "ok", "capabilities": {}}
    assert orjson.dumps(reply) == b'{"status":"ok","capabilities":{}}'
    reply["capabilities"]["x"] = 1
    assert handshake_reply_content() == {"status": "ok", "capabilities": {}}
