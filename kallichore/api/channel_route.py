"""``GET /sessions/{id}/channels`` in the app (operationId ``channels_upgrade``).

On the Unix-socket transport the route answers with the path of the
session's channel socket (:mod:`kallichore.channels.channel_socket`). On TCP,
most channel upgrades never reach the app: they are taken off the listener
first (:mod:`kallichore.channels.tcp_channels`). What does reach it (an
upgrade on a kept-alive connection, or any refusal) is served here, by the
same bridge (:func:`~kallichore.channels.bridge.serve_channel`) over a Quart
WebSocket. Refusals are raised as errors and answered by
:mod:`kallichore.api.errors`, like every other route's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from quart import Quart, Response, has_websocket_context, websocket

from kallichore.api.context import ApiContext
from kallichore.api.responses import json_response
from kallichore.channels.bridge import serve_channel
from kallichore.config import Transport
from kallichore.errors import BadRequestError, ErrorCode, KallichoreError, SessionNotFoundError

__all__ = ["register_channel_route"]

_CHANNELS_PATH = "/sessions/<session_id>/channels"


class _QuartConnection:
    """A Quart websocket as a :class:`~kallichore.channels.bridge.ChannelConnection`.

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


def register_channel_route(app: Quart, context: ApiContext) -> None:
    """Serve ``GET /sessions/{id}/channels``.

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

    async def channels_upgrade(session_id: str) -> Response | None:
        registry = context.registry
        if context.transport is Transport.SOCKET:
            return json_response(context.channel_sockets.open(registry.get(session_id)))
        if not has_websocket_context():
            raise BadRequestError(
                "This endpoint requires a WebSocket upgrade",
                f"Connect with a WebSocket client to /sessions/{session_id}/channels",
            )
        try:
            session = registry.get(session_id)
        except SessionNotFoundError:
            raise KallichoreError(
                ErrorCode.SESSION_NOT_FOUND,
                f"Session {session_id} not found",
                "Establishing a websocket connection requires a valid session ID",
                http_status=400,
            ) from None
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
