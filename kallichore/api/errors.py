"""Exceptions to responses: the only place error bodies are made.

Every error response carries the spec's ``error`` body (``code``,
``message``, optional ``details``), where Kallichore sends 401 and 404 with
no body at all; the statuses are Kallichore's.

* :class:`~kallichore.errors.StartupError` -> its status, ``startupError`` body.
* any other :class:`~kallichore.errors.KallichoreError` -> its status, ``error``
  body (404 ``KS-1`` for an unknown session, 401 ``401`` for a bad token).
* routing failures -> 404 ``404`` (unknown path), 405 ``405`` with an
  ``Allow`` header (wrong method); any other HTTP-level refusal (a body
  over the size limit, a WebSocket upgrade of a plain route: 400) -> its
  status, the status as the code.
* running out of file descriptors (``EMFILE``/``ENFILE``, anywhere in the
  request's path) -> 503 ``503``, naming the open-file limits and what to
  change; logged without a traceback (it is not a bug, and at the limit it
  can repeat for every request).
* anything else is a bug: logged with its traceback, answered with a 500
  ``error`` body that reveals nothing internal.

:func:`unexpected_error` makes the last two; the app's handler uses it, and so
does :class:`kallichore.api.last_resort.LastResortMiddleware` for a failure
outside the handlers.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, Response, has_request_context, request, websocket
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import WebsocketMismatch

from kallichore import fd_limit
from kallichore.api.responses import json_response, status_phrase
from kallichore.errors import KallichoreError, StartupError

__all__ = [
    "register_error_handlers",
    "response_for_error",
    "response_for_http_exception",
    "unexpected_error",
]

logger = logging.getLogger(__name__)


def response_for_error(exc: KallichoreError) -> Response:
    """The response a client gets for ``exc``."""
    if isinstance(exc, StartupError):
        return json_response(exc.to_startup_body(), exc.http_status)
    return json_response(exc.to_body(), exc.http_status)


def response_for_http_exception(
    exc: HTTPException, method: str, path: str, *, websocket: bool = False
) -> Response:
    """The ``error`` response for a refusal raised by routing or by Quart itself.

    The code is the status as a string (``"404"``, ``"405"``, ``"413"``).
    ``websocket`` says whether the request was a WebSocket upgrade.
    """
    status = exc.code or 500
    body = {"code": str(status), "message": status_phrase(status)}
    allowed = None
    if isinstance(exc, NotFound):
        body["message"] = f"No endpoint at {path}"
    elif isinstance(exc, WebsocketMismatch):
        body["message"] = (
            f"{path} does not accept WebSocket upgrades"
            if websocket
            else f"{path} requires a WebSocket upgrade"
        )
    elif isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        body["message"] = f"Method {method} is not allowed on {path}"
        body["details"] = f"Allowed: {allowed}"
    response = json_response(body, status)
    if allowed is not None:
        response.headers["Allow"] = allowed
    return response


def unexpected_error(exc: BaseException, what: str) -> tuple[int, dict[str, Any]]:
    """Log ``exc``, which failed ``what``; return the status and ``error`` body to answer."""
    if fd_limit.is_exhaustion(exc):
        message, details = fd_limit.request_shortage()
        logger.warning("%s (while %s; answered 503)", message, what)
        return 503, {"code": "503", "message": message, "details": details}
    logger.error("Unexpected error while %s", what, exc_info=exc)
    return 500, {"code": "500", "message": "Internal server error"}


def register_error_handlers(app: Quart) -> None:
    """Install the mapping above on ``app``."""

    @app.errorhandler(KallichoreError)
    async def handle_kallichore_error(exc: KallichoreError) -> Response:
        if exc.http_status >= 500:
            logger.error("%s: %s", exc.code.value, exc.message)
        else:
            logger.debug("%s %s: %s", exc.http_status, exc.code.value, exc.message)
        return response_for_error(exc)

    @app.errorhandler(HTTPException)
    async def handle_http_exception(exc: HTTPException) -> Response:
        if has_request_context():
            return response_for_http_exception(exc, request.method, request.path)
        return response_for_http_exception(exc, websocket.method, websocket.path, websocket=True)

    @app.errorhandler(Exception)
    async def handle_unexpected(exc: Exception) -> Response:
        status, body = unexpected_error(exc, "handling a request")
        return json_response(body, status)
