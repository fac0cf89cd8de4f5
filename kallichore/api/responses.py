"""Building responses the way Kallichore's clients expect them.

* JSON bodies are compact, ``Content-Type: application/json``.
* "Empty" successes are the JSON literal ``null`` with status 200.
* Errors have the spec's ``error`` body (:mod:`kallichore.api.errors`);
  Kallichore sends 401 and 404 with no body.
"""

from __future__ import annotations

import http
from typing import Any

from quart import Response

from kallichore.protocol.converter import to_json_bytes

__all__ = ["json_response", "null_response", "status_phrase"]

_JSON = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as compact JSON."""
    return Response(to_json_bytes(body), status=status, content_type=_JSON)


def null_response() -> Response:
    """200 with the body ``null``."""
    return Response(b"null", status=200, content_type=_JSON)


def status_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (``"Bad Request"``)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"
