"""HTTP/1.1 written by hand (h11) to a server running in this process.

For tests that must see exactly what is on the wire: error bodies, refused
upgrades, access-log lines. ``address`` is the :class:`~kallichore.server.ServerAddress`
the ``kallichore_server`` fixture gives (TCP or Unix socket).
"""

from __future__ import annotations

import base64
import json
import os
import sys

import h11
import trio

from kallichore.server import ServerAddress
from tests.support.bodies import session_body

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
}


async def open_stream(address: ServerAddress) -> trio.abc.Stream:
    if address.transport == "tcp":
        assert address.port is not None
        return await trio.open_tcp_stream("127.0.0.1", address.port)
    assert address.socket_path is not None
    return await trio.open_unix_socket(address.socket_path)


async def exchange(
    address: ServerAddress,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; ``(status, headers, body)``."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = {"Host": "localhost", "Content-Length": str(len(body)), **(headers or {})}
    stream = await open_stream(address)
    async with stream:
        await stream.send_all(
            conn.send(h11.Request(method=method, target=path, headers=list(all_headers.items())))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        status, response_headers, data = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Response | h11.InformationalResponse):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
                if status == 101:
                    return status, response_headers, b""
            elif isinstance(event, h11.Data):
                data += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, response_headers, data


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upgrade_headers(**extra: str) -> dict[str, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    return {**UPGRADE, "Sec-WebSocket-Key": key, **extra}


async def create_session(address: ServerAddress, session_id: str) -> None:
    """Register a session (its kernel is never started)."""
    body = json.dumps(
        session_body(
            session_id,
            argv=[sys.executable, "-c", "pass"],
            working_directory="/",
            interrupt_mode="signal",
        )
    ).encode()
    status, _, created = await exchange(address, "PUT", "/sessions", bearer(address.token), body)
    assert status == 200, created
