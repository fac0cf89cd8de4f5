"""Serving the app with Hypercorn on a socket we bound ourselves.

:func:`serve_http` is Hypercorn's trio worker loop cut down to one plain
listener, plus a hook that lets channel WebSocket upgrades on TCP be served
outside the ASGI stack (:mod:`kallichore.channels.tcp_channels`).

Two adjustments to Hypercorn's HTTP/1.1 output, both needed by real clients
of Kallichore and both correct HTTP:

* **Reason phrases.** Hypercorn writes ``HTTP/1.1 200 \\r\\n`` (an empty
  reason). Kallichore's clients and tests look for ``HTTP/1.1 200 OK``, so
  responses get the standard phrase for their status.
* **One write for head and body.** A client that reads a small response with
  a single ``read()`` (Kallichore's socket tests do) must find the status
  line and the body together. The response head is held back until the first
  body chunk (or the end of the message) and sent with it.

Both are applied by wrapping ``H11Protocol._send_h11_event``, the one place
Hypercorn turns h11 events into bytes.

A third adjustment fixes a fault between Quart-Trio 0.12 and Hypercorn 0.18:
when a response ends a connection (``Connection: close``), Hypercorn closes
the stream from the task that sent the response, which Quart-Trio cancels as
soon as the response is complete, so the close never happened and the client
waited for EOF forever. ``TCPServer._close`` now runs shielded, with its own
bound.

A fourth keeps one client's protocol error inside its connection. Once
Hypercorn has seen a WebSocket upgrade request, the connection cannot parse
HTTP again, so a refused upgrade now says ``Connection: close`` and the
connection ends with it. Bytes that arrive before the refusal is written make
Hypercorn start a second response to the same request; that response is
dropped. Any other event h11 refuses closes the connection instead of
unwinding it.

A fifth makes WebSockets served by hypercorn (a channel upgrade on a
kept-alive connection) send a Close frame with 1007 or 1009 before dropping
the connection, as the other channel paths do
(:mod:`kallichore.api.hypercorn_ws`).

A sixth frees a connection's descriptor as soon as its client has gone.
Hypercorn's connection task waits for its keep-alive timer (5 s) even after
the client closed an idle connection (one that never sent a request, or
between requests), so each such connection held a descriptor 5 s longer
than needed -- at the open-file limit, 5 s more for a waiting request.
Once the read loop has ended, the timer is stopped.

The wrappers are installed once, are idempotent, and change nothing else.
Whatever still escapes one connection's handling is logged and ends that
connection in :func:`serve_http`; it never reaches the server's nursery.
"""

from __future__ import annotations

import http
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import attrs
import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from kallichore.api.hypercorn_ws import install_ws_close_codes

__all__ = [
    "HTTP_GRACEFUL_TIMEOUT",
    "WEBSOCKET_MAX_MESSAGE_SIZE",
    "ConnectionTaker",
    "InFlightRequests",
    "ListeningSocket",
    "hypercorn_config",
    "install_h11_adjustments",
    "serve_http",
]

logger = logging.getLogger(__name__)

#: Largest WebSocket message a client may send (Kallichore accepts 64 MiB).
WEBSOCKET_MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # bytes
#: Interval between hypercorn's pings on TCP WebSockets (the bridge pings on Unix sockets).
WEBSOCKET_PING_INTERVAL = 10.0  # seconds
#: How long in-flight requests may take to finish once shutdown starts.
HTTP_GRACEFUL_TIMEOUT = 3.0  # seconds
#: Bound on closing one client connection (EOF, then close).
CONNECTION_CLOSE_TIMEOUT = 1.0  # seconds

_PATCH_MARK = "_kallichore_adjusted"
# Where a held-back response head waits for its first body chunk.
_HEAD_ATTR = "_kallichore_head"
# Set while a second response to one upgrade request is being dropped.
_DROPPING_ATTR = "_kallichore_dropping"


def _reason(status_code: int) -> bytes:
    try:
        return http.HTTPStatus(status_code).phrase.encode("ascii")
    except ValueError:
        return b""


