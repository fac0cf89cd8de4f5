"""The answer to a request whose app failed before it began a response.

Quart turns an exception raised by a handler into our ``error`` body
(:mod:`kallichore.api.errors`), but one raised outside the handlers -- while
Quart builds the request's context, say -- leaves the app, and hypercorn
then answers ``500`` with an empty body and closes the connection. At the
open-file limit that is what every request used to get: anything that has to
open a file on the way (a module imported on first use) fails with
``EMFILE``.

:class:`LastResortMiddleware` answers such a failure itself, with the same
status and body the handlers' mapping gives (503 naming the open-file limits
when descriptors ran out, else 500), so a client always gets a JSON error.
Building and sending it opens nothing. A failure after the response began,
and cancellation, pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kallichore.api.errors import unexpected_error
from kallichore.protocol.converter import to_json_bytes

__all__ = ["LastResortMiddleware"]

Message = MutableMapping[str, Any]
AsgiApp = Callable[..., Awaitable[None]]


class LastResortMiddleware:
    """ASGI middleware: a JSON error for an HTTP request the app failed to answer."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:  # an ExceptionGroup of Exceptions too; never Cancelled
            if started:
                raise
            status, body = unexpected_error(exc, f"serving {scope.get('method')} {scope['path']}")
            data = to_json_bytes(body)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
