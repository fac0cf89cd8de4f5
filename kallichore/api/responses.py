"""Building responses the way Kallichore's clients expect them.

* JSON bodies are compact, ``Content-Type: application/json``.
* "Empty" successes are the JSON literal ``null`` with status 200.
* 401 and 404 have an empty body and no Content-Type.
"""

from __future__ import annotations

from typing import Any

from quart import Response

from kallichore.api.converter import to_json_bytes

__all__ = ["empty_response", "json_response", "null_response"]

_JSON = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as compact JSON."""
    return Response(to_json_bytes(body), status=status, content_type=_JSON)


def null_response() -> Response:
    """200 with the body ``null``."""
    return Response(b"null", status=200, content_type=_JSON)


def empty_response(status: int) -> Response:
    """A status with no body and no Content-Type (401, 404, 405)."""
    response = Response(b"", status=status)
    del response.headers["Content-Type"]
    return response