def _adjusted_head(
    protocol: H11Protocol, event: h11.Response | h11.InformationalResponse
) -> h11.Response | h11.InformationalResponse:
    """``event`` with its reason phrase, and ``Connection: close`` on a refused upgrade.

    Once hypercorn has seen a WebSocket upgrade request, the connection can
    no longer parse HTTP: it ends after a refusal. Saying so in the refusal
    tells the client not to send another request on it.
    """
    headers = list(event.headers)
    if (
        isinstance(event, h11.Response)
        and isinstance(protocol.connection, H11WSConnection)
        and not any(name == b"connection" for name, _ in headers)
    ):
        headers.append((b"connection", b"close"))
    elif event.reason:
        return event
    return type(event)(
        status_code=event.status_code,
        headers=headers,
        http_version=event.http_version,
        reason=event.reason or _reason(event.status_code),
    )


def _dropped_second_answer(protocol: H11Protocol, event: Any) -> bool:
    """Whether ``event`` belongs to a second response to one upgrade request, now dropped.

    A client that sends more bytes after an upgrade request, before its
    answer is complete, makes hypercorn answer them with a ``400`` of its
    own while the app's answer (a refusal) is still being written. HTTP
    allows one response per request, so the second response is dropped: its
    head here, the rest (written next by the same task, with no checkpoint
    in between) through the mark left on the protocol.
    """
    if getattr(protocol, _DROPPING_ATTR, False):
        if isinstance(event, h11.EndOfMessage):
            setattr(protocol, _DROPPING_ATTR, False)
        return True
    connection = protocol.connection
    if (
        isinstance(event, h11.Response)
        and isinstance(connection, H11WSConnection)
        and connection.h11_connection.our_state is not h11.SEND_RESPONSE
    ):
        setattr(protocol, _DROPPING_ATTR, True)
        return True
    return False


def _refusal_ended(protocol: H11Protocol, event: Any) -> bool:
    """Whether ``event`` ended the (only) response to an upgrade request.

    The connection must close then: hypercorn cannot parse HTTP on it any
    more, and after its own handshake ``400`` it would never close it.
    """
    connection = protocol.connection
    return (
        isinstance(event, h11.EndOfMessage)
        and isinstance(connection, H11WSConnection)
        and connection.h11_connection.our_state in (h11.DONE, h11.MUST_CLOSE)
    )


def install_h11_adjustments() -> None:
    """Wrap Hypercorn's h11 event sender (see module docstring). Idempotent."""
    original = H11Protocol._send_h11_event
    if getattr(original, _PATCH_MARK, False):
        return

    async def send_h11_event(self: H11Protocol, event: Any) -> None:
        try:
            await _send_adjusted(self, event)
            if _refusal_ended(self, event):
                await self.send(Closed())
        except h11.LocalProtocolError as exc:
            # h11 refuses an event that breaks HTTP/1.1 for this connection
            # (two responses to one request, for one). The connection can't
            # carry on; end it here rather than let the error unwind the
            # connection's task group.
            logger.info("Closing a connection that cannot carry on: %s", exc)
            await self.send(Closed())

    async def _send_adjusted(self: H11Protocol, event: Any) -> None:
        if _dropped_second_answer(self, event):
            return
        if isinstance(event, h11.Response | h11.InformationalResponse):
            event = _adjusted_head(self, event)
        if isinstance(event, h11.Response):
            try:
                setattr(self, _HEAD_ATTR, self.connection.send(event))
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
            return
        head = getattr(self, _HEAD_ATTR, None)
        if head is None:
            await original(self, event)
            return
        setattr(self, _HEAD_ATTR, None)
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        await self.send(RawData(data=head + (data or b"")))

    setattr(send_h11_event, _PATCH_MARK, True)
    H11Protocol._send_h11_event = send_h11_event  # type: ignore[method-assign]

    original_close = TCPServer._close

    async def close_shielded(self: TCPServer) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CONNECTION_CLOSE_TIMEOUT):
            await original_close(self)

    TCPServer._close = close_shielded  # type: ignore[method-assign]

    original_read_data = TCPServer._read_data

    async def read_data_then_end_idle_wait(self: TCPServer) -> None:
        await original_read_data(self)
        # The peer is gone (EOF or an error): no request can end the idle
        # wait now, so end it, and the connection closes at once rather
        # than when the keep-alive timeout would have closed it.
        await self.idle_task.stop()

    TCPServer._read_data = read_data_then_end_idle_wait  # type: ignore[method-assign]
    install_ws_close_codes()


