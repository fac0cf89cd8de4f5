"""Per-session channel sockets for the Unix-socket transport.

On a server started with ``--transport socket``, ``GET
/sessions/{id}/channels`` does not upgrade: it answers with the path of a
Unix socket dedicated to that session (as Kallichore does),
and the client opens its WebSocket there.

* **Path:** ``<socket dir>/kc-<server pid>-<sha256(session id)[:12]>.sock``,
  unique per session whatever characters or length the id has (Kallichore
  uses the id's first 8 characters, so two ids sharing a prefix collide).
  The socket dir is ``--socket-dir`` or the main socket's directory. A path
  over the 104-byte limit is a 400 ``socket_path_too_long``.
* **Lifetime:** bound with mode 0600 (:mod:`kallichore.unix_socket`) on
  first request, reused by later requests for the same session while its
  listener is alive; closed and unlinked when the session's kernel is killed
  or shut down and when the session is deleted, whoever asked (the session
  registry calls :meth:`ChannelSockets.close`), and on server exit
  (:meth:`ChannelSockets.close_all`). Closing a listener does not end the
  connection already served through it.
* **Connections:** any number, one after another or overlapping; each new
  one takes the session over from the previous client. No authentication:
  the file mode is the access control, as in Kallichore.
* **Handshake detection** (:func:`accept_websocket`): a connection that
  starts with ``GET `` is an HTTP/1.1 upgrade (path and headers other than
  ``Sec-WebSocket-Key`` ignored, as Positron asks for ``/api/channels/<id>``);
  anything else, or nothing within :data:`PEEK_TIMEOUT`, is taken as raw
  WebSocket frames from the first byte. Unlike Kallichore, bytes read while
  detecting (past the request head, or the peeked bytes) are kept and fed
  to the WebSocket.

The WebSocket itself is a
:class:`~kallichore.channels.stream_websocket.StreamChannelConnection` (shared
with TCP channel upgrades) served by
:func:`~kallichore.channels.bridge.serve_channel`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import time
from typing import TYPE_CHECKING

import attrs
import trio

from kallichore.channels.bridge import serve_channel
from kallichore.channels.stream_websocket import (
    MAX_MESSAGE_BYTES,
    RECEIVE_SIZE,
    StreamChannelConnection,
    upgrade_response,
)
from kallichore.config import ConfigError, ServerConfig, default_socket_path
from kallichore.errors import BadRequestError, ErrorCode
from kallichore.logs import log_access
from kallichore.unix_socket import bind_unix_socket, check_socket_path, remove_socket_file

if TYPE_CHECKING:
    from kallichore.supervisor.session import KernelSession

__all__ = [
    "HEAD_TIMEOUT",
    "PEEK_TIMEOUT",
    "ChannelSockets",
    "accept_websocket",
    "channel_socket_dir",
]

logger = logging.getLogger(__name__)

#: Wait for the first 4 bytes of a connection before assuming raw frames.
PEEK_TIMEOUT = 5.0  # seconds
#: Bound on receiving a whole HTTP upgrade request head (from connect).
HEAD_TIMEOUT = 10.0  # seconds
#: Largest HTTP request head accepted on a channel socket.
MAX_HEAD_BYTES = 64 * 1024  # bytes
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")


def channel_socket_dir(config: ServerConfig) -> str:
    """Where per-session sockets go: ``--socket-dir``, else the main socket's directory."""
    if config.socket_dir:
        return os.path.abspath(config.socket_dir)
    main = config.unix_socket or default_socket_path(config.socket_dir, pid=os.getpid())
    return os.path.dirname(os.path.abspath(main))


# ----------------------------------------------------------------- handshake


def _websocket_key(head: bytes) -> bytes | None:
    for line in _LINE_END.split(head)[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"sec-websocket-key":
            return value.strip() or None
    return None


async def accept_websocket(stream: trio.abc.Stream) -> bytes | None:
    """Detect how a client speaks on a channel socket and complete its handshake.

    Returns the bytes the client sent past its handshake (the start of its
    WebSocket frames), or ``None`` (the caller closes the stream) when the
    client hung up before 4 bytes, sent an upgrade without
    ``Sec-WebSocket-Key``, or did not finish its request head within
    :data:`HEAD_TIMEOUT`.
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
        return bytes(buffer)
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
        await stream.send_all(upgrade_response(key))
        return bytes(buffer[end.end() :])
    logger.info("Channel socket: no complete request head within %g s; closing", HEAD_TIMEOUT)
    return None


# ------------------------------------------------------------------ listeners


@attrs.define(eq=False)
class _SessionListener:
    session: KernelSession
    sock: socket.socket
    path: str
    # Cancelled to stop accepting.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.scope.cancel()
        trio.lowlevel.notify_closing(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        remove_socket_file(self.path)


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
            sock = bind_unix_socket(path)
        except ConfigError as exc:
            raise BadRequestError(
                f"Failed to create Unix domain socket: {exc}", code=ErrorCode.DOMAIN_SOCKET_ERROR
            ) from None
        listener = _SessionListener(session, sock, path)
        self._listeners[session_id] = listener
        self._nursery.start_soon(self._accept_loop, listener)
        session.log.info("channel socket at %s", path)
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
        if listener.closed:  # closed (kill, delete) before this task first ran
            return
        sock = trio.socket.from_stdlib_socket(listener.sock)
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
        start = time.perf_counter()
        try:
            try:
                initial = await accept_websocket(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                initial = None
            if initial is None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            conn = StreamChannelConnection(
                stream, initial=initial, max_message_bytes=self.max_message_bytes
            )
            session.log.info("client connected on %s", listener.path)
            try:
                await serve_channel(session, conn, socket_path=listener.path)
            finally:
                await conn.aclose()
                log_access(
                    "GET",
                    listener.path,
                    101,
                    time.perf_counter() - start,
                    websocket=True,
                    session_id=session.session_id,
                )
        except Exception:
            # A connection's failure must never reach the server's nursery.
            session.log.exception("channel connection failed")
