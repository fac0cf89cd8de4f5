"""The server-level REST endpoints, through Quart-Trio's test client (tier 3)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio
import trio.testing

from kallichore.api.app import create_app
from kallichore.config import ServerConfig
from kallichore.server import Server
from tests.support.app_client import AUTH, TOKEN, request

# Every (method, path) the app serves today, with a body that parses.
PROTECTED = [
    ("GET", "/sessions", None),
    ("GET", "/server_configuration", None),
    ("POST", "/server_configuration", b"{}"),
    ("POST", "/client_heartbeat", b"{}"),
    ("POST", "/shutdown", None),
]


@pytest.fixture
async def server() -> Server:
    return Server(ServerConfig(token=TOKEN, server_path="/usr/bin/kcserver"))


@pytest.fixture
async def client(server: Server) -> Any:
    return create_app(server.api).test_client()


async def test_status_is_open_and_complete(client: Any, server: Server) -> None:
    status, body, headers = await request(client, "GET", "/status")
    assert status == 200
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert list(data) == [
        "sessions",
        "active",
        "busy",
        "idle_seconds",
        "busy_seconds",
        "uptime_seconds",
        "version",
        "process_id",
        "started",
        "server_id",
    ]
    assert data["version"] == "0.1.64"
    assert data["process_id"] == os.getpid()
    assert data["sessions"] == data["active"] == 0
    assert data["busy"] is False
    assert data["started"].endswith("Z")
    assert data["server_id"] == server.server_id
    assert b" " not in body, "responses are compact JSON"


async def test_status_counts_idle_time_since_start_with_no_sessions(
    autojump_clock: trio.testing.MockClock, client: Any
) -> None:
    await trio.sleep(125)
    _, body, _ = await request(client, "GET", "/status")
    data = json.loads(body)
    assert data["uptime_seconds"] == 125
    assert data["idle_seconds"] == 125
    assert data["busy_seconds"] == 0


async def test_api_version_is_configurable() -> None:
    server = Server(ServerConfig(token=None, api_version="0.1.68"))
    _, body, _ = await request(create_app(server.api).test_client(), "GET", "/status")
    assert json.loads(body)["version"] == "0.1.68"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_every_other_endpoint_requires_the_token(
    client: Any, method: str, path: str, body: bytes | None
) -> None:
    for headers, reason in (
        ({}, "missing"),
        ({"Authorization": "Bearer wrong-token-0000"}, "wrong"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing"),
        ({"Authorization": TOKEN}, "missing"),
        ({"Authorization": "Bearer "}, "missing"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong"),
    ):
        status, data, response_headers = await request(client, method, path, body, headers)
        assert status == 401, headers
        assert response_headers["content-type"] == "application/json"
        error = json.loads(data)
        assert error["code"] == "401"
        assert f"token {reason}" in error["message"], (headers, error)
        assert TOKEN not in data.decode()
        assert "wrong-token" not in data.decode()
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _, _ = await request(
            client, method, path, body, {"Authorization": f"{scheme}   {TOKEN}"}
        )
        assert status == 200, scheme


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_no_token_mode_accepts_anything(method: str, path: str, body: bytes | None) -> None:
    client = create_app(Server(ServerConfig(token=None)).api).test_client()
    for headers in ({}, {"Authorization": "Bearer null"}):
        status, _, _ = await request(client, method, path, body, headers)
        assert status == 200


async def test_unknown_paths_404_and_wrong_methods_405_with_error_bodies(client: Any) -> None:
    for method, path, expected, allow in [
        ("GET", "/nope", 404, None),
        ("GET", "/status/", 404, None),
        ("DELETE", "/status", 405, "GET, HEAD"),
        ("PUT", "/shutdown", 405, "POST"),
        ("GET", "/shutdown", 405, "POST"),
        ("POST", "/status", 405, "GET, HEAD"),
        ("PATCH", "/sessions", 405, "GET, HEAD, PUT"),
    ]:
        for headers in (AUTH, {}):
            status, body, response_headers = await request(client, method, path, headers=headers)
            assert status == expected, (method, path)
            assert response_headers["content-type"] == "application/json"
            error = json.loads(body)
            assert error["code"] == str(expected), error
            assert path in error["message"], error
            assert response_headers.get("allow") == allow, (method, path)
            if allow is not None:
                assert error["details"] == f"Allowed: {allow}"


async def test_unknown_session_is_404_ks1_with_an_error_body(client: Any) -> None:
    for method, path in [
        ("GET", "/sessions/nobody"),
        ("DELETE", "/sessions/nobody"),
        ("POST", "/sessions/nobody/interrupt"),
        ("GET", "/sessions/nobody/connection_info"),
    ]:
        status, body, headers = await request(client, method, path, headers=AUTH)
        assert status == 404, (method, path)
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"code": "KS-1", "message": "Session nobody not found"}


async def test_websocket_upgrade_of_a_plain_route_is_400_with_an_error_body(
    client: Any,
) -> None:
    from quart.testing import WebsocketResponseError

    with pytest.RaisesGroup(WebsocketResponseError, flatten_subgroups=True) as caught:
        async with client.websocket("/status", headers=AUTH) as ws:
            await ws.receive()
    error: BaseException = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, WebsocketResponseError)
    response = error.response
    assert response.status_code == 400
    assert json.loads(await response.get_data()) == {
        "code": "400",
        "message": "/status does not accept WebSocket upgrades",
    }


async def test_oversized_body_is_413_with_an_error_body(client: Any) -> None:
    status, body, _ = await request(
        client, "POST", "/client_heartbeat", b" " * (64 * 1024 * 1024 + 1), AUTH
    )
    assert status == 413
    error = json.loads(body)
    assert error["code"] == "413"
    assert "Too Large" in error["message"]  # the phrase's wording varies by Python version


async def test_query_strings_are_ignored(client: Any) -> None:
    status, _, _ = await request(client, "GET", "/status?x=1")
    assert status == 200


async def test_sessions_list_is_empty(client: Any) -> None:
    status, body, _ = await request(client, "GET", "/sessions", headers=AUTH)
    assert status == 200
    assert json.loads(body) == {"total": 0, "sessions": []}


async def test_server_configuration_defaults(client: Any) -> None:
    _, body, _ = await request(client, "GET", "/server_configuration", headers=AUTH)
    assert json.loads(body) == {"resource_sample_interval_ms": 1000}


async def test_server_configuration_reports_flags() -> None:
    config = ServerConfig(
        token=None, idle_shutdown_hours=5, resource_sample_interval_ms=250, log_level="debug"
    )
    _, body, _ = await request(
        create_app(Server(config).api).test_client(), "GET", "/server_configuration"
    )
    assert json.loads(body) == {
        "idle_shutdown_hours": 5,
        "resource_sample_interval_ms": 250,
        "log_level": "debug",
    }


async def test_server_configuration_changes_apply_at_once(
    client: Any, server: Server, nursery: trio.Nursery
) -> None:
    await nursery.start(server.sampler.run)
    await nursery.start(server.idle.run)

    async def post(payload: Any) -> tuple[int, Any]:
        status, body, _ = await request(
            client, "POST", "/server_configuration", json.dumps(payload).encode(), AUTH
        )
        return status, json.loads(body)

    assert await post({"idle_shutdown_hours": 3}) == (200, None)
    assert server.idle.period == 3 * 3600
    assert await post({"idle_shutdown_hours": 0}) == (200, None)
    assert server.idle.period == 30
    assert await post({"idle_shutdown_hours": -1}) == (200, None)
    assert server.idle.period is None
    _, body, _ = await request(client, "GET", "/server_configuration", headers=AUTH)
    assert "idle_shutdown_hours" not in json.loads(body)

    assert await post({"resource_sample_interval_ms": 50}) == (200, None)
    assert server.sampler.interval_ms == 100, "1..99 is raised to 100"
    assert await post({"resource_sample_interval_ms": 0}) == (200, None)
    assert server.sampler.interval_ms == 0
    assert await post({"resource_sample_interval_ms": 2500, "log_level": "trace"}) == (200, None)
    assert server.sampler.interval_ms == 2500
    assert await post({"unknown_field": 1}) == (200, None)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "Missing required body parameter ServerConfiguration"),
        (b"null", "Missing required body parameter ServerConfiguration"),
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"idle_shutdown_hours": "5"}', "idle_shutdown_hours"),
        (b'{"idle_shutdown_hours": 1.5}', "idle_shutdown_hours"),
        (b'{"idle_shutdown_hours": true}', "idle_shutdown_hours"),
        (b'{"idle_shutdown_hours": 70000}', "idle_shutdown_hours is too large"),
        (b'{"idle_shutdown_hours": 99999999999999999999999}', "idle_shutdown_hours"),
        (
            b'{"resource_sample_interval_ms": -5}',
            "resource_sample_interval_ms must be non-negative",
        ),
        (
            b'{"resource_sample_interval_ms": 100000000000}',
            "resource_sample_interval_ms is too large",
        ),
        (b'{"log_level": "loud"}', "log_level"),
    ],
)
async def test_server_configuration_rejects_bad_input(
    client: Any, server: Server, payload: bytes, message: str
) -> None:
    before = (server.idle.period, server.sampler.interval_ms)
    status, body, headers = await request(client, "POST", "/server_configuration", payload, AUTH)
    assert status == 400
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "400"
    assert message in error["message"]
    assert (server.idle.period, server.sampler.interval_ms) == before


async def test_bad_configuration_applies_nothing(client: Any, server: Server) -> None:
    payload = b'{"idle_shutdown_hours": 2, "resource_sample_interval_ms": -1}'
    status, _, _ = await request(client, "POST", "/server_configuration", payload, AUTH)
    assert status == 400
    assert server.idle.period is None, "validation happens before anything is applied"


async def test_client_heartbeat_tracks_the_pid_and_nudges(
    autojump_clock: trio.testing.MockClock, client: Any, server: Server, nursery: trio.Nursery
) -> None:
    await nursery.start(server.idle.run)
    status, body, _ = await request(
        client, "POST", "/client_heartbeat", b'{"process_id": 4242}', AUTH
    )
    assert (status, body) == (200, b"null")
    assert server.idle.client_pid == 4242
    for payload in (
        b"",
        b'{"process_id": "x"}',
        b'{"process_id": -3}',
        b'{"process_id": 4294967296}',
    ):
        status, body, _ = await request(client, "POST", "/client_heartbeat", payload, AUTH)
        assert status == 400, payload
        assert json.loads(body)["code"] == "400"
    status, _, _ = await request(client, "POST", "/client_heartbeat", b"{}", AUTH)
    assert status == 200


async def test_shutdown_sets_the_one_shutdown_event(client: Any, server: Server) -> None:
    status, body, _ = await request(client, "POST", "/shutdown", headers=AUTH)
    assert (status, body) == (200, b"null")
    assert server.shutdown_requested.is_set()
    assert server.shutdown_reason is not None
    status, _, _ = await request(client, "POST", "/shutdown", headers=AUTH)
    assert status == 200, "a second request is harmless"
