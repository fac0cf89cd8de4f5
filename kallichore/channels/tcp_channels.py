"""Channel WebSockets on the TCP transport, served beside hypercorn.

Every new TCP connection is offered to :class:`TcpChannelUpgrades` before
hypercorn sees it (the ``take_connection`` hook of
:func:`kallichore.api.http.serve_http`). It reads the first request head.
If that is a WebSocket upgrade of ``GET /sessions/{id}/channels`` that the
app would accept (a valid token, a session that exists, a well-formed RFC
6455 request), it answers ``101`` itself and runs the channel bridge on the
stream with :class:`~kallichore.channels.stream_websocket.StreamChannelConnection`,
the same connection class as the per-session Unix sockets: batched writes,
one system call per batch, and the 8-byte-counter pings of Kallichore.

Everything else goes to hypercorn with the bytes already read put back, so
every refusal (401, 400 ``KS-1``, 404, a malformed request) still comes from
the one app, and an upgrade that arrives later on a kept-alive connection is
still served, by the Quart route (one ASGI event per message).

The look costs nothing for other requests: a first read that does not start
with ``GET /sessions/`` is handed over at once.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import attrs
import h11
import trio

from kallichore.api.access_log import log_access, masked_query
from kallichore.channels.bridge import serve_channel
from kallichore.channels.stream_websocket import (
    RECEIVE_SIZE,
    StreamChannelConnection,
    upgrade_response,
)
from kallichore.errors import SessionNotFoundError
from kallichore.logs import SessionLog
from kallichore.protocol.auth import authorized

if TYPE_CHECKING:
    from kallichore.server.root import Server

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD_BYTES", "TcpChannelUpgrades"]

logger = logging.getLogger(__name__)

#: Bound on receiving the first request head before hypercorn gets the connection.
HEAD_TIMEOUT = 10.0  # seconds
#: A longer head is handed to hypercorn (which refuses it).
MAX_HEAD_BYTES = 64 * 1024  # bytes

_PREFIX = b"GET /sessions/"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHANNELS_PATH = re.compile(r"/sessions/([^/]+)/channels")


class _ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first reads return the bytes already taken from it.

    Has ``socket`` (hypercorn reads the peer address from it) and no
    ``do_handshake`` (hypercorn takes that to mean "not TLS").
    """

    def __init__(self, stream: trio.SocketStream, data: bytes) -> None:
        self._stream = stream
        self._data = data
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._data:
            return bytes(await self._stream.receive_some(max_bytes))
        await trio.lowlevel.checkpoint()
        size = len(self._data) if max_bytes is None else max_bytes
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@attrs.define(eq=False)
class TcpChannelUpgrades:
    """Takes channel upgrades off the TCP listener (see module docstring)."""

    server: Server

    async def __call__(self, stream: trio.SocketStream) -> trio.abc.Stream | None:
        """Serve ``stream`` if it is an acceptable channel upgrade; else give it back.

        Returns ``None`` once the channel connection has ended (the stream is
        closed then), or a stream for hypercorn that replays what was read.

        **Cancellation:** the stream is closed.
        """
        try:
            buffer = await _read_first_head(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            buffer = bytearray()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        upgrade = self._acceptable_upgrade(buffer)
        if upgrade is None:
            return _ReplayStream(stream, bytes(buffer))
        session_id, key, head_end, target = upgrade
        await self._serve(stream, session_id, key, bytes(buffer[head_end:]), target)
        return None

    def _acceptable_upgrade(self, buffer: bytearray) -> tuple[str, bytes, int, str] | None:
        """``(session id, Sec-WebSocket-Key, end of head, target for the log)``
        if the app would accept it; the target's query values are masked."""
        if not buffer.startswith(_PREFIX) or (end := _HEAD_END.search(buffer)) is None:
            return None
        parser = h11.Connection(h11.SERVER)
        try:
            parser.receive_data(bytes(buffer[: end.end()]))
            request = parser.next_event()
        except h11.RemoteProtocolError:
            return None
        if not isinstance(request, h11.Request):
            return None
        raw_path, _, query = request.target.decode("ascii", "replace").partition("?")
        match = _CHANNELS_PATH.fullmatch(unquote(raw_path))
        if match is None:
            return None
        headers: dict[bytes, bytes] = {}
        for name, value in request.headers:
            headers[name] = headers[name] + b", " + value if name in headers else value
        connection_tokens = {t.strip() for t in headers.get(b"connection", b"").lower().split(b",")}
        key = headers.get(b"sec-websocket-key", b"").strip()
        if (
            b"websocket" not in headers.get(b"upgrade", b"").lower()
            or b"upgrade" not in connection_tokens
            or headers.get(b"sec-websocket-version", b"").strip() != b"13"
            or not key
        ):
            return None
        authorization = headers.get(b"authorization")
        if not authorized(
            authorization.decode("latin-1") if authorization is not None else None,
            self.server.config.token,
        ):
            return None
        session_id = match.group(1)
        try:
            self.server.registry.get(session_id)
        except SessionNotFoundError:
            return None
        return session_id, key, end.end(), raw_path + masked_query(query.encode())

    async def _serve(
        self, stream: trio.SocketStream, session_id: str, key: bytes, trailing: bytes, target: str
    ) -> None:
        start = time.perf_counter()
        try:
            try:
                session = self.server.registry.get(session_id)
                await stream.send_all(upgrade_response(key))
            except (SessionNotFoundError, trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            conn = StreamChannelConnection(
                stream, initial=trailing, max_message_bytes=self.server.config.max_message_bytes
            )
            session.log.info("client connected over TCP")
            try:
                await serve_channel(session, conn)
            finally:
                await conn.aclose()
                log_access(
                    "GET",
                    target,
                    101,
                    time.perf_counter() - start,
                    websocket=True,
                    session_id=session_id,
                )
        except Exception:
            # A connection's failure must never reach the server's nursery.
            SessionLog(logger, session_id).exception("channel connection failed")


async def _read_first_head(stream: trio.SocketStream) -> bytearray:
    """Read until the first request head is complete, or clearly not a channel upgrade.

    Stops after the first read that rules out ``GET /sessions/``, at the end
    of the head, at :data:`MAX_HEAD_BYTES`, at EOF or after
    :data:`HEAD_TIMEOUT`; returns everything read.
    """
    buffer = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT):
        while len(buffer) <= MAX_HEAD_BYTES:
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                break
            buffer += chunk
            if not (buffer.startswith(_PREFIX) or _PREFIX.startswith(buffer)):
                break
            if len(buffer) >= len(_PREFIX) and _HEAD_END.search(buffer) is not None:
                break
    return buffer
