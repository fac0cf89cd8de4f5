"""Bearer-token checks.

Every endpoint requires ``Authorization: Bearer <token>`` except
``GET /status``, which clients use to find out whether a server is alive and
whether it is the one they knew, and ``GET /openapi.json``, the API's public
description. That is stricter than Kallichore, which also leaves the session
list, details, heartbeat, configuration and the TCP WebSocket upgrade open. The scheme is matched case-insensitively, leading spaces before
the token are ignored, and the comparison is constant-time. With
authentication off (``--token none``) every request passes, including
Positron's ``Authorization: Bearer null``.

A refusal says which of the two went wrong (:func:`auth_failure`): no bearer
token at all, or a token that does not match. It never repeats what was
presented.
"""

from __future__ import annotations

import hmac

__all__ = ["MISSING_TOKEN", "UNAUTHENTICATED", "WRONG_TOKEN", "auth_failure", "authorized"]

#: (method, rule) pairs that need no token.
UNAUTHENTICATED = frozenset(
    {("GET", "/status"), ("HEAD", "/status"), ("GET", "/openapi.json"), ("HEAD", "/openapi.json")}
)


#: Why a request was refused: the 401 body's message and the log's reason.
MISSING_TOKEN = "Bearer token missing: send 'Authorization: Bearer <token>'"
WRONG_TOKEN = "Bearer token wrong: it does not match this server's token"


def auth_failure(header: str | None, token: str | None) -> str | None:
    """Why an ``Authorization`` header value does not carry ``token``, or ``None``.

    Args:
        header: the header value, or ``None`` if absent.
        token: the server's token, or ``None`` when authentication is off.

    Returns:
        ``None`` when authorized; else :data:`MISSING_TOKEN` (no header, or
        not the Bearer scheme) or :data:`WRONG_TOKEN`.
    """
    if token is None:
        return None
    if header is None or len(header) < 7 or header[:7].lower() != "bearer ":
        return MISSING_TOKEN
    presented = header[7:].lstrip()
    if not presented:
        return MISSING_TOKEN
    if hmac.compare_digest(presented.encode(), token.encode()):
        return None
    return WRONG_TOKEN


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``token``."""
    return auth_failure(header, token) is None
