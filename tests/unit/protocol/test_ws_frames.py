"""FrameReader and the server frame encoders, checked against wsproto.

wsproto plays the client: every frame the reader parses was masked and
encoded by an independent implementation, and every frame the server
encodes is parsed by it. Malformed frames are built by hand.
"""

from __future__ import annotations

import os
import struct

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.events import Message as WsMessage
from wsproto.events import Ping as WsPing
from wsproto.events import Pong as WsPong

from kallichore.protocol.ws_frames import (
    OP_PING,
    OP_PONG,
    Close,
    FrameError,
    FrameReader,
    Message,
    Ping,
    Pong,
    close_frame,
    control_frame,
    text_frame_head,
)

LIMIT = 1 << 20


def client_bytes(*events: object) -> bytes:
    """What a wsproto client sends for ``events`` (masked, as clients must)."""
    ws = Connection(ConnectionType.CLIENT)
    return b"".join(ws.send(event) for event in events)  # type: ignore[arg-type]


def read_all(data: bytes, chunk: int | None = None, limit: int = LIMIT) -> list[object]:
    """Feed ``data`` (all at once, or ``chunk`` bytes at a time); every event."""
    reader = FrameReader(limit)
    events: list[object] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def masked(first: int, payload: bytes, *, length_field: bytes | None = None) -> bytes:
    """A hand-made client frame: first byte, then a (possibly wrong) length and masked payload."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if length_field is None:
        n = len(payload)
        if n < 126:
            length_field = bytes((0x80 | n,))
        elif n < 65536:
            length_field = bytes((0x80 | 126,)) + struct.pack("!H", n)
        else:
            length_field = bytes((0x80 | 127,)) + struct.pack("!Q", n)
    return bytes((first,)) + length_field + mask + body


SIZES_AND_CHUNKS = [
    (size, chunk)
    for size in (0, 1, 125, 126, 65535, 65536, 200_003)
    for chunk in (None, 1, 7, 4096)
    if not (chunk == 1 and size > 70_000)  # byte by byte adds nothing over 7 there
]


@pytest.mark.parametrize(("size", "chunk"), SIZES_AND_CHUNKS)
def test_text_messages_of_every_head_size_in_any_chunking(size: int, chunk: int | None) -> None:
    text = "é" * (size // 4) + "x" * (size - size // 4)  # multi-byte characters too
    data = client_bytes(TextMessage(data=text), TextMessage(data="next"))
    assert read_all(data, chunk) == [Message(text), Message("next")]


def test_binary_message_and_control_frames() -> None:
    data = client_bytes(
        BytesMessage(data=b"\x00\xff" * 100),
        WsPing(payload=b"12345678"),
        WsPong(payload=b"abc"),
        CloseConnection(code=1000, reason="bye"),
    )
    assert read_all(data, 3) == [
        Message(b"\x00\xff" * 100),
        Ping(b"12345678"),
        Pong(b"abc"),
        Close(1000, "bye"),
    ]


def test_fragmented_message_with_a_ping_in_between() -> None:
    data = client_bytes(
        TextMessage(data="héllo, ", message_finished=False),
        WsPing(payload=b"p"),
        TextMessage(data="wor", message_finished=False),
        TextMessage(data="ld", message_finished=True),
    )
    assert read_all(data) == [Ping(b"p"), Message("héllo, world")]


def test_utf8_split_across_fragments_is_fine() -> None:
    encoded = "€".encode()
    data = masked(0x01, encoded[:1]) + masked(0x80, encoded[1:])
    assert read_all(data) == [Message("€")]


def test_close_without_a_code() -> None:
    assert read_all(masked(0x88, b"")) == [Close(1005, "")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (masked(0x81 | 0x40, b"x"), 1002),  # RSV1 without an extension
        (bytes((0x81, 0x01)) + b"x", 1002),  # unmasked client frame
        (masked(0x83, b"x"), 1002),  # reserved data opcode
        (masked(0x8B, b""), 1002),  # reserved control opcode
        (masked(0x09, b""), 1002),  # fragmented ping
        (masked(0x89, b"x" * 126), 1002),  # control frame too long
        (masked(0x80, b"x"), 1002),  # continuation with nothing started
        (masked(0x01, b"a") + masked(0x81, b"b"), 1002),  # new message mid-message
        (masked(0x88, b"\x03"), 1002),  # one-byte close payload
        (masked(0x88, struct.pack("!H", 1005)), 1002),  # report-only code
        (masked(0x88, struct.pack("!H", 999)), 1002),
        (masked(0x88, struct.pack("!H", 2000)), 1002),  # reserved, unassigned
        (masked(0x88, struct.pack("!H", 5000)), 1002),
        (masked(0x81, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (masked(0x88, struct.pack("!H", 1000) + b"\xff"), 1007),  # close reason not UTF-8
        (masked(0x01, "€".encode()[:1]) + masked(0x80, b"x"), 1007),  # broken across frames
    ],
)
def test_protocol_errors_carry_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as info:
        read_all(data)
    assert info.value.code == code


def test_top_bit_of_a_64_bit_length_is_an_error() -> None:
    head = bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 1 << 63)
    with pytest.raises(FrameError) as info:
        read_all(head)
    assert info.value.code == 1002


def test_too_big_is_refused_from_the_header_before_the_payload_arrives() -> None:
    reader = FrameReader(1000)
    frame = masked(0x81, b"x" * 1001)
    reader.feed(frame[:14])  # only the head: no payload is waited for
    with pytest.raises(FrameError) as info:
        reader.next_event()
    assert info.value.code == 1009


def test_too_big_counts_every_fragment_of_a_message() -> None:
    data = masked(0x01, b"x" * 600) + masked(0x80, b"y" * 401)
    with pytest.raises(FrameError) as info:
        read_all(data, limit=1000)
    assert info.value.code == 1009
    # Exactly at the limit is fine, and the count starts again per message.
    ok = masked(0x01, b"x" * 600) + masked(0x80, b"y" * 400) + masked(0x81, b"z" * 1000)
    assert read_all(ok, limit=1000) == [Message("x" * 600 + "y" * 400), Message("z" * 1000)]


def test_control_frames_do_not_count_towards_the_message_size() -> None:
    data = masked(0x01, b"x" * 990) + masked(0x89, b"p" * 100) + masked(0x80, b"y" * 10)
    assert read_all(data, limit=1000) == [Ping(b"p" * 100), Message("x" * 990 + "y" * 10)]


def test_initial_bytes_are_read_first() -> None:
    data = client_bytes(TextMessage(data="one"), TextMessage(data="two"))
    reader = FrameReader(LIMIT, data[:5])
    assert reader.next_event() is None
    reader.feed(data[5:])
    assert reader.next_event() == Message("one")
    assert reader.next_event() == Message("two")
    assert reader.next_event() is None


def test_the_buffer_is_compacted_on_a_long_connection() -> None:
    reader = FrameReader(LIMIT)
    one = client_bytes(TextMessage(data="x" * 1000))
    for _ in range(1000):
        reader.feed(one)
        assert reader.next_event() == Message("x" * 1000)
    assert len(reader._buffer) < 200_000


def parse_server_bytes(data: bytes) -> list[object]:
    ws = Connection(ConnectionType.CLIENT)
    ws.receive_data(data)
    return list(ws.events())


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_heads_parse_in_wsproto(size: int) -> None:
    payload = b"x" * size
    (event,) = parse_server_bytes(text_frame_head(size) + payload)
    assert isinstance(event, WsMessage)
    assert event.data == payload.decode()


def test_control_frames_parse_in_wsproto() -> None:
    events = parse_server_bytes(
        control_frame(OP_PING, b"12345678")
        + control_frame(OP_PONG, b"x")
        + close_frame(1009, "big")
    )
    assert [type(e) for e in events] == [WsPing, WsPong, CloseConnection]
    assert events[0].payload == b"12345678"
    assert events[1].payload == b"x"
    assert (events[2].code, events[2].reason) == (1009, "big")


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "é" * 100)
    assert len(frame) <= 2 + 125
    (event,) = parse_server_bytes(frame)
    assert isinstance(event, CloseConnection)
    assert event.reason == "é" * 61


def test_control_frame_refuses_a_long_payload() -> None:
    with pytest.raises(ValueError, match="at most 125"):
        control_frame(OP_PING, b"x" * 126)
