"""Running under systemd, without systemd: sd_notify and socket activation.

The test plays the service manager. For ``Type=notify`` it binds the
datagram socket ``$NOTIFY_SOCKET`` names (a path, or an abstract ``@`` name)
and reads what a real server sends. For socket activation it binds the
listener itself and starts the server through a small ``python -c`` shim
that moves the socket to fd 3 and ``exec``s the server, so ``$LISTEN_PID``
is the server's own pid, as systemd arranges; then it talks HTTP to it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.server_process import (
    START_TIMEOUT,
    Endpoint,
    ServerFactory,
    ServerProcess,
)

pytestmark = pytest.mark.integration

# Moves the passed descriptor to 3 and becomes the server, keeping the pid.
SHIM = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "kallichore"
os.execv(sys.executable, [sys.executable, "-m", "kallichore", "serve", *sys.argv[2:]])
"""


def start_tcp(
    factory: ServerFactory, connection_file: Path, env: dict[str, str | None]
) -> ServerProcess:
    """A TCP server without authentication, announcing itself in ``connection_file``."""
    return factory.start(
        "--transport", "tcp", "--token", "none", "--connection-file", str(connection_file), env=env
    )


def receive(sock: socket.socket) -> set[str]:
    """The ``KEY=VALUE`` lines of the next datagram."""
    sock.settimeout(START_TIMEOUT)
    data = sock.recv(4096)
    return set(data.decode().splitlines())


@pytest.mark.parametrize("namespace", ["path", "abstract"])
def test_notify_ready_then_stopping(
    namespace: str, factory: ServerFactory, sock_dir: Path, tmp_path: Path
) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with manager:
        if namespace == "path":
            address = str(sock_dir / "notify.sock")
            manager.bind(address)
            notify_socket = address
        else:
            name = f"kallichore-test-{uuid.uuid4().hex}"
            manager.bind("\0" + name)
            notify_socket = "@" + name
        connection_file = tmp_path / "connection.json"
        server = start_tcp(factory, connection_file, {"NOTIFY_SOCKET": notify_socket})
        ready = receive(manager)
        assert "READY=1" in ready, ready
        # READY comes after the announcement: a client may connect at once.
        details = json.loads(connection_file.read_text())
        assert any(line.startswith("STATUS=Listening on http://127.0.0.1:") for line in ready)
        endpoint = Endpoint.from_details(details)
        assert endpoint.request("GET", "/status").status == 200
        server.send_signal(signal.SIGTERM)
        stopping = receive(manager)
        assert "STOPPING=1" in stopping, stopping
        assert server.wait() == 0


def test_socket_activation_tcp(factory: ServerFactory, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        connection_file = tmp_path / "connection.json"
        server = factory.start(
            command=[
                sys.executable,
                "-c",
                SHIM,
                str(listener.fileno()),
                "--token",
                "none",
                "--connection-file",
                str(connection_file),
            ],
            pass_fds=(listener.fileno(),),
        )
        details = server.read_connection_file(connection_file)
        # The passed TCP socket wins over --connection-file's socket default.
        assert details["transport"] == "tcp"
        assert details["port"] == port
        assert details["base_path"] == f"http://127.0.0.1:{port}"
        assert details["server_pid"] == server.pid
        endpoint = Endpoint(transport="tcp", port=port)
        reply = endpoint.request("GET", "/status")
        assert reply.status == 200, reply
        assert reply.json()["process_id"] == server.pid
        assert endpoint.request("GET", "/sessions").json()["sessions"] == []
        assert server.wait_for_output(f"Listening at 127.0.0.1:{port}")
        assert endpoint.request("POST", "/shutdown").status == 200
        assert server.wait() == 0


def test_socket_activation_unix(factory: ServerFactory, sock_dir: Path) -> None:
    path = str(sock_dir / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(path)
        listener.listen(16)
        server = factory.start(
            command=[sys.executable, "-c", SHIM, str(listener.fileno()), "--token", "none"],
            pass_fds=(listener.fileno(),),
        )
        server.wait_for_output(f"Listening on Unix socket: {path}")
        endpoint = Endpoint(transport="socket", socket_path=path)
        assert endpoint.request("GET", "/status").status == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
        # The socket file belongs to the socket unit, which reuses it.
        assert os.path.exists(path)


def test_activation_variables_for_another_process_are_ignored(
    factory: ServerFactory, tmp_path: Path
) -> None:
    connection_file = tmp_path / "connection.json"
    server = start_tcp(factory, connection_file, {"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    details = server.read_connection_file(connection_file)
    assert Endpoint.from_details(details).request("GET", "/status").status == 200
