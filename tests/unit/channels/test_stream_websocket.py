"""StreamChannelConnection over a real socket pair: batched writes, reading, closing.

The client side is wsproto, so every byte the connection writes by hand is
checked by an independent parser, and every frame it reads was made by one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from kallichore.channels.bridge import ChannelClosedError
from kallichore.channels.stream_websocket import WRITE_CHUNK, StreamChannelConnection

_STREAMS: list[trio.SocketStream] = []


@pytest.fixture(autouse=True)
def close_streams() -> Iterator[None]:
    # Synchronous (pytest-trio does not run async autouse fixtures), so the
    # sockets are closed without trio.
    yield
    while _STREAMS:
        fd = _STREAMS.pop().socket.detach()  # (outside trio: no notify_closing)
        if fd >= 0:
            os.close(fd)


async def pair() -> tuple[StreamChannelConnection, trio.SocketStream]:
    a, b = (trio.SocketStream(s) for s in trio.socket.socketpair())
    _STREAMS.extend((a, b))
    return StreamChannelConnection(a), b


class Peer:
    """The client end: reads everything, parses it with wsproto."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = Connection(ConnectionType.CLIENT)
        self.texts: list[str] = []
        self.parts: list[str] = []
        self.pings: list[bytes] = []

    async def read_until(self, count: int) -> None:
        """Read until ``count`` text messages (and whatever came with them) arrived."""
        while len(self.texts) < count:
            data = await self.stream.receive_some(1 << 20)
            assert data, "EOF"
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.parts.append(event.data)
                    if event.message_finished:
                        self.texts.append("".join(self.parts))
                        self.parts.clear()
                elif isinstance(event, Ping):
                    self.pings.append(bytes(event.payload))
                elif isinstance(event, CloseConnection):
                    raise AssertionError(f"closed: {event}")


def frame(i: int, size: int) -> bytes:
    head = f'{{"i":{i},"pad":"'.encode()
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def send_all(conn: StreamChannelConnection, frames: list[bytes]) -> None:
    sent = 0
    while sent < len(frames):
        sent += await conn.send_frames(frames[sent:])
    await conn.flush()


