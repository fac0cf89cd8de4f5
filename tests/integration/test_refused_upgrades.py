"""Refused and late WebSocket upgrades end their connection, never the server.

Each case opens one kept-alive connection to a real server (in this
process, on both listeners), sends its requests one at a time, reading each
answer before the next, then checks that the server still answers
``GET /status`` on a new connection and that the session's kernel was not
touched. Before the fix, every one of these sequences made h11 raise out of
the connection's task and stopped the server with all its kernels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import trio

from kallichore.server import ServerAddress

pytestmark = pytest.mark.integration

SESSION = "s1"
_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
STATUS = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
#: Bound on one answer; a connection that neither answers nor closes fails the case.
ANSWER_TIMEOUT = 10.0  # seconds


def upgrade(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + _KEY
        + auth
        + b"\r\n"
    )


#: name -> requests, given the server's token.
CASES: dict[str, Callable[[str], list[bytes]]] = {
    "no token": lambda token: [STATUS, upgrade(f"/sessions/{SESSION}/channels"), STATUS],
    "wrong token": lambda token: [
        STATUS,
        upgrade(f"/sessions/{SESSION}/channels", "wrong"),
        STATUS,
    ],
    "unknown session": lambda token: [STATUS, upgrade("/sessions/nope/channels", token), STATUS],
    "upgrade of /status": lambda token: [STATUS, upgrade("/status", token), STATUS],
    "two refused in a row": lambda token: [
        upgrade(f"/sessions/{SESSION}/channels"),
        upgrade(f"/sessions/{SESSION}/channels"),
        STATUS,
    ],
    "authenticated upgrade second": lambda token: [
        STATUS,
        upgrade(f"/sessions/{SESSION}/channels", token),
        STATUS,
    ],
}


async def connect(address: ServerAddress) -> trio.abc.Stream:
    if address.socket_path is not None:
        return await trio.open_unix_socket(address.socket_path)
    assert address.port is not None
    return await trio.open_tcp_stream("127.0.0.1", address.port)


async def read_answer(stream: trio.abc.Stream) -> bytes:
    """One response head and body, whatever arrived before EOF, or ``b""`` at EOF."""
    buffer = bytearray()
    try:
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return bytes(buffer)
            buffer += chunk
        head, _, body = bytes(buffer).partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length is not None and len(body) < int(length.group(1)):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            body += chunk
        return bytes(buffer)
    except trio.BrokenResourceError:  # reset by the server: the connection ended
        return bytes(buffer)


async def status_code(address: ServerAddress, path: str = "/status") -> int:
    stream = await connect(address)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {address.token}\r\n\r\n".encode()
        )
        answer = await read_answer(stream)
    return int(answer.split(b" ", 2)[1])


async def rest(address: ServerAddress, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    stream = await connect(address)
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {address.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        answer = await read_answer(stream)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1].startswith(b"2"), answer
    return json.loads(payload) if payload else None


@pytest.fixture(params=["tcp", "socket"])
def kallichore_transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_refused_or_late_upgrade_ends_only_its_connection(
    case: str, kallichore_server: ServerAddress, fake_kernel_argv: Callable[..., list[str]]
) -> None:
    assert kallichore_server.token is not None
    await rest(
        kallichore_server,
        "PUT",
        "/sessions",
        {
            "session_id": SESSION,
            "display_name": "fake",
            "language": "python",
            "username": "me",
            "input_prompt": "",
            "continuation_prompt": "",
            "argv": fake_kernel_argv(),
            "working_directory": "/tmp",
            "env": [],
            "interrupt_mode": "message",
        },
    )
    await rest(kallichore_server, "POST", f"/sessions/{SESSION}/start")
    before = await rest(kallichore_server, "GET", f"/sessions/{SESSION}")

    answers = []
    stream = await connect(kallichore_server)
    async with stream:
        for request in CASES[case](kallichore_server.token):
            try:
                await stream.send_all(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                answers.append(b"")  # the server had ended the connection
                break
            with trio.move_on_after(ANSWER_TIMEOUT) as waited:
                answers.append(await read_answer(stream))
            assert not waited.cancelled_caught, (request, answers)
    refusals = [a for a in answers if re.match(rb"HTTP/1\.1 4\d\d ", a)]
    if case != "authenticated upgrade second":
        assert refusals, answers
        # A refusal of an upgrade ends the connection, and says so.
        assert all(b"connection: close" in a.lower() for a in refusals), refusals

    assert await status_code(kallichore_server) == 200
    after = await rest(kallichore_server, "GET", f"/sessions/{SESSION}")
    assert after["process_id"] == before["process_id"]
    assert after["status"] == before["status"] == "idle"
