"""Per-session channel sockets: the handshake detection, the paths, the listeners' lifetime.

The handshake runs on in-memory streams under the autojump clock; the
listeners bind real Unix sockets in a short private directory. No kernel and
no channel is served: a connection that fails its handshake never reaches
the session, which is all a stand-in session here can take.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from pathlib import Path

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from kallichore.channels.channel_socket import (
    HEAD_TIMEOUT,
    MAX_HEAD_BYTES,
    PEEK_TIMEOUT,
    ChannelSockets,
    accept_websocket,
    channel_socket_dir,
)
from kallichore.config import ServerConfig
from kallichore.errors import BadRequestError, ErrorCode

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


async def handshake(*chunks: bytes, hang_up: bool = False) -> tuple[bytes | None, bytes]:
    """What :func:`accept_websocket` returns for a client sending ``chunks``, and its reply."""
    client, server = trio.testing.memory_stream_pair()
    for chunk in chunks:
        await client.send_all(chunk)
    if hang_up:
        await client.aclose()
    result = await accept_websocket(server)
    reply = b""
    if not hang_up:
        with trio.move_on_after(0.01):
            while data := await client.receive_some():
                reply += data
    return result, reply


async def test_raw_frames_are_kept_from_the_first_byte() -> None:
    frame = b"\x81\x05hello"
    result, reply = await handshake(frame)
    assert result == frame
    assert reply == b"", "no HTTP answer to a client that speaks WebSocket at once"


async def test_an_upgrade_is_answered_and_bytes_after_it_are_kept() -> None:
    request = b"GET /api/channels/s1 HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: " + KEY
    result, reply = await handshake(request, b"\r\n\r\n\x81\x00")
    assert result == b"\x81\x00"
    accept = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert reply.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in reply


async def test_an_upgrade_with_bare_newlines_is_accepted() -> None:
    result, reply = await handshake(b"GET / HTTP/1.1\nSec-WebSocket-Key: " + KEY + b"\n\n")
    assert result == b""
    assert reply.startswith(b"HTTP/1.1 101")


async def test_an_upgrade_without_a_key_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    result, reply = await handshake(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (result, reply) == (None, b"")
    assert "without Sec-WebSocket-Key" in caplog.text


async def test_a_client_that_hangs_up_early_is_dropped() -> None:
    assert (await handshake(b"GE", hang_up=True))[0] is None
    assert (await handshake(b"GET / HTTP/1.1\r\n", hang_up=True))[0] is None


async def test_a_head_past_the_limit_is_closed() -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 1)
    assert (await handshake(head))[0] is None


async def test_silence_is_taken_as_raw_frames(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    client, server = trio.testing.memory_stream_pair()
    assert await accept_websocket(server) == b""
    assert trio.current_time() - start == pytest.approx(PEEK_TIMEOUT)
    await client.aclose()


async def test_a_head_that_never_ends_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\n")
    assert await accept_websocket(server) is None
    assert trio.current_time() - start == pytest.approx(HEAD_TIMEOUT)
    await client.aclose()


def test_the_socket_dir_is_the_flag_else_the_main_sockets_dir(tmp_path: Path) -> None:
    assert channel_socket_dir(ServerConfig(socket_dir=str(tmp_path))) == str(tmp_path)
    main = tmp_path / "main.sock"
    assert channel_socket_dir(ServerConfig(unix_socket=str(main))) == str(tmp_path)


def test_paths_are_unique_per_session_and_short() -> None:
    sockets = ChannelSockets("/run/kc", pid=42)
    ids = ["python-1234", "python-1235", "ü" * 300, "a/../b"]
    paths = [sockets.path_for(i) for i in ids]
    assert len(set(paths)) == len(ids), "ids sharing a prefix must not collide"
    assert all(p.startswith("/run/kc/kc-42-") and p.endswith(".sock") for p in paths)
    assert all(os.path.dirname(p) == "/run/kc" for p in paths), "an id never leaves the dir"
    assert sockets.path_for("python-1234") == paths[0]
    assert {len(p) for p in paths} == {len("/run/kc/kc-42-") + 12 + len(".sock")}


# ------------------------------------------------------------------ listeners


@attrs.define(eq=False)
class StandInSession:
    """All :meth:`ChannelSockets.open` uses of a session."""

    session_id: str
    log: logging.LoggerAdapter[logging.Logger] = attrs.field(
        factory=lambda: logging.LoggerAdapter(logging.getLogger("test"))
    )


@pytest.fixture
async def sockets(nursery: trio.Nursery, sock_dir: Path) -> ChannelSockets:
    """Running channel sockets in ``sock_dir``."""
    sockets = ChannelSockets(str(sock_dir))
    await nursery.start(sockets.run)
    return sockets


async def test_open_binds_a_private_socket_once(sockets: ChannelSockets) -> None:
    session = StandInSession("s1")
    path = sockets.open(session)  # type: ignore[arg-type]
    assert path == sockets.path_for("s1")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await trio.lowlevel.checkpoint()  # the accept loop starts
    assert sockets.open(session) == path, "reused while its listener lives"  # type: ignore[arg-type]
    sockets.close("s1")
    assert not await trio.Path(path).exists()
    sockets.close("s1")  # a second close is a no-op


async def test_a_socket_closed_before_its_accept_loop_ran_is_harmless(
    sockets: ChannelSockets,
) -> None:
    """A kill or delete in the same scheduler pass as the GET that bound the socket."""
    path = sockets.open(StandInSession("s1"))  # type: ignore[arg-type]
    sockets.close("s1")
    await trio.sleep(0.01)  # the accept loop runs, finds its listener closed, and ends
    assert not await trio.Path(path).exists()
    assert sockets.open(StandInSession("s1")) == path  # type: ignore[arg-type]


async def test_a_failed_handshake_leaves_the_listener_up(sockets: ChannelSockets) -> None:
    path = sockets.open(StandInSession("s1"))  # type: ignore[arg-type]
    for _ in range(2):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
            assert await stream.receive_some() == b"", "closed without an answer"


async def test_cancelling_run_removes_every_socket(sock_dir: Path) -> None:
    sockets = ChannelSockets(str(sock_dir))
    async with trio.open_nursery() as nursery:
        await nursery.start(sockets.run)
        paths = [sockets.open(StandInSession(s)) for s in ("a", "b")]  # type: ignore[arg-type]
        assert all([await trio.Path(p).exists() for p in paths])
        nursery.cancel_scope.cancel()
    assert not any([await trio.Path(p).exists() for p in paths])
    with pytest.raises(BadRequestError) as info:
        sockets.open(StandInSession("c"))  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.DOMAIN_SOCKET_ERROR


async def test_a_path_over_the_limit_is_socket_path_too_long(nursery: trio.Nursery) -> None:
    sockets = ChannelSockets("/tmp/" + "d" * 120)
    await nursery.start(sockets.run)
    with pytest.raises(BadRequestError) as info:
        sockets.open(StandInSession("s1"))  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.SOCKET_PATH_TOO_LONG
    assert info.value.http_status == 400
