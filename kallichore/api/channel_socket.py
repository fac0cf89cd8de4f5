"""Per-session channel sockets for the Unix-socket transport.

On a server started with ``--transport socket``, ``GET
/sessions/{id}/channels`` does not upgrade: it answers with the path of a
Unix socket dedicated to that session (kallichore-behaviour.md section 5.2),
and the client opens its WebSocket there.

* **Path:** ``<socket dir>/kc-<server pid>-<sha256(session id)[:12]>.sock``,
  unique per session whatever characters or length the id has (Kallichore
  uses the id's first 8 characters, so two ids sharing a prefix collide).
  The socket dir is ``--socket-dir`` or the main socket's directory. A path
  over the 104-byte limit is a 400 ``socket_path_too_long``.
* **Lifetime:** bound with mode 0600 on first request, reused by later
  requests for the same session while its listener is alive; closed and
  unlinked on kill, delete and server exit (:meth:`ChannelSockets.close`,
  :meth:`ChannelSockets.close_all`). Closing a listener does not end the
  connection already served through it.
* **Connections:** any number, one after another or overlapping; each new
  one takes the session over from the previous client. No authentication:
  the file mode is the access control, as in Kallichore.
* **Handshake detection** (:func:`open_server_websocket`): a connection that
  starts with ``GET `` is an HTTP/1.1 upgrade (path and headers other than
  ``Sec-WebSocket-Key`` ignored, as Positron asks for ``/api/channels/<id>``);
  anything else, or nothing within :data:`PEEK_TIMEOUT`, is taken as raw
  WebSocket frames from the first byte. Unlike Kallichore, bytes read while
  detecting (past the request head, or the peeked bytes) are kept and fed
  to the WebSocket.

The WebSocket itself is a :class:`wsproto.connection.Connection` driven by
:class:`WsprotoChannelConnection` and served by
:func:`~kallichore.api.websocket.serve_channel`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from kallichore.api.websocket import ChannelClosedError, serve_channel
from kallichore.config import ConfigError, ServerConfig, default_socket_path
from kallichore.errors import BadRequestError, ErrorCode
from kallichore.listener import BoundListener, bind_unix, check_socket_path

if TYPE_CHECKING:
    from kallichore.supervisor.session import KernelSession

__all__ = [
    "HEAD_TIMEOUT",
    "PEEK_TIMEOUT",
    "ChannelSockets",
    "WsprotoChannelConnection",
    "channel_socket_dir",
    "open_server_websocket",
]

logger = logging.getLogger(__name__)

#: Wait for the first 4 bytes of a connection before assuming raw frames.
PEEK_TIMEOUT = 5.0  # seconds
#: Bound on receiving a whole HTTP upgrade request head (from connect).
HEAD_TIMEOUT = 10.0  # seconds
#: Largest HTTP request head accepted on a channel socket.
MAX_HEAD_BYTES = 64 * 1024  # bytes
#: Read size on channel sockets.
RECEIVE_SIZE = 64 * 1024  # bytes
#: Bound on the closing handshake with a client.
CLOSE_TIMEOUT = 2.0  # seconds
#: Largest message a client may send (same as on TCP).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bytes

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")


def channel_socket_dir(config: ServerConfig) -> str:
    """Where per-session sockets go: ``--socket-dir``, else the main socket's directory."""
    if config.socket_dir:
        return os.path.abspath(config.socket_dir)
    main = config.unix_socket or default_socket_path(config.socket_dir, pid=os.getpid())
    return os.path.dirname(os.path.abspath(main))


# ----------------------------------------------------------------- handshake


def _accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())


