"""The access log: one line per HTTP request and per WebSocket.

Logger ``kallichore.access``; each line is ``<method> <path> <status> <time>``,
with ``(websocket)`` for a WebSocket, whose time is how long it was open::

    GET /sessions 200 0.8 ms
    GET /sessions/s1/channels 101 61204.3 ms (websocket)
    GET /sessions 401 0.3 ms (Bearer token missing: ...)

Lines are INFO, except a refused token (401), which is WARNING with the
reason. Records carry ``method``, ``path``, ``status``, ``duration_ms`` and
``websocket`` as attributes for ``--log-format json``.

What is never logged: headers (so never the bearer token) and query-string
values. The API uses no query parameters, but a client may someday send
``?token=...``: a query is logged with every value masked
(``?token=***``).

Where lines come from:

* :class:`AccessLogMiddleware` wraps the app's ASGI callable, so it sees
  every request hypercorn hands over, on TCP and Unix-socket listeners,
  including refusals made by routing, by the token check (which notes its
  reason with :func:`note_auth_failure`) and by Quart itself;
* channel WebSockets served outside the app (the TCP fast path, per-session
  Unix sockets) call :func:`kallichore.logs.log_access`, the line writer this
  module uses too, when they end.

Cost: a timestamp at the start, a wrapper around ``send`` (two calls per
plain response), and one record when the request ends; nothing when the
logger is disabled beyond the level check.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kallichore.logs import log_access, masked_query

__all__ = ["AccessLogMiddleware", "log_access", "masked_query", "note_auth_failure"]

#: Where the token check leaves its reason for the access line (in the ASGI scope).
_AUTH_FAILURE_KEY = "kallichore.auth_failure"

# ASGI's shapes, loosely: hypercorn's TypedDicts do not admit our scope key.
Message = MutableMapping[str, Any]
AsgiApp = Callable[..., Awaitable[None]]


def note_auth_failure(scope: Any, reason: str) -> None:
    """Record why the token check refused this request, for its access line.

    ``scope`` is the request's ASGI scope (``request.scope``), a plain dict.
    """
    scope[_AUTH_FAILURE_KEY] = reason


class AccessLogMiddleware:
    """ASGI middleware writing one access line per HTTP request and WebSocket.

    The status is taken from the response start (``http.response.start``,
    ``websocket.http.response.start`` for a refused upgrade), ``101`` from
    ``websocket.accept``; a WebSocket closed before it was accepted is
    ``403``, as ASGI servers answer it. An app that fails before responding
    is logged as ``500``. The line is written when the app returns: at the
    end of the response, or when a WebSocket closes.
    """

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if not status:
                event = message["type"]
                if event == "http.response.start" or event == "websocket.http.response.start":
                    status = message["status"]
                elif event == "websocket.accept":
                    status = 101
                elif event == "websocket.close":
                    status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            raw_path = scope.get("raw_path")
            path = raw_path.partition(b"?")[0].decode("latin-1") if raw_path else scope["path"]
            log_access(
                scope.get("method", "GET"),
                path + masked_query(scope.get("query_string", b"")),
                status or 500,
                time.perf_counter() - start,
                websocket=kind == "websocket",
                reason=scope.get(_AUTH_FAILURE_KEY),
            )
