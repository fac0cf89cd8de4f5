"""Bearer-token checks.

Every endpoint requires ``Authorization: Bearer <token>`` except
``GET /status``, which clients use to find out whether a server is alive and
whether it is the one they knew (stricter than Kallichore, which also leaves
the session list, details, heartbeat, configuration and the TCP WebSocket
upgrade open). The scheme is matched case-insensitively, leading spaces before
the token are ignored, and the comparison is constant-time. With
authentication off (``--token none``) every request passes, including
Positron's ``Authorization: Bearer null``.
"""

from __future__ import annotations

import hmac

__all__ = ["UNAUTHENTICATED", "authorized"]

#: (method, rule) pairs that need no token.
UNAUTHENTICATED = frozenset({("GET", "/status"), ("HEAD", "/status")})


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``token``.

    Args:
        header: the header value, or ``None`` if absent.
        token: the server's token, or ``None`` when authentication is off.
    """
    if token is None:
        return True
    if header is None or len(header) < 7 or header[:7].lower() != "bearer ":
        return False
    presented = header[7:].lstrip()
    return hmac.compare_digest(presented.encode(), token.encode())