def hypercorn_config(max_message_bytes: int = WEBSOCKET_MAX_MESSAGE_SIZE) -> HypercornConfig:
    """Hypercorn settings for kallichore."""
    config = HypercornConfig()
    config.websocket_max_message_size = max_message_bytes
    config.websocket_ping_interval = WEBSOCKET_PING_INTERVAL
    config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logging.getLogger("kallichore.http")
    return config


#: Decides, before hypercorn sees a new connection, whether to serve it
#: elsewhere: returns ``None`` once it has served (and closed) the stream, or
#: the stream for hypercorn (with any bytes it read put back).
ConnectionTaker = Callable[[trio.SocketStream], Awaitable["trio.abc.Stream | None"]]


class ListeningSocket(Protocol):
    """A bound, listening socket (the server's :class:`~kallichore.server.listener.BoundListener`)."""

    @property
    def sock(self) -> socket.socket:
        """The socket; its owner closes it."""


class InFlightRequests(Protocol):
    """Where HTTP requests are marked in flight (the server's request priority).

    The sessions' output pumps wait while a request is in flight
    (:mod:`kallichore.server.priority`); serving HTTP only marks them.
    """

    def begin(self) -> None:
        """A request's first bytes arrived (pair with :meth:`end`)."""

    def end(self) -> None:
        """The request's response was written."""

    def watch(self, fd: int) -> None:
        """Look for arrivals on ``fd`` (a listening socket or a connection)."""

    def unwatch(self, fd: int) -> None:
        """Stop looking at ``fd``; called before it is closed."""