def _websocket_key(head: bytes) -> bytes | None:
    for line in _LINE_END.split(head)[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"sec-websocket-key":
            return value.strip() or None
    return None


async def open_server_websocket(stream: trio.abc.Stream) -> Connection | None:
    """Detect how a client speaks on a channel socket; return a server WebSocket.

    Returns ``None`` (the caller closes the stream) when the client hung up
    before 4 bytes, sent an upgrade without ``Sec-WebSocket-Key``, or did
    not finish its request head within :data:`HEAD_TIMEOUT`.
    """
    deadline = trio.current_time() + HEAD_TIMEOUT
    buffer = bytearray()
    with trio.move_on_after(PEEK_TIMEOUT):
        while len(buffer) < 4:
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                return None
            buffer += chunk
    if not buffer.startswith(b"GET "):
        return Connection(ConnectionType.SERVER, trailing_data=bytes(buffer))
    with trio.move_on_at(deadline):
        while (end := _HEAD_END.search(buffer)) is None:
            if len(buffer) > MAX_HEAD_BYTES:
                logger.info("Channel socket: request head too large; closing")
                return None
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                return None
            buffer += chunk
        key = _websocket_key(bytes(buffer[: end.start()]))
        if key is None:
            logger.info("Channel socket: upgrade request without Sec-WebSocket-Key; closing")
            return None
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept_key(key) + b"\r\n\r\n"
        )
        return Connection(ConnectionType.SERVER, trailing_data=bytes(buffer[end.end() :]))
    logger.info("Channel socket: no complete request head within %g s; closing", HEAD_TIMEOUT)
    return None


# ---------------------------------------------------------------- connection


class WsprotoChannelConnection:
    """A server-side WebSocket on a byte stream, for :func:`serve_channel`.

    Writes are serialised by a lock (trio-websocket's ``_send``); reading
    happens only in :meth:`receive`, which also answers pings and counts
    pongs whose payload is an 8-byte counter.
    """

    def __init__(
        self, stream: trio.abc.Stream, ws: Connection, *, max_message_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message_bytes = max_message_bytes
        self._send_lock = trio.StrictFIFOLock()
        self._inbox: deque[str | bytes] = deque()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._pongs = 0
        self._eof = False

    @property
    def pongs_received(self) -> int | None:
        return self._pongs

    async def _send(self, event: Event) -> None:
        async with self._send_lock:
            try:
                data = self._ws.send(event)
            except LocalProtocolError as exc:
                raise ChannelClosedError(str(exc)) from None
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelClosedError(str(exc) or type(exc).__name__) from None

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def send_ping(self, payload: bytes) -> None:
        await self._send(Ping(payload=payload))

    async def receive(self) -> str | bytes | None:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            # Keep reading while our own Close awaits its answer (LOCAL_CLOSING).
            if self._eof or self._ws.state in (
                ConnectionState.REMOTE_CLOSING,
                ConnectionState.CLOSED,
            ):
                return None
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._eof = True
                self._ws.receive_data(None)
            else:
                self._ws.receive_data(bytes(data))
            await self._handle_events()

    async def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                self._size += len(event.data)
                if self._size > self._max_message_bytes:
                    with contextlib.suppress(ChannelClosedError):
                        await self._send(CloseConnection(code=1009, reason="message too big"))
                    self._eof = True
                    return
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        self._inbox.append("".join(p for p in self._parts if isinstance(p, str)))
                    else:
                        self._inbox.append(b"")  # binary frames are ignored
                    self._parts.clear()
                    self._size = 0
            elif isinstance(event, Ping):
                with contextlib.suppress(ChannelClosedError):
                    await self._send(event.response())
            elif isinstance(event, Pong):
                if len(event.payload) == 8:
                    self._pongs = max(self._pongs, int.from_bytes(event.payload, "big"))
            elif isinstance(event, CloseConnection):
                # Answered in aclose(), after delivery has stopped.
                return

    async def aclose(self) -> None:
        """Closing handshake (bounded), then close the stream.

        **Cancellation:** runs shielded; bounded by :data:`CLOSE_TIMEOUT`.
        """
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLOSE_TIMEOUT),
            contextlib.suppress(ChannelClosedError),
        ):
            if self._ws.state is ConnectionState.OPEN:
                await self._send(CloseConnection(code=1000))
                # Wait for the client's Close (or EOF); ignore late messages.
                while await self.receive() is not None:
                    pass
            elif self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send(CloseConnection(code=1000))
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