@pytest.mark.parametrize("size", [2, 125, 126, 65535, 65536, 300_000])
async def test_frame_lengths_at_every_head_size(size: int) -> None:
    conn, stream = await pair()
    peer = Peer(stream)
    frames = [frame(i, size) for i in range(3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all, conn, frames)
        await peer.read_until(3)
    assert [t.encode() for t in peer.texts] == frames


async def test_a_batch_is_cut_after_the_write_chunk() -> None:
    conn, stream = await pair()
    frames = [frame(i, 1000) for i in range(WRITE_CHUNK // 1000 * 3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Peer(stream).read_until, len(frames))
        first = await conn.send_frames(frames)
        assert 0 < first < len(frames)
        assert first * 1000 >= WRITE_CHUNK
        await send_all(conn, frames[first:])


async def test_short_write_is_finished_before_anything_else() -> None:
    """When the socket takes part of a batch, the rest goes out first, whole."""
    conn, stream = await pair()
    big = [frame(i, 200_000) for i in range(4)]  # more than a socket buffer holds
    committed = await conn.send_frames(big)
    assert committed >= 1
    peer = Peer(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, committed + 1)
        await conn.send_ping(b"\x00" * 7 + b"\x01")  # a control frame waits its turn
        await send_all(conn, [b'{"after":true}'])
    assert [t.encode() for t in peer.texts[:committed]] == big[:committed]
    assert peer.texts[committed] == '{"after":true}'
    assert peer.pings == [b"\x00" * 7 + b"\x01"]


async def test_cancelled_send_commits_nothing() -> None:
    conn, stream = await pair()
    committed = 0
    with trio.move_on_after(0.2) as scope:
        while True:  # nobody reads: the socket fills, then a send blocks
            committed += await conn.send_frames([frame(committed, 50_000)])
    assert scope.cancelled_caught
    peer = Peer(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, committed + 1)
        await send_all(conn, [b'{"last":true}'])
    assert [t.encode() for t in peer.texts[:committed]] == [
        frame(i, 50_000) for i in range(committed)
    ]
    assert peer.texts[committed:] == ['{"last":true}']


async def test_no_frames_after_close_or_on_a_broken_socket() -> None:
    conn, stream = await pair()
    await stream.aclose()

    async def keep_sending() -> None:
        for _ in range(100):  # the first writes may still land in the buffer
            await conn.send_frames([frame(0, 100_000)])

    with pytest.raises(ChannelClosedError):
        await keep_sending()
    conn2, stream2 = await pair()
    with trio.move_on_after(0.5):
        await conn2.aclose()  # sends Close; we never answer
    with pytest.raises(ChannelClosedError):
        await conn2.send_frames([b"{}"])
    await stream2.aclose()


async def test_write_now_writes_at_once_or_not_at_all() -> None:
    """The session's synchronous path: whole batches in order, 0 when it would wait."""
    conn, stream = await pair()
    assert conn.can_write_now
    assert conn.write_now([b'{"a":1}', b'{"b":2}']) == 2
    assert not conn.needs_flush()
    # Fill the socket: write_now never blocks; what it commits is finished by flush().
    committed = 0
    while True:
        n = conn.write_now([frame(committed, 100_000)])
        if not n:
            break
        committed += n
        if conn.needs_flush():
            assert conn.write_now([b"{}"]) == 0, "nothing may overtake the unwritten tail"
            break
    peer = Peer(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 2 + committed + 1)
        await conn.flush()
        assert not conn.needs_flush()
        await send_all(conn, [b'{"last":true}'])
    assert peer.texts[:2] == ['{"a":1}', '{"b":2}']
    assert [t.encode() for t in peer.texts[2 : 2 + committed]] == [
        frame(i, 100_000) for i in range(committed)
    ]
    assert peer.texts[-1] == '{"last":true}'


async def test_write_now_waits_for_a_writer_holding_the_lock() -> None:
    conn, stream = await pair()
    async with conn._send_lock:
        assert conn.write_now([b"{}"]) == 0
    await stream.aclose()
    for _ in range(100):  # a broken socket: 0 once the buffer is gone, never an error
        if not conn.write_now([frame(0, 100_000)]):
            break
    assert conn.write_now([b"{}"]) == 0


# -- reading the client's frames ---------------------------------------------------


async def read_events(stream: trio.SocketStream, ws: Connection) -> list[object]:
    """Everything the server writes until it closes the stream."""
    events: list[object] = []
    while data := await stream.receive_some(1 << 16):
        ws.receive_data(data)
        events.extend(ws.events())
    return events


async def test_receive_answers_pings_counts_pongs_and_returns_texts() -> None:
    conn, stream = await pair()
    client = Connection(ConnectionType.CLIENT)
    await stream.send_all(
        client.send(Ping(payload=b"abc"))
        + client.send(Pong(payload=(5).to_bytes(8, "big")))
        + client.send(TextMessage(data="hé", message_finished=False))
        + client.send(TextMessage(data="llo"))
        + client.send(BytesMessage(data=b"\x00" * 10))
    )
    assert await conn.receive() == "héllo"
    assert await conn.receive() == b""  # binary: ignored by the bridge, so not carried
    assert conn.pongs_received == 5
    client.receive_data(await stream.receive_some(1 << 16))
    (pong,) = list(client.events())
    assert isinstance(pong, Pong)
    assert pong.payload == b"abc"


async def test_bytes_read_with_the_handshake_come_first() -> None:
    a, b = (trio.SocketStream(s) for s in trio.socket.socketpair())
    _STREAMS.extend((a, b))
    client = Connection(ConnectionType.CLIENT)
    first = client.send(TextMessage(data="first"))
    conn = StreamChannelConnection(a, initial=first[:3])
    await b.send_all(first[3:] + client.send(TextMessage(data="second")))
    assert await conn.receive() == "first"
    assert await conn.receive() == "second"


async def test_a_client_close_is_answered_once_delivery_stops() -> None:
    conn, stream = await pair()
    client = Connection(ConnectionType.CLIENT)
    await stream.send_all(client.send(CloseConnection(code=1001, reason="leaving")))
    assert await conn.receive() is None
    with pytest.raises(ChannelClosedError):
        await conn.send_frames([b"{}"])  # no data after the client's close
    await conn.aclose()
    events = await read_events(stream, client)
    assert [type(e) for e in events] == [CloseConnection]
    assert events[0].code == 1000


async def test_aclose_waits_for_the_clients_close() -> None:
    conn, stream = await pair()
    client = Connection(ConnectionType.CLIENT)

    async def answer() -> None:
        client.receive_data(await stream.receive_some(1 << 16))
        (close,) = list(client.events())
        assert isinstance(close, CloseConnection)
        assert close.code == 1000
        # A message sent before the client saw our close is read and dropped.
        late = Connection(ConnectionType.CLIENT).send(TextMessage(data="late"))
        await stream.send_all(late + client.send(close.response()))

    with trio.fail_after(1):  # well inside CLOSE_TIMEOUT: the answer ends the wait
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            await conn.aclose()
    assert await stream.receive_some(1) == b""


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x81\x02hi", 1002),  # unmasked
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # not UTF-8
        (b"\x81\xfe\x01\x00" + b"\x00" * 4 + b"x" * 256, 1009),  # over the limit of 100
    ],
)
async def test_a_broken_frame_closes_with_its_code_at_once(data: bytes, code: int) -> None:
    a, b = (trio.SocketStream(s) for s in trio.socket.socketpair())
    _STREAMS.extend((a, b))
    conn = StreamChannelConnection(a, max_message_bytes=100)
    await b.send_all(data)
    assert await conn.receive() is None
    with trio.fail_after(1):  # no closing handshake with a client that broke the protocol
        await conn.aclose()
    events = await read_events(b, Connection(ConnectionType.CLIENT))
    assert [type(e) for e in events] == [CloseConnection]
    assert events[0].code == code
