"""The channel bridge: one client connection <-> one kernel session.

A client (Positron) talks Jupyter to a session over one WebSocket, reached
either by upgrading ``GET /sessions/{id}/channels`` on the TCP server
(:mod:`kallichore.channels.tcp_channels`, or this module's app route for an
upgrade on a kept-alive connection) or through a per-session Unix socket
(:mod:`kallichore.channels.channel_socket`). All of them run the same bridge,
:func:`serve_channel`, against a small :class:`ChannelConnection` interface.

Task tree of one connection (quart-trio's ``asgi.py`` pattern: one nursery,
the first task to finish ends the others)::

    serve_channel                 attach_client ... detach_client
    ├── _Bridge.deliver           session.deliver: the session's frames -> the connection
    ├── _Bridge.receive           client text frames -> kernel
    └── _Bridge.keepalive         pings (not on the app route: hypercorn pings there)

Delivery
    The bridge does not write the session's frames itself: it lends the
    connection to the session's client fan-out
    (:mod:`kallichore.supervisor.fanout`), the one writer of a client
    connection, which keeps the outbox order, writes straight through when
    the socket takes frames without waiting, and requeues whatever was not
    written, so the next client gets it.

Takeover
    A newer client ends the older one's delivery, which sends it
    ``clientDisconnected``; the bridge then closes.

Closing
    When the client ends its side (an empty text frame, a Close frame, or
    EOF) the receive task stops and asks the delivery task to stop at the
    next frame boundary, within :data:`DRAIN_TIMEOUT`. So a client that
    says goodbye and then reads until the server's Close receives every
    frame that was written, and everything else stays queued for the next
    client. A connection that just vanishes can lose the frames that were
    in flight in socket buffers (as in Kallichore); on the app route
    hypercorn also silently discards frames written after it has processed
    the client's Close frame, which is why the empty text frame is the
    lossless way to hand a session over.

Keep-alive
    The bridge sends a ping immediately and every :data:`PING_INTERVAL`
    (payload: an 8-byte big-endian counter) and drops a client with more
    than :data:`MAX_UNANSWERED_PINGS` unanswered pings. On the app route
    hypercorn sends the pings (``websocket_ping_interval``) and a dead peer
    is noticed through TCP errors; there is no missing-pong rule there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from kallichore.config import Transport
from kallichore.errors import ErrorCode, KallichoreError, RemoteProtocolError, SessionNotFoundError
from kallichore.protocol.envelope import parse_client_frame
from kallichore.supervisor.fanout import TAKEOVER_NOTICE, ChannelClosedError, ClientConnection

if TYPE_CHECKING:
    from quart import Quart, Response

    from kallichore.server.root import Server
    from kallichore.supervisor.session import ClientAttachment, KernelSession

__all__ = [
    "DRAIN_TIMEOUT",
    "MAX_UNANSWERED_PINGS",
    "PING_INTERVAL",
    "TAKEOVER_NOTICE",
    "ChannelClosedError",
    "ChannelConnection",
    "register_channel_route",
    "serve_channel",
]

logger = logging.getLogger(__name__)

#: Time between server pings (the first is sent at once).
PING_INTERVAL = 10.0  # seconds
#: More unanswered pings than this and the client is considered gone.
MAX_UNANSWERED_PINGS = 3  # pings
#: How long delivery may take to reach a frame boundary once the client closed.
DRAIN_TIMEOUT = 5.0  # seconds

_CHANNELS_PATH = "/sessions/<session_id>/channels"


class ChannelConnection(ClientConnection, Protocol):
    """What the bridge needs from a WebSocket, whatever carries it.

    The frame-writing half (:class:`~kallichore.supervisor.fanout.ClientConnection`)
    is used only by the session's fan-out.
    """

    #: Highest ping counter the client has answered, or ``None`` when the
    #: transport keeps the connection alive by itself (no bridge pings).
    @property
    def pongs_received(self) -> int | None: ...

    async def send_ping(self, payload: bytes) -> None:
        """Send a ping. Raises :class:`ChannelClosedError`."""

    async def receive(self) -> str | bytes | None:
        """The next complete message; ``None`` once the client has closed."""


async def serve_channel(
    session: KernelSession, conn: ChannelConnection, *, socket_path: str | None = None
) -> None:
    """Make ``conn`` the session's client until one side ends it.

    Attaches (kicking any previous client), runs delivery, reception and
    keep-alive, and always detaches. Closing ``conn`` is the caller's job.

    Args:
        session: the session to bridge.
        conn: the client's connection.
        socket_path: the per-session socket the client came through, shown
            as ``socket_path`` in the session's details while attached.

    **Cancellation:** safe at any point; frames taken from the outbox and not
    written are requeued first.

    **Errors:** none from the client side: a failed connection just ends.
    """
    attachment = session.attach_client(socket_path=socket_path)
    bridge = _Bridge(session, attachment, conn)
    try:
        async with trio.open_nursery() as nursery:
            bridge.nursery = nursery
            nursery.start_soon(bridge.deliver)
            nursery.start_soon(bridge.receive)
            if conn.pongs_received is not None:
                nursery.start_soon(bridge.keepalive)
    finally:
        session.detach_client(attachment)


@attrs.define(eq=False)
class _Bridge:
    session: KernelSession
    attachment: ClientAttachment
    conn: ChannelConnection
    nursery: trio.Nursery | None = None

    def _end(self) -> None:
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    async def deliver(self) -> None:
        try:
            await self.session.deliver(self.attachment, self.conn)
        finally:
            self._end()

    async def receive(self) -> None:
        try:
            await self._receive()
        finally:
            # Let delivery finish the frame it is writing, then stop.
            self.attachment.stop_delivery()
            assert self.nursery is not None
            scope = self.nursery.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_TIMEOUT)

    async def _receive(self) -> None:
        while True:
            message = await self.conn.receive()
            if message is None:
                self.session.log.debug("the client closed the connection")
                return
            if isinstance(message, bytes):
                self.session.log.debug("ignoring a binary frame from the client")
                continue
            if not message:
                self.session.log.info("the client sent an empty frame; closing")
                return
            try:
                await self.session.send_from_client(parse_client_frame(message))
            except RemoteProtocolError as exc:
                self.session.log.warning("dropping a client frame: %s", exc)

    async def keepalive(self) -> None:
        try:
            sent = 0
            while True:
                answered = self.conn.pongs_received or 0
                if sent - answered > MAX_UNANSWERED_PINGS:
                    self.session.log.warning(
                        "lost connection to the client (%d pings unanswered)",
                        sent - answered,
                    )
                    return
                sent += 1
                try:
                    await self.conn.send_ping(sent.to_bytes(8, "big"))
                except ChannelClosedError:
                    return
                await trio.sleep(PING_INTERVAL)
        finally:
            self._end()


# ------------------------------------------------------------------- TCP route


class _QuartConnection:
    """A Quart websocket as a :class:`ChannelConnection`.

    hypercorn answers pings and sends its own (``websocket_ping_interval``),
    so ``pongs_received`` is ``None`` and the bridge sends none.
    """

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    @property
    def pongs_received(self) -> int | None:
        return None

    async def send_frames(self, frames: Sequence[bytes]) -> int:
        # One ASGI event per message: this route is the fallback for an
        # upgrade that came on a kept-alive HTTP connection.
        await self._ws.send(frames[0].decode("utf-8", errors="replace"))
        return 1

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    can_write_now = False

    def write_now(self, frames: Sequence[bytes]) -> int:
        return 0

    def needs_flush(self) -> bool:
        return False

    async def send_ping(self, payload: bytes) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    async def receive(self) -> str | bytes | None:
        # quart-trio delivers an empty binary frame as None; a disconnect
        # cancels the handler instead of returning.
        message: str | bytes | None = await self._ws.receive()
        return b"" if message is None else message


def register_channel_route(app: Quart, server: Server) -> None:
    """Serve ``GET /sessions/{id}/channels`` (operationId ``channels_upgrade``).

    One view serves both the HTTP rule and the WebSocket rule of the path:

    * socket transport: any GET (with or without upgrade headers) returns
      the path of the session's channel socket as a JSON string (404 for an
      unknown session, 400 ``socket_path_too_long``/``domain_socket_error``);
    * TCP transport: a WebSocket upgrade runs the bridge; an unknown session
      is a 400 ``KS-1`` error *before* accepting, so the session's current
      client is not disturbed; a plain GET is a 400 error.

    The bearer token is checked first by the app's before-request and
    before-websocket hooks.
    """
    # The HTTP stack is imported only by the app (kallichore.server imports
    # this module for the bridge, and stays light).
    from quart import has_websocket_context, websocket

    from kallichore.api.responses import json_response

    async def channels_upgrade(session_id: str) -> Response | None:
        if server.config.transport is Transport.SOCKET:
            session = server.registry.get(session_id)
            return json_response(server.channels.open(session))
        if not has_websocket_context():
            return json_response(
                {
                    "code": ErrorCode.BAD_REQUEST.value,
                    "message": "This endpoint requires a WebSocket upgrade",
                    "details": "Connect with a WebSocket client to "
                    f"/sessions/{session_id}/channels",
                },
                400,
            )
        try:
            session = server.registry.get(session_id)
        except SessionNotFoundError:
            error = KallichoreError(
                ErrorCode.SESSION_NOT_FOUND,
                f"Session {session_id} not found",
                "Establishing a websocket connection requires a valid session ID",
                http_status=400,
            )
            return json_response(error.to_body(), error.http_status)
        await websocket.accept()
        session.log.info("client connected over TCP")
        await serve_channel(session, _QuartConnection(websocket))
        return None

    # One view for both rules (Quart requires that of a shared endpoint).
    app.add_url_rule(
        _CHANNELS_PATH,
        "channels_upgrade",
        channels_upgrade,  # type: ignore[arg-type]
        methods=["GET"],
    )
    app.add_websocket(_CHANNELS_PATH, "channels_upgrade", channels_upgrade)
