"""The session REST routes, through Quart-Trio's test client, with no kernel started.

The registry runs in the test's nursery; every session here is registered and
never started, so what is checked is the routing, validation and error mapping
of each operation -- a JSON body with the spec's code, never a 500. Starting,
killing and restarting real kernels is in tests/integration/test_sessions.py.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import trio

from kallichore.api.app import create_app
from kallichore.config import ServerConfig
from kallichore.server import Server
from tests.support.app_client import AUTH, TOKEN, request
from tests.support.bodies import session_body


@pytest.fixture
async def client(nursery: trio.Nursery) -> Any:
    # kernels_outlive_server: no lifeline watchdog; no kernel is started anyway
    server = Server(ServerConfig(token=TOKEN, kernels_outlive_server=True))
    await nursery.start(server.registry.run)
    return create_app(server.api).test_client()


def body(session_id: str, **overrides: Any) -> bytes:
    argv = [sys.executable, "-c", "pass"]
    return json.dumps(session_body(session_id, argv=argv, **overrides)).encode()


async def call(client: Any, method: str, path: str, data: bytes | None = None) -> Any:
    """The JSON answer of an authorised request, with its status."""
    status, raw, headers = await request(client, method, path, data, AUTH)
    assert headers["content-type"] == "application/json", raw
    return status, json.loads(raw)


async def test_a_new_session_is_listed_and_found(client: Any) -> None:
    assert await call(client, "PUT", "/sessions", body("s1")) == (200, {"session_id": "s1"})
    status, listing = await call(client, "GET", "/sessions")
    assert status == 200
    assert listing["total"] == 1
    assert [s["session_id"] for s in listing["sessions"]] == ["s1"]
    status, one = await call(client, "GET", "/sessions/s1")
    assert status == 200
    assert one == listing["sessions"][0]
    assert one["connected"] is False
    assert one["argv"] == [sys.executable, "-c", "pass"]


async def test_a_taken_id_is_ks0(client: Any) -> None:
    await call(client, "PUT", "/sessions", body("s1"))
    status, error = await call(client, "PUT", "/sessions", body("s1"))
    assert (status, error["code"]) == (400, "KS-0")
    assert "s1" in error["message"]


@pytest.mark.parametrize("session_id", ["../x", "a/b", "a\\b", "tab\there"])
async def test_an_id_that_could_leave_a_directory_is_refused(client: Any, session_id: str) -> None:
    status, error = await call(client, "PUT", "/sessions", body(session_id))
    assert (status, error["code"]) == (400, "400")
    status, listing = await call(client, "GET", "/sessions")
    assert listing["total"] == 0


async def test_a_body_that_does_not_match_names_each_field(client: Any) -> None:
    status, error = await call(client, "PUT", "/sessions", b'{"session_id": 3}')
    assert (status, error["code"]) == (400, "400")
    assert "expected a string @ $.session_id" in error["message"]
    assert "required field missing @ $.display_name" in error["message"]


async def test_session_routes_need_the_token(client: Any) -> None:
    for method, path in [("GET", "/sessions"), ("PUT", "/sessions"), ("GET", "/sessions/s1")]:
        status, raw, _ = await request(client, method, path, body("s1"))
        assert status == 401, (method, path)
        assert json.loads(raw)["code"] == "401"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions/nope"),
        ("DELETE", "/sessions/nope"),
        ("POST", "/sessions/nope/start"),
        ("POST", "/sessions/nope/kill"),
        ("POST", "/sessions/nope/interrupt"),
        ("POST", "/sessions/nope/restart"),
        ("GET", "/sessions/nope/connection_info"),
    ],
)
async def test_an_unknown_session_is_ks1(client: Any, method: str, path: str) -> None:
    status, error = await call(client, method, path)
    assert (status, error["code"]) == (404, "KS-1")
    assert error["message"] == "Session nope not found"


async def test_a_session_without_a_kernel_cannot_be_interrupted_or_killed(client: Any) -> None:
    await call(client, "PUT", "/sessions", body("s1"))
    status, error = await call(client, "POST", "/sessions/s1/interrupt")
    assert (status, error["code"]) == (400, "KS-10")
    status, error = await call(client, "POST", "/sessions/s1/kill")
    assert (status, error["code"]) == (400, "KS-12")


async def test_connection_info_is_there_before_the_kernel_starts(client: Any) -> None:
    await call(client, "PUT", "/sessions", body("s1"))
    status, info = await call(client, "GET", "/sessions/s1/connection_info")
    assert status == 200
    assert info["transport"] == "tcp"
    assert info["ip"] == "127.0.0.1"
    assert info["signature_scheme"] == "hmac-sha256"
    ports = [info[f"{name}_port"] for name in ("control", "shell", "stdin", "hb", "iopub")]
    assert len(set(ports)) == 5
    assert all(0 < port < 65536 for port in ports)


async def test_restart_and_adopt_check_their_bodies(client: Any) -> None:
    await call(client, "PUT", "/sessions", body("s1"))
    bad_env = b'{"env": [{"action": "bogus", "name": "A", "value": "1"}]}'
    status, error = await call(client, "POST", "/sessions/s1/restart", bad_env)
    assert (status, error["code"]) == (400, "400")
    assert "@ $.env[0].action" in error["message"]
    status, error = await call(client, "PUT", "/sessions/s1/adopt", b'{"shell_port": 1}')
    assert (status, error["code"]) == (400, "400")
    assert "required field missing @ $.control_port" in error["message"]


async def test_delete_forgets_the_session(client: Any) -> None:
    await call(client, "PUT", "/sessions", body("s1"))
    status, raw, _ = await request(client, "DELETE", "/sessions/s1", None, AUTH)
    assert (status, raw) == (200, b"null")
    status, error = await call(client, "GET", "/sessions/s1")
    assert (status, error["code"]) == (404, "KS-1")
    assert await call(client, "PUT", "/sessions", body("s1")) == (200, {"session_id": "s1"})
