"""Exceptions to responses: the only place error bodies are made.

* :class:`~kallichore.errors.SessionNotFoundError` -> 404, empty body.
* :class:`~kallichore.errors.StartupError` -> its status, ``startupError`` body.
* any other :class:`~kallichore.errors.KallichoreError` -> its status, ``error`` body.
* routing failures (unknown path, wrong method) -> 404 / 405, empty body.
* anything else is a bug: logged with its traceback, answered with a 500
  ``error`` body that reveals nothing internal.
"""

from __future__ import annotations

import logging

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from kallichore.api.responses import empty_response, json_response
from kallichore.errors import KallichoreError, SessionNotFoundError, StartupError

__all__ = ["register_error_handlers", "response_for_error"]

logger = logging.getLogger(__name__)


def response_for_error(exc: KallichoreError) -> Response:
    """The response a client gets for ``exc``."""
    if isinstance(exc, SessionNotFoundError):
        return empty_response(404)
    if isinstance(exc, StartupError):
        return json_response(exc.to_startup_body(), exc.http_status)
    return json_response(exc.to_body(), exc.http_status)


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
        return empty_response(exc.code or 500)

    @app.errorhandler(Exception)
    async def handle_unexpected(exc: Exception) -> Response:
        logger.exception("Unexpected error while handling a request")
        return json_response({"code": "500", "message": "Internal server error"}, 500)
