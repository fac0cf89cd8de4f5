"""_PriorityStream: a request is in flight from its first bytes to the end of its response."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio

from kallichore.api.http import _PriorityStream
from kallichore.server.priority import RequestPriority

HEAD_200 = b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n"


@pytest.fixture
async def stream_and_peer() -> AsyncIterator[tuple[_PriorityStream, trio.SocketStream]]:
    a, b = socket.socketpair()
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    priority = RequestPriority()
    stream = _PriorityStream(ours, priority)
    yield stream, peer
    await stream.aclose()
    await peer.aclose()
    priority.close()


def in_flight(stream: _PriorityStream) -> bool:
    return stream._priority.in_flight > 0


async def request(stream: _PriorityStream, peer: trio.SocketStream) -> None:
    await peer.send_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
    await stream.receive_some(65536)


async def write(stream: _PriorityStream, *pieces: bytes) -> None:
    """Write ``pieces`` one ``send_all`` each, as hypercorn does."""
    for piece in pieces:
        await stream.send_all(piece)


@pytest.fixture
async def answering(
    stream_and_peer: tuple[_PriorityStream, trio.SocketStream],
) -> tuple[_PriorityStream, trio.SocketStream]:
    """The pair, with a request read and its response not yet written."""
    stream, peer = stream_and_peer
    await request(stream, peer)
    return stream, peer


async def test_length_delimited_response_ends_at_hypercorns_empty_write(
    stream_and_peer: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, peer = stream_and_peer
    assert not in_flight(stream)
    await request(stream, peer)
    assert in_flight(stream)
    await stream.send_all(HEAD_200)
    assert in_flight(stream), "the head alone is not the response"
    await stream.send_all(b"{}")
    assert in_flight(stream)
    await stream.send_all(b"")  # h11's end of message
    assert not in_flight(stream)
    # The next request on the kept-alive connection is marked again.
    await request(stream, peer)
    assert in_flight(stream)


async def test_chunked_response_ends_at_the_last_chunk(
    answering: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, _peer = answering
    await stream.send_all(b"HTTP/1.1 200 \r\ntransfer-encoding: chunked\r\n\r\n")
    await stream.send_all(b"5\r\n0\r\n\r\n\r\n")  # a chunk whose data looks like an end
    assert in_flight(stream)
    await stream.send_all(b"0\r\n\r\n")
    assert not in_flight(stream)


async def test_informational_head_is_followed_by_the_response(
    answering: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, _peer = answering
    await stream.send_all(b"HTTP/1.1 100 \r\n\r\n")
    assert in_flight(stream)
    await write(stream, HEAD_200, b"{}", b"")
    assert not in_flight(stream)


async def test_an_upgrade_ends_the_request_and_marks_nothing_after(
    answering: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, peer = answering
    await stream.send_all(b"HTTP/1.1 101 \r\nupgrade: websocket\r\n\r\n")
    assert not in_flight(stream)
    await peer.send_all(b"\x81\x02hi")  # WebSocket traffic is not a request
    await stream.receive_some(65536)
    assert not in_flight(stream)
    assert not stream._priority._watched, "an upgraded connection is not watched for arrivals"


async def test_writes_that_are_not_http1_end_the_request_at_once(
    answering: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, _peer = answering
    await stream.send_all(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")  # an HTTP/2 SETTINGS frame
    assert not in_flight(stream)


async def test_a_failed_write_ends_the_request(
    answering: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, peer = answering
    await peer.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(HEAD_200 * 100_000)  # more than a socket buffer holds
    assert not in_flight(stream)


async def test_the_connection_is_watched_until_it_closes(
    stream_and_peer: tuple[_PriorityStream, trio.SocketStream],
) -> None:
    stream, _ = stream_and_peer
    priority = stream._priority
    assert priority._watched
    await stream.aclose()
    assert not priority._watched