# ------------------------------------------------------------------ listeners


@attrs.define(eq=False)
class _SessionListener:
    session: KernelSession
    bound: BoundListener
    path: str
    # Cancelled to stop accepting.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.scope.cancel()
        trio.lowlevel.notify_closing(self.bound.sock)
        self.bound.close()


@attrs.define(eq=False)
class ChannelSockets:
    """The per-session channel sockets of one server (see module docstring).

    Attributes:
        socket_dir: where the socket files go.
        pid: the server's pid, part of every file name.
    """

    socket_dir: str
    pid: int = attrs.field(factory=os.getpid)
    #: Largest message a client may send before the connection is closed (1009).
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Live listeners by session id.
    _listeners: dict[str, _SessionListener] = attrs.field(factory=dict, init=False)
    # Where accept loops and connections run; set by run().
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    def path_for(self, session_id: str) -> str:
        """The socket path for a session (not checked, not bound)."""
        digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return os.path.join(self.socket_dir, f"kc-{self.pid}-{digest}.sock")

    def open(self, session: KernelSession) -> str:
        """The session's channel socket path, binding the socket if needed.

        Raises:
            BadRequestError: ``socket_path_too_long`` or
                ``domain_socket_error`` (400).
        """
        session_id = session.session_id
        existing = self._listeners.get(session_id)
        if existing is not None:
            if (
                not existing.closed
                and existing.session is session
                and os.path.exists(existing.path)
            ):
                return existing.path
            self.close(session_id)
        path = self.path_for(session_id)
        try:
            check_socket_path(path)
        except ConfigError as exc:
            raise BadRequestError(str(exc), code=ErrorCode.SOCKET_PATH_TOO_LONG) from None
        if self._nursery is None:
            raise BadRequestError(
                "Failed to create Unix domain socket: the server is shutting down",
                code=ErrorCode.DOMAIN_SOCKET_ERROR,
            )
        try:
            bound = bind_unix(path)
        except ConfigError as exc:
            raise BadRequestError(
                f"Failed to create Unix domain socket: {exc}", code=ErrorCode.DOMAIN_SOCKET_ERROR
            ) from None
        listener = _SessionListener(session, bound, path)
        self._listeners[session_id] = listener
        self._nursery.start_soon(self._accept_loop, listener)
        logger.info("%r: channel socket at %s", session, path)
        return path

    def close(self, session_id: str) -> None:
        """Stop accepting on a session's socket and remove the file (no-op if none)."""
        listener = self._listeners.pop(session_id, None)
        if listener is not None:
            listener.close()
            logger.debug("Closed channel socket %s", listener.path)

    def close_all(self) -> None:
        """Close every channel socket (server exit). Idempotent."""
        for session_id in list(self._listeners):
            self.close(session_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery where accept loops and connections run, until cancelled.

        **Cancellation:** ends every channel connection and removes every
        socket file.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.close_all()

    async def _accept_loop(self, listener: _SessionListener) -> None:
        sock = trio.socket.from_stdlib_socket(listener.bound.sock)
        with listener.scope:
            trio_listener = trio.SocketListener(sock)
            while True:
                try:
                    stream = await trio_listener.accept()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                except OSError as exc:
                    logger.warning("Channel socket %s: accept failed: %s", listener.path, exc)
                    await trio.sleep(0.1)
                    continue
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_connection, listener, stream)

    async def _serve_connection(self, listener: _SessionListener, stream: trio.abc.Stream) -> None:
        session = listener.session
        try:
            try:
                ws = await open_server_websocket(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                ws = None
            if ws is None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            conn = WsprotoChannelConnection(stream, ws, max_message_bytes=self.max_message_bytes)
            logger.info("%r: client connected on %s", session, listener.path)
            try:
                await serve_channel(session, conn, socket_path=listener.path)
            finally:
                await conn.aclose()
        except Exception:
            # A connection's failure must never reach the server's nursery.
            logger.exception("%r: channel connection failed", session)
