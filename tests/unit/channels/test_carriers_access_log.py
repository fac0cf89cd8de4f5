"""Channel WebSockets served outside the app get their access line too.

On TCP an accepted upgrade is served by the fast path
(:mod:`kallichore.channels.tcp_channels`); on the socket transport by the
session's own Unix socket (:mod:`kallichore.channels.channel_socket`). Neither
passes through the ASGI middleware, so each logs its line when it ends.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import trio

from kallichore.server import ServerAddress
from tests.support.raw_http import (
    bearer,
    create_session,
    exchange,
    open_stream,
    upgrade_headers,
)


async def wait_for_line(caplog: pytest.LogCaptureFixture, pattern: str) -> logging.LogRecord:
    while True:
        for rec in caplog.records:
            if rec.name == "kallichore.access" and re.fullmatch(pattern, rec.getMessage()):
                return rec
        await trio.sleep(0.01)


async def upgrade_and_hang_up(
    stream: trio.abc.Stream, target: str, headers: dict[str, str]
) -> None:
    head = f"GET {target} HTTP/1.1\r\nHost: localhost\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    async with stream:
        await stream.send_all((head + "\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await stream.receive_some()
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 101"), response


@pytest.mark.parametrize("kallichore_transport", ["tcp"])
async def test_tcp_fast_path_websocket_is_logged_when_it_ends(
    kallichore_server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.access")
    await create_session(kallichore_server, "fast")
    target = "/sessions/fast/channels?token=hunter2"
    headers = upgrade_headers(**bearer(kallichore_server.token))
    await upgrade_and_hang_up(await open_stream(kallichore_server), target, headers)
    line = await wait_for_line(
        caplog, r"GET /sessions/fast/channels\?token=\*\*\* 101 \d+\.\d ms \(websocket\)"
    )
    assert line.session_id == "fast"  # type: ignore[attr-defined]
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kallichore_transport", ["socket"])
async def test_channel_socket_websocket_is_logged_when_it_ends(
    kallichore_server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.access")
    await create_session(kallichore_server, "sock")
    status, _, body = await exchange(
        kallichore_server, "GET", "/sessions/sock/channels", bearer(kallichore_server.token)
    )
    assert status == 200, body
    path = json.loads(body)
    stream = await trio.open_unix_socket(path)
    await upgrade_and_hang_up(stream, "/api/channels/sock", upgrade_headers())
    line = await wait_for_line(caplog, rf"GET {re.escape(path)} 101 \d+\.\d ms \(websocket\)")
    assert line.session_id == "sock"  # type: ignore[attr-defined]
