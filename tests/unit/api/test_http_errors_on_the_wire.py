"""Error bodies as a client reads them off a real listener (TCP and Unix socket).

A real server runs in the test (``kallichore_server``); requests are written
by hand and parsed with h11, so WebSocket upgrades can be refused on the TCP
fast path (:mod:`kallichore.channels.tcp_channels`) as well as by the app.
"""

from __future__ import annotations

import json

import pytest

from kallichore.server import ServerAddress
from tests.support.raw_http import bearer, create_session, exchange, open_stream, upgrade_headers

pytestmark = pytest.mark.parametrize("kallichore_transport", ["tcp", "socket"])


def assert_error(
    response: tuple[int, dict[str, str], bytes], status: int, code: str
) -> dict[str, str]:
    got_status, headers, body = response
    assert got_status == status, response
    assert headers["content-type"] == "application/json", response
    error: dict[str, str] = json.loads(body)
    assert error["code"] == code, error
    assert error["message"], error
    return error


async def test_unknown_path_and_wrong_method(kallichore_server: ServerAddress) -> None:
    error = assert_error(await exchange(kallichore_server, "GET", "/no/such/path"), 404, "404")
    assert "/no/such/path" in error["message"]
    response = await exchange(kallichore_server, "DELETE", "/status")
    assert_error(response, 405, "405")
    assert response[1]["allow"] == "GET, HEAD"


async def test_rest_401_says_missing_or_wrong_and_never_echoes(
    kallichore_server: ServerAddress,
) -> None:
    missing = assert_error(await exchange(kallichore_server, "GET", "/sessions"), 401, "401")
    assert "missing" in missing["message"]
    presented = "not-the-token-1234"
    response = await exchange(kallichore_server, "GET", "/sessions", bearer(presented))
    wrong = assert_error(response, 401, "401")
    assert "wrong" in wrong["message"]
    assert presented not in response[2].decode()


async def test_unknown_session_is_404_ks1(kallichore_server: ServerAddress) -> None:
    response = await exchange(
        kallichore_server, "GET", "/sessions/ghost", bearer(kallichore_server.token)
    )
    assert_error(response, 404, "KS-1")


async def test_websocket_upgrades_refused_with_error_bodies(
    kallichore_server: ServerAddress,
) -> None:
    await create_session(kallichore_server, "ws-refusals")
    path = "/sessions/ws-refusals/channels"
    # An existing session: on TCP this reaches the fast path, which hands
    # the refusal to the app.
    for headers, reason in [({}, "missing"), (bearer("wrong-token-5678"), "wrong")]:
        response = await exchange(kallichore_server, "GET", path, upgrade_headers(**headers))
        error = assert_error(response, 401, "401")
        assert reason in error["message"]
        assert "wrong-token-5678" not in response[2].decode()
    # An upgrade of a path that does not exist.
    response = await exchange(kallichore_server, "GET", "/nowhere", upgrade_headers())
    assert_error(response, 404, "404")


async def raw_exchange(address: ServerAddress, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; read the response (its head, then Content-Length bytes)."""
    stream = await open_stream(address)
    async with stream:
        await stream.send_all(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers["content-length"]):
            chunk = await stream.receive_some()
            assert chunk, data
            body += chunk
    return int(status_line.split()[1]), headers, body


async def test_refusals_made_by_hypercorn_have_error_bodies_too(
    kallichore_server: ServerAddress,
) -> None:
    response = await raw_exchange(kallichore_server, b"GARBAGE\r\n\r\n")
    assert_error(response, 400, "400")
    # A WebSocket handshake without Sec-WebSocket-Key, with a valid token
    # for an existing session (so the TCP fast path passes it on).
    await create_session(kallichore_server, "no-key")
    head = (
        "GET /sessions/no-key/channels HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {kallichore_server.token}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert_error(await raw_exchange(kallichore_server, head.encode()), 400, "400")
