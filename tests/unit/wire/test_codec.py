"""Tier 1 (pure): the wire message model and the sans-io codec.

No event loop, no sockets. jupyter_client's ``Session`` serves as an
independent oracle for the interop tests (as h11's tests use the stdlib).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from jupyter_client.session import Session

from kallichore.errors import LocalProtocolError, RemoteProtocolError
from kallichore.wire.codec import (
    DEFAULT_REPLAY_CAPACITY,
    DELIMITER,
    Deserializer,
    ReplayWindow,
    Signer,
    serialize,
    split_identities,
)
from kallichore.wire.message import WireMessage, new_header, new_msg_id, short_msg_id

KEY_TEXT = "8f2c6a0e4b1d3f5a7c9e0b2d4f6a8c1e"  # a connection file's "key"
KEY = KEY_TEXT.encode("ascii")  # the HMAC key is the ASCII of the hex string
FIXED_DATE = datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=UTC)


def make_message(
    *,
    identities: tuple[bytes, ...] = (),
    buffers: tuple[bytes, ...] = (),
    parent: dict[str, Any] | None = None,
) -> WireMessage:
    header = new_header(
        "execute_request",
        session="session-1",
        username="alice",
        version="5.3",
        msg_id="0123456789abcdef0123456789abcdef",
        date=FIXED_DATE,
    )
    return WireMessage(
        header=header,
        parent_header={} if parent is None else parent,
        metadata=b'{"cellId":"c1"}',
        content=b'{"code":"print(1)","silent":false}',
        buffers=buffers,
        identities=identities,
    )


def signed_frames(
    header: bytes,
    parent: bytes = b"{}",
    metadata: bytes = b"{}",
    content: bytes = b"{}",
    *,
    key: bytes = KEY,
    identities: tuple[bytes, ...] = (),
) -> list[bytes]:
    """Frames with a correct signature around arbitrary (possibly bad) parts."""
    signature = hmac.new(key, header + parent + metadata + content, hashlib.sha256).hexdigest()
    return [
        *identities,
        DELIMITER,
        signature.encode("ascii"),
        header,
        parent,
        metadata,
        content,
    ]


def deserializer(key: bytes = KEY, **kwargs: Any) -> Deserializer:
    return Deserializer(Signer(key), ReplayWindow(), **kwargs)


# --- the message model -----------------------------------------------------------------


def test_message_properties() -> None:
    parent = {"msg_id": "p1", "msg_type": "kernel_info_request"}
    msg = make_message(parent=parent)
    assert msg.msg_id == "0123456789abcdef0123456789abcdef"
    assert msg.msg_type == "execute_request"
    assert msg.parent_msg_id == "p1"
    assert msg.parent_msg_type == "kernel_info_request"
    assert msg.content_json() == {"code": "print(1)", "silent": False}
    assert msg.metadata_json() == {"cellId": "c1"}


def test_message_properties_when_absent() -> None:
    msg = WireMessage(header={}, parent_header={}, metadata=b"{}", content=b"{}")
    assert msg.msg_id == ""
    assert msg.msg_type == ""
    assert msg.parent_msg_id is None
    assert msg.parent_msg_type is None
    assert msg.buffers == ()
    assert msg.identities == ()


def test_new_header_fields_and_order() -> None:
    header = new_header(
        "kernel_info_request", session="s", username="u", version="5.3", date=FIXED_DATE
    )
    assert list(header) == ["msg_id", "msg_type", "session", "username", "date", "version"]
    assert header["date"] == "2026-03-02T10:00:00.123Z"
    assert re.fullmatch(r"[0-9a-f]{32}", header["msg_id"])
    assert orjson.dumps(header).startswith(b'{"msg_id":')


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC), "2026-03-02T10:00:00.000Z"),
        (datetime(2026, 3, 2, 10, 0, 0, 999999, tzinfo=UTC), "2026-03-02T10:00:00.999Z"),
        # Converted to UTC.
        (
            datetime(2026, 3, 2, 12, 30, 0, 5000, tzinfo=timezone(timedelta(hours=2))),
            "2026-03-02T10:30:00.005Z",
        ),
    ],
)
def test_new_header_date_format(date: datetime, expected: str) -> None:
    header = new_header("x", session="s", username="u", version="5.3", date=date)
    assert header["date"] == expected


def test_new_header_default_date_is_now() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    header = new_header("x", session="s", username="u", version="5.3", msg_id="m")
    assert header["msg_id"] == "m"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", header["date"])
    parsed = datetime.fromisoformat(header["date"].replace("Z", "+00:00"))
    assert before <= parsed <= datetime.now(UTC)


def test_new_header_rejects_naive_date() -> None:
    with pytest.raises(LocalProtocolError, match="timezone-aware"):
        new_header("x", session="s", username="u", version="5.3", date=datetime(2026, 1, 1))


def test_msg_ids() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", new_msg_id())
    assert re.fullmatch(r"[0-9a-f]{10}", short_msg_id())
    assert len({short_msg_id() for _ in range(100)}) == 100
    assert len({new_msg_id() for _ in range(100)}) == 100


# --- serialize / receive_frames ------------------------------------------------------


@pytest.mark.parametrize(
    ("identities", "buffers"),
    [
        ((), ()),
        ((b"session-1",), ()),
        ((), (b"\x00\x01binary", b"")),
        ((b"router-a", b"router-b"), (b"\xff" * 1000, b"second", b"\x00")),
    ],
)
def test_round_trip_byte_for_byte(
    identities: tuple[bytes, ...], buffers: tuple[bytes, ...]
) -> None:
    msg = make_message(
        identities=identities,
        buffers=buffers,
        parent={"msg_id": "p", "msg_type": "comm_open"},
    )
    signer = Signer(KEY)
    frames = serialize(msg, signer)

    n = len(identities)
    assert frames[:n] == list(identities)
    assert frames[n] == DELIMITER
    assert frames[n + 2] == orjson.dumps(msg.header)
    assert frames[n + 3] == b'{"msg_id":"p","msg_type":"comm_open"}'
    assert frames[n + 4] is msg.metadata  # spliced, not copied
    assert frames[n + 5] is msg.content
    assert frames[n + 6 :] == list(buffers)

    received = Deserializer(signer, ReplayWindow()).receive_frames(frames)
    assert received == msg
    assert received.metadata is frames[n + 4]  # kept raw, not re-encoded
    assert serialize(received, signer) == frames


def test_header_is_compact_json_in_key_order() -> None:
    frames = serialize(make_message(), Signer(KEY))
    assert frames[2] == (
        b'{"msg_id":"0123456789abcdef0123456789abcdef","msg_type":"execute_request",'
        b'"session":"session-1","username":"alice","date":"2026-03-02T10:00:00.123Z",'
        b'"version":"5.3"}'
    )
    assert frames[3] == b"{}"


def test_signature_is_hmac_sha256_hex_over_four_frames() -> None:
    msg = make_message(buffers=(b"not signed",))
    frames = serialize(msg, Signer(KEY))
    header, parent, metadata, content = frames[2:6]
    expected = hmac.new(KEY, header + parent + metadata + content, hashlib.sha256).hexdigest()
    assert frames[1] == expected.encode("ascii")
    assert re.fullmatch(rb"[0-9a-f]{64}", frames[1])


def test_buffers_do_not_affect_signature() -> None:
    signer = Signer(KEY)
    a = serialize(make_message(buffers=(b"a",)), signer)
    b = serialize(make_message(buffers=(b"b", b"c")), signer)
    assert a[1] == b[1]


def test_sign_requires_exactly_four_parts() -> None:
    signer = Signer(KEY)
    with pytest.raises(LocalProtocolError, match="exactly 4"):
        signer.sign([b"{}", b"{}", b"{}"])
    with pytest.raises(LocalProtocolError, match="exactly 4"):
        signer.sign([b"{}"] * 5)


def tamper_signature(frames: list[bytes]) -> None:
    frames[1] = b"0" * 64


def tamper_signature_case(frames: list[bytes]) -> None:
    frames[1] = frames[1].upper()


def tamper_signature_truncated(frames: list[bytes]) -> None:
    frames[1] = frames[1][:-2]


def tamper_header(frames: list[bytes]) -> None:
    frames[2] = frames[2].replace(b"execute_request", b"shutdown_request")


def tamper_parent(frames: list[bytes]) -> None:
    frames[3] = b'{"msg_id":"x","msg_type":"y"}'


def tamper_metadata(frames: list[bytes]) -> None:
    frames[4] = b"{}"


def tamper_content(frames: list[bytes]) -> None:
    frames[5] = b'{"code":"import os; os.system(\'rm -rf /\')"}'


@pytest.mark.parametrize(
    "tamper",
    [
        tamper_signature,
        tamper_signature_case,
        tamper_signature_truncated,
        tamper_header,
        tamper_parent,
        tamper_metadata,
        tamper_content,
    ],
)
def test_bad_signature_rejected(tamper: Any) -> None:
    frames = serialize(make_message(), Signer(KEY))
    tamper(frames)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        deserializer().receive_frames(frames)


def test_wrong_key_rejected() -> None:
    frames = serialize(make_message(), Signer(b"another key"))
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        deserializer().receive_frames(frames)


def test_empty_key_disables_signing() -> None:
    signer = Signer(b"")
    assert not signer.enabled
    frames = serialize(make_message(), signer)
    assert frames[1] == b""
    assert signer.verify(frames[2:6], b"anything at all")

    receiver = Deserializer(signer, ReplayWindow())
    assert receiver.receive_frames(frames) == make_message()
    # Any signature is accepted -- and, carrying no meaning, is not replay-tracked.
    signed_elsewhere = serialize(make_message(), Signer(KEY))
    assert receiver.receive_frames(signed_elsewhere) == make_message()
    assert receiver.receive_frames(signed_elsewhere) == make_message()


def test_verify_rejects_empty_signature_when_signing() -> None:
    signer = Signer(KEY)
    assert signer.enabled
    assert not signer.verify([b"{}"] * 4, b"")


def test_unsigned_message_accepted_by_default_like_kallichore() -> None:
    frames = serialize(make_message(), Signer(b""))
    assert frames[1] == b""
    assert deserializer().receive_frames(frames) == make_message()


def test_unsigned_message_rejected_when_strict() -> None:
    frames = serialize(make_message(), Signer(b""))
    with pytest.raises(RemoteProtocolError, match="unsigned"):
        deserializer(accept_unsigned=False).receive_frames(frames)


def test_unsupported_signature_scheme() -> None:
    with pytest.raises(LocalProtocolError, match="hmac-md5"):
        Signer(KEY, "hmac-md5")
    with pytest.raises(LocalProtocolError, match="hmac-sha512"):
        Signer(b"", "hmac-sha512")


def test_signer_key_must_be_bytes() -> None:
    with pytest.raises(LocalProtocolError, match="bytes"):
        Signer(KEY_TEXT)  # type: ignore[arg-type]


def test_repr_never_shows_the_key() -> None:
    signer = Signer(KEY)
    for text in (repr(signer), str(signer), repr(Deserializer(signer, ReplayWindow()))):
        assert KEY_TEXT not in text
        assert KEY_TEXT[:8] not in text
    assert repr(signer) == "Signer(scheme='hmac-sha256', enabled=True)"
    assert repr(Signer(b"")) == "Signer(scheme='hmac-sha256', enabled=False)"


# --- replay ---------------------------------------------------------------------------


def test_replay_rejected() -> None:
    receiver = deserializer()
    frames = serialize(make_message(), Signer(KEY))
    receiver.receive_frames(frames)
    with pytest.raises(RemoteProtocolError, match="replay"):
        receiver.receive_frames(frames)
    # Same content with fresh routing identities is still the same signed message.
    with pytest.raises(RemoteProtocolError, match="replay"):
        receiver.receive_frames([b"other-identity", *frames])


def test_replay_detection_can_be_disabled() -> None:
    receiver = Deserializer(Signer(KEY), None)
    frames = serialize(make_message(), Signer(KEY))
    assert receiver.receive_frames(frames) == receiver.receive_frames(frames)


def test_rejected_signature_is_not_recorded() -> None:
    window = ReplayWindow()
    receiver = Deserializer(Signer(KEY), window)
    frames = serialize(make_message(), Signer(KEY))
    bad = list(frames)
    bad[5] = b'{"tampered":true}'
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        receiver.receive_frames(bad)
    assert len(window) == 0
    receiver.receive_frames(frames)
    assert frames[1] in window


def test_replay_window_is_bounded_and_evicts_oldest() -> None:
    window = ReplayWindow(3)
    assert window.capacity == 3
    for sig in (b"a", b"b", b"c"):
        assert window.check_and_record(sig)
    assert not window.check_and_record(b"a")
    assert window.check_and_record(b"d")  # evicts "a"
    assert len(window) == 3
    assert b"a" not in window
    assert window.check_and_record(b"a")  # forgotten, so accepted again (evicts "b")
    assert not window.check_and_record(b"c")
    assert not window.check_and_record(b"d")
    assert window.check_and_record(b"b")

    big = ReplayWindow(100)
    for i in range(10_000):
        assert big.check_and_record(b"%d" % i)
    assert len(big) == 100
    assert b"9999" in big
    assert b"9899" not in big


def test_replay_window_ignores_empty_signatures() -> None:
    window = ReplayWindow(2)
    for _ in range(5):
        assert window.check_and_record(b"")
    assert len(window) == 0


def test_replay_window_defaults_and_validation() -> None:
    assert ReplayWindow().capacity == DEFAULT_REPLAY_CAPACITY == 2048
    with pytest.raises(LocalProtocolError, match="capacity"):
        ReplayWindow(0)


# --- framing errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "identities", "rest"),
    [
        ([DELIMITER], (), []),
        ([DELIMITER, b"sig", b"h"], (), [b"sig", b"h"]),
        ([b"id", DELIMITER, b"sig"], (b"id",), [b"sig"]),
        ([b"a", b"b", DELIMITER, DELIMITER], (b"a", b"b"), [DELIMITER]),  # first one wins
    ],
)
def test_split_identities(
    frames: list[bytes], identities: tuple[bytes, ...], rest: list[bytes]
) -> None:
    assert split_identities(frames) == (identities, rest)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"sig", b"{}", b"{}", b"{}", b"{}"],
        [b"<IDS|MSG> ", b"sig", b"{}", b"{}", b"{}", b"{}"],
        [b"<ids|msg>", b"sig", b"{}", b"{}", b"{}", b"{}"],
    ],
)
def test_missing_delimiter(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError, match="delimiter"):
        split_identities(frames)
    with pytest.raises(RemoteProtocolError, match="delimiter"):
        deserializer().receive_frames(frames)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4])
def test_too_few_frames(count: int) -> None:
    frames = signed_frames(b'{"msg_id":"m","msg_type":"t"}', identities=(b"id",))
    truncated = frames[: 2 + count]  # identity, delimiter, then `count` frames
    with pytest.raises(RemoteProtocolError, match=f"at least 5 frames .* got {count}"):
        deserializer().receive_frames(truncated)


@pytest.mark.parametrize(
    "header",
    [b"[]", b"1", b"null", b'"msg"', b"not json", b"", b'{"msg_id":'],
)
def test_header_not_an_object(header: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="header"):
        deserializer().receive_frames(signed_frames(header))


@pytest.mark.parametrize("parent", [b"[]", b"null", b"", b"nope"])
def test_parent_header_not_an_object(parent: bytes) -> None:
    frames = signed_frames(b'{"msg_id":"m","msg_type":"t"}', parent)
    with pytest.raises(RemoteProtocolError, match="parent header"):
        deserializer().receive_frames(frames)


def test_parent_header_decoding_is_reused_only_for_the_same_bytes() -> None:
    """A flood shares one parent; its decoding is reused, and never a stale one."""
    d = Deserializer(Signer(KEY), None)
    parent_a = b'{"msg_id":"a","msg_type":"execute_request"}'
    parent_b = b'{"msg_id":"b","msg_type":"execute_request"}'
    sequence = [parent_a, parent_a, parent_b, b"{}", parent_a, b"nope", parent_a]
    decoded = []
    for i, parent in enumerate(sequence):
        frames = signed_frames(f'{{"msg_id":"m{i}","msg_type":"stream"}}'.encode(), parent)
        if parent == b"nope":
            with pytest.raises(RemoteProtocolError, match="parent header"):
                d.receive_frames(frames)
            continue
        decoded.append(d.receive_frames(frames).parent_msg_id)
    assert decoded == ["a", "a", "b", None, "a", "a"]


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (b'{"msg_type":"t"}', "msg_id"),
        (b'{"msg_id":null,"msg_type":"t"}', "msg_id"),
        (b'{"msg_id":7,"msg_type":"t"}', "msg_id"),
        (b'{"msg_id":"m"}', "msg_type"),
        (b'{"msg_id":"m","msg_type":["t"]}', "msg_type"),
        (b"{}", "msg_id"),
    ],
)
def test_header_requires_msg_id_and_msg_type(header: bytes, field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=field):
        deserializer().receive_frames(signed_frames(header))


def test_header_lenient_about_other_fields() -> None:
    msg = deserializer().receive_frames(signed_frames(b'{"msg_id":"m","msg_type":"t"}'))
    assert msg.header == {"msg_id": "m", "msg_type": "t"}
    assert msg.parent_header == {}
    assert msg.parent_msg_id is None


def test_content_and_metadata_are_not_parsed() -> None:
    frames = signed_frames(b'{"msg_id":"m","msg_type":"t"}', b"{}", b"meta?", b"content?")
    msg = deserializer().receive_frames(frames)
    assert msg.metadata == b"meta?"
    assert msg.content == b"content?"
    with pytest.raises(orjson.JSONDecodeError):
        msg.content_json()


def test_serialize_rejects_unencodable_header() -> None:
    msg = WireMessage(
        header={"msg_id": "m", "msg_type": "t", "bad": object()},
        parent_header={},
        metadata=b"{}",
        content=b"{}",
    )
    with pytest.raises(LocalProtocolError, match="header"):
        serialize(msg, Signer(KEY))


def test_a_bad_message_does_not_poison_the_deserializer() -> None:
    receiver = deserializer()
    with pytest.raises(RemoteProtocolError):
        receiver.receive_frames([b"garbage"])
    assert receiver.receive_frames(serialize(make_message(), Signer(KEY))) == make_message()


# --- interop with jupyter_client -------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, b""])
def test_jupyter_client_reads_what_we_send(key: bytes) -> None:
    session = Session(key=key, signature_scheme="hmac-sha256")
    msg = make_message(
        identities=(b"kernel-id",),
        buffers=(b"\x00\x01\x02", b"buf2"),
        parent={"msg_id": "p1", "msg_type": "comm_msg"},
    )
    frames = serialize(msg, Signer(key))

    identities, rest = session.feed_identities(frames, copy=True)
    assert identities == [b"kernel-id"]
    decoded = session.deserialize(rest, content=True, copy=True)
    assert decoded["msg_id"] == msg.msg_id
    assert decoded["msg_type"] == "execute_request"
    assert decoded["header"]["session"] == "session-1"
    assert decoded["header"]["username"] == "alice"
    assert decoded["header"]["version"] == "5.3"
    assert decoded["header"]["date"] == FIXED_DATE.replace(microsecond=123000)
    assert decoded["parent_header"] == {"msg_id": "p1", "msg_type": "comm_msg"}
    assert decoded["metadata"] == {"cellId": "c1"}
    assert decoded["content"] == {"code": "print(1)", "silent": False}
    assert [bytes(b) for b in decoded["buffers"]] == [b"\x00\x01\x02", b"buf2"]


@pytest.mark.parametrize("key", [KEY, b""])
def test_we_read_what_jupyter_client_sends(key: bytes) -> None:
    session = Session(key=key, signature_scheme="hmac-sha256", username="bob")
    parent = session.msg_header("execute_request")
    msg = session.msg(
        "stream",
        content={"name": "stdout", "text": "héllo\n"},
        parent=parent,
        metadata={"m": 1},
    )
    frames = session.serialize(msg, ident=[b"id-a", b"id-b"])
    # jupyter_client's send() appends buffers after the signed parts.
    frames += [b"\x00raw", b"more"]

    received = Deserializer(Signer(key), ReplayWindow()).receive_frames(frames)
    assert received.identities == (b"id-a", b"id-b")
    assert received.msg_id == msg["header"]["msg_id"]
    assert received.msg_type == "stream"
    assert received.header["username"] == "bob"
    assert received.parent_msg_id == parent["msg_id"]
    assert received.parent_msg_type == "execute_request"
    assert received.content_json() == {"name": "stdout", "text": "héllo\n"}
    assert received.metadata_json() == {"m": 1}
    assert received.buffers == (b"\x00raw", b"more")
    # And the signature is exactly the one jupyter_client computed.
    assert Signer(key).sign(frames[4:8]) == frames[3]


def test_jupyter_client_rejects_our_tampering_and_vice_versa() -> None:
    session = Session(key=KEY, signature_scheme="hmac-sha256")
    ours = serialize(make_message(), Signer(KEY))
    ours[5] = b'{"code":"evil"}'
    with pytest.raises(ValueError, match="Invalid Signature"):
        session.deserialize(ours[1:])

    theirs = session.serialize(session.msg("kernel_info_request"))
    theirs[5] = b'{"evil":true}'
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        deserializer().receive_frames(theirs)
