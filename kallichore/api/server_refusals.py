"""Error bodies for the refusals hypercorn makes before the app sees a request.

Hypercorn answers a few requests itself, with an empty body: a request it
cannot parse (``400``: a malformed request line or header, a head over its
size limit), a malformed WebSocket handshake (``400``: no
``Sec-WebSocket-Key``, a wrong version), a WebSocket the app closed before
accepting it (``403``) and a WebSocket app that failed (``500``).
:func:`install_refusal_bodies` gives those responses the spec's ``error``
body too (``{"code": "400", "message": "Bad Request"}``), so every error a
client can get has the same shape.

It replaces ``_send_error_response`` of hypercorn's HTTP/1.1 protocol and of
its WebSocket stream, the one place each builds such a response; the status,
``Connection: close`` and everything else stay as hypercorn makes them. These
refusals never reach the app, so they have no access-log line.
"""

from __future__ import annotations

from time import time

import h11
import orjson
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

from kallichore.api.responses import status_phrase

__all__ = ["install_refusal_bodies", "refusal_body"]

_PATCH_MARK = "_kallichore_refusal_body"


def refusal_body(status: int) -> bytes:
    """The ``error`` body for a refusal with ``status``."""
    return orjson.dumps({"code": str(status), "message": status_phrase(status)})


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]


async def _h11_error_response(self: H11Protocol, status_code: int) -> None:
    body = refusal_body(status_code)
    headers = [*_headers(body), *self.config.response_headers("h11")]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


async def _ws_error_response(self: WSStream, status_code: int) -> None:
    body = refusal_body(status_code)
    stream_id = self.stream_id
    await self.send(Response(stream_id=stream_id, status_code=status_code, headers=_headers(body)))
    await self.send(Body(stream_id=stream_id, data=body))
    await self.send(EndBody(stream_id=stream_id))
    await self.config.log.access(
        self.scope, {"status": status_code, "headers": []}, time() - self.start_time
    )


def install_refusal_bodies() -> None:
    """Make hypercorn's own refusals carry an ``error`` body. Idempotent."""
    if getattr(H11Protocol._send_error_response, _PATCH_MARK, False):
        return
    for function in (_h11_error_response, _ws_error_response):
        setattr(function, _PATCH_MARK, True)
    H11Protocol._send_error_response = _h11_error_response  # type: ignore[method-assign]
    WSStream._send_error_response = _ws_error_response  # type: ignore[method-assign]