async def serve_http(
    app: Any,
    listener: ListeningSocket,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    max_message_bytes: int = WEBSOCKET_MAX_MESSAGE_SIZE,
    take_connection: ConnectionTaker | None = None,
    priority: InFlightRequests | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the already-bound ``listener`` until ``shutdown_trigger`` returns.

    This is hypercorn's trio ``worker_serve`` cut down to what we use (one
    plain listener, no TLS, no QUIC), with one addition: every accepted
    connection is first offered to ``take_connection``, which is how
    channel WebSockets on TCP bypass the ASGI stack
    (:mod:`kallichore.channels.tcp_channels`). Connections it takes run in the
    same nursery and are cancelled when shutdown starts; hypercorn's get
    ``HTTP_GRACEFUL_TIMEOUT`` to finish. With ``priority``, every HTTP
    request is marked in flight from its first bytes to its response.

    Reports the bind descriptions through ``task_status`` once serving.

    **Cancellation:** cancelling stops serving at once.
    """
    install_h11_adjustments()
    config = hypercorn_config(max_message_bytes)
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    connections = _Connections(
        asgi, config, WorkerContext(None), lifespan_state, take_connection, priority
    )
    sock = listener.sock
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            if priority is not None:
                priority.watch(sock.fileno())
            task_status.started([f"http://{repr_socket_addr(sock.family, sock.getsockname())}"])
            try:
                await connections.accept_until(shutdown_trigger, trio_listener, server_nursery)
            finally:
                if priority is not None:
                    priority.unwatch(sock.fileno())
                await connections.stop(server_nursery)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class _Connections:
    """Serves each accepted connection: offered to the taker, else to hypercorn."""

    asgi: Any
    config: HypercornConfig
    context: WorkerContext
    lifespan_state: dict[str, Any]
    take_connection: ConnectionTaker | None
    priority: InFlightRequests | None
    # Scopes of the connections being looked at or served by take_connection;
    # all cancelled when shutdown starts.
    _taken: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    _stopping: bool = attrs.field(default=False, init=False)

    async def accept_until(
        self,
        shutdown_trigger: Callable[[], Awaitable[object]],
        listener: trio.SocketListener,
        handler_nursery: trio.Nursery,
    ) -> None:
        """Accept connections (handled in ``handler_nursery``) until shutdown is asked for."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(raise_shutdown, shutdown_trigger)
                nursery.start_soon(raise_shutdown, self.context.terminate.wait)
                nursery.start_soon(
                    partial(
                        trio.serve_listeners,
                        self.handle,
                        [listener],
                        handler_nursery=handler_nursery,
                    )
                )
        except BaseExceptionGroup as error:
            _, others = error.split(ShutdownError)
            if others is not None:
                raise others from None

    async def stop(self, handler_nursery: trio.Nursery) -> None:
        """End taken connections now; give hypercorn's the graceful timeout."""
        self._stopping = True
        for scope in self._taken:
            scope.cancel()
        await self.context.terminated.set()
        handler_nursery.cancel_scope.deadline = trio.current_time() + self.config.graceful_timeout

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection.

        Its failure ends that connection only: it is logged and the stream
        closed, and never reaches the server's nursery.
        """
        try:
            await self._serve(stream)
        except* Exception as failure:
            errors = failure.exceptions
            logger.error(
                "A client connection failed; closed it",
                exc_info=errors[0] if len(errors) == 1 else failure,
            )
            with trio.CancelScope(shield=True), trio.move_on_after(CONNECTION_CLOSE_TIMEOUT):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        http_stream = await self._offer(stream)
        if http_stream is None:
            return
        state = ConnectionState(self.lifespan_state.copy())
        priority = self.priority
        if priority is None:
            await TCPServer(self.asgi, self.config, self.context, state, http_stream)  # type: ignore[arg-type]
            return
        priority_stream = _PriorityStream(http_stream, priority)
        try:
            await TCPServer(self.asgi, self.config, self.context, state, priority_stream)  # type: ignore[arg-type]
        finally:
            priority_stream.unwatch()

    async def _offer(self, stream: trio.SocketStream) -> trio.abc.Stream | None:
        """The stream for hypercorn, or ``None`` if the taker served the connection."""
        if self.take_connection is None:
            return stream
        with trio.CancelScope() as scope:
            if self._stopping:
                scope.cancel()
            self._taken.add(scope)
            try:
                return await self.take_connection(stream)
            finally:
                self._taken.discard(scope)
        return None


#: How h11 ends a chunked body.
_LAST_CHUNK = b"0\r\n\r\n"


class _PriorityStream(trio.abc.HalfCloseableStream):
    """A connection's stream for hypercorn, marking requests in flight.

    A request is in flight from the read that brings its first bytes to the
    write that ends its response; that covers hypercorn's parsing and writing as
    well as the app. Has ``socket`` and no ``do_handshake``, as hypercorn
    expects of a plain TCP or Unix stream.
    """

    def __init__(self, stream: Any, priority: InFlightRequests) -> None:
        self._stream = stream
        self._priority = priority
        self._in_flight = False
        # Whether the head of the current request's response has been written.
        self._head_sent = False
        # After a 101 the connection carries a WebSocket: no more requests.
        self._upgraded = False
        self.socket = stream.socket
        self._fd: int | None = stream.socket.fileno()
        priority.watch(self._fd)

    def unwatch(self) -> None:
        """Stop looking for arrivals on this connection (idempotent)."""
        if self._fd is not None:
            self._priority.unwatch(self._fd)
            self._fd = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self._stream.receive_some(max_bytes))
        if data and not self._in_flight and not self._upgraded:
            self._in_flight = True
            self._priority.begin()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        ended = self._ends_response(bytes(data[:12]), len(data))
        try:
            await self._stream.send_all(data)
        except BaseException:
            self._done()
            raise
        if ended:
            self._done()

    def _ends_response(self, head: bytes, size: int) -> bool:
        """Whether this write (its first bytes, its size) ends the response.

        h11 writes a response in pieces: the head, each piece of body, and
        the end of the message, which is ``b""`` for a length-delimited body
        and the last chunk for a chunked one. hypercorn sends each with its
        own ``send_all`` and takes a scheduler pass between them, so the
        request stays in flight until the end, not just the head. A ``101``
        head is all there is of an upgrade's response; another 1xx head is
        followed by the real response. A first write that is not HTTP/1
        (HTTP/2) ends the request at once, so traffic we do not parse never
        holds the pumps; the priority window bounds everything else.
        """
        if not self._in_flight:
            return False
        if self._head_sent:
            return not size or (size == len(_LAST_CHUNK) and head == _LAST_CHUNK)
        if not head.startswith(b"HTTP/1."):
            return True
        status = head[9:12]
        if status == b"101":
            self._upgraded = True
            self.unwatch()
            return True
        self._head_sent = not status.startswith(b"1")
        return False

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self._done()
        self.unwatch()
        await self._stream.aclose()

    def _done(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self._head_sent = False
            self._priority.end()
