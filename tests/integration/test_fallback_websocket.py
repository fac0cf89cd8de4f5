"""Close codes on the fallback WebSocket path, over a raw socket.

A channel upgrade that is the second request on a kept-alive TCP connection
is served by the app's route (hypercorn and wsproto), not by the fast path.
A bad frame there must get the same answer as on the other paths: a Close
frame saying why (1007, 1009), then the connection ends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from tests.support.server_process import Endpoint, ServerFactory

pytestmark = pytest.mark.integration

#: The smallest limit the server takes, so an oversized message stays small.
MAX_MESSAGE = 65536  # bytes
READ_TIMEOUT = 10.0  # seconds
SESSION = "fallback"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    servers = ServerFactory(tmp_path_factory.mktemp("servers"))
    try:
        conn_file = servers.workdir / "conn.json"
        server = servers.start(
            "--transport", "tcp", "--connection-file", str(conn_file),
            "--max-message-size", str(MAX_MESSAGE),
        )  # fmt: skip
        endpoint = Endpoint.from_details(server.read_connection_file(conn_file))
        body = {
            "session_id": SESSION, "display_name": "x", "language": "x", "username": "u",
            "input_prompt": ">", "continuation_prompt": ".", "argv": [],
            "working_directory": str(Path.cwd()), "env": [], "interrupt_mode": "message",
            "session_mode": "console", "startup_environment": "none",
        }  # fmt: skip
        reply = endpoint.request("PUT", "/sessions", body)
        assert reply.status == 200, reply
        yield endpoint
    finally:
        servers.close()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    return data


def upgrade_on_kept_alive(endpoint: Endpoint) -> tuple[socket.socket, WSConnection]:
    """A WebSocket on the channel route, after a first request on the connection."""
    sock = endpoint.open_raw(READ_TIMEOUT)
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    time.sleep(0.05)  # the body came in the same write as the head
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(
        ws.send(
            Request(
                host="localhost",
                target=f"/sessions/{SESSION}/channels",
                extra_headers=[(b"authorization", f"Bearer {endpoint.token}".encode())],
            )
        )
    )
    events = []
    while not any(isinstance(e, AcceptConnection) for e in events):
        chunk = sock.recv(65536)
        assert chunk, "closed instead of accepting the upgrade"
        ws.receive_data(chunk)
        events.extend(ws.events())
    return sock, ws


def close_code_then_eof(sock: socket.socket, ws: WSConnection) -> int:
    """Read to EOF; the code of the server's Close frame (which must come)."""
    code: int | None = None
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        ws.receive_data(chunk)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                code = event.code
    sock.close()
    assert code is not None, "the connection ended without a Close frame"
    return code


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (zero mask key, so the payload is as given)."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    elif len(payload) < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, len(payload))
    return head + b"\x00\x00\x00\x00" + payload


def test_bad_utf8_gets_1007_on_the_fallback_path(endpoint: Endpoint) -> None:
    sock, ws = upgrade_on_kept_alive(endpoint)
    sock.sendall(masked_frame(0x1, b"\xff\xfe"))
    assert close_code_then_eof(sock, ws) == 1007


def test_oversized_message_gets_1009_on_the_fallback_path(endpoint: Endpoint) -> None:
    sock, ws = upgrade_on_kept_alive(endpoint)
    # The server may close before it has read everything.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(masked_frame(0x1, b"x" * (MAX_MESSAGE + 1)))
    assert close_code_then_eof(sock, ws) == 1009


def test_oversized_in_pieces_gets_1009_on_the_fallback_path(endpoint: Endpoint) -> None:
    """A message over the limit spread over continuation frames."""
    sock, ws = upgrade_on_kept_alive(endpoint)
    piece = b"y" * (MAX_MESSAGE // 2)
    frames = [
        masked_frame(0x1, piece, fin=False),
        masked_frame(0x0, piece, fin=False),
        masked_frame(0x0, b"zz"),
    ]
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for frame in frames:
            sock.sendall(frame)
    assert close_code_then_eof(sock, ws) == 1009


def test_a_good_session_survives_the_refusals(endpoint: Endpoint) -> None:
    """The server is still up and the session still exists afterwards."""
    reply = endpoint.request("GET", f"/sessions/{SESSION}")
    assert reply.status == 200, reply
