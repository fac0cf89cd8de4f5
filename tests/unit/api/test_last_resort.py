"""LastResortMiddleware: a JSON error for a request the app failed to answer."""

from __future__ import annotations

import errno
import json
import logging
import os
from typing import Any

import pytest
import trio

from kallichore.api.last_resort import LastResortMiddleware

Sent = list[dict[str, Any]]


async def call(app: Any, scope_type: str = "http") -> Sent:
    sent: Sent = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": scope_type, "method": "GET", "path": "/status"}
    await LastResortMiddleware(app)(scope, receive, send)
    return sent


def answer(sent: Sent) -> tuple[int, dict[str, Any]]:
    start, body = sent
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body["body"])
    return start["status"], json.loads(body["body"])


async def test_running_out_of_descriptors_before_the_response_is_a_503_naming_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        # As Quart-Trio raises a lazy import's failure: inside a nursery's group.
        missing = OSError(errno.EMFILE, os.strerror(errno.EMFILE), "encodings/idna.py")
        raise ExceptionGroup("Exceptions from Trio nursery", [missing])

    status, body = answer(await call(app))
    assert status == 503
    assert body["code"] == "503"
    assert body["message"].startswith("The server is out of file descriptors (open-file soft limit")
    assert "Stop sessions that are no longer needed" in body["details"]
    [record] = [r for r in caplog.records if r.name == "kallichore.api.errors"]
    assert record.levelno == logging.WARNING
    assert "while serving GET /status; answered 503" in record.getMessage()
    assert record.exc_info is None  # not a bug: no traceback


async def test_any_other_failure_before_the_response_is_a_json_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("a bug")

    assert answer(await call(app)) == (500, {"code": "500", "message": "Internal server error"})
    [record] = [r for r in caplog.records if r.name == "kallichore.api.errors"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_a_failure_after_the_response_began_is_left_to_the_server() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("too late for another answer")

    with pytest.raises(ValueError, match="too late"):
        await call(app)


async def test_cancellation_and_websockets_pass_through() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with pytest.raises(OSError, match="Too many open files"):
        await call(app, scope_type="websocket")

    async def sleeper(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep_forever()

    with trio.CancelScope() as scope:
        scope.cancel()
        await call(sleeper)
    assert scope.cancelled_caught
