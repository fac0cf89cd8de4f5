"""Process-level tests of the server command line (``python -m kallichore serve``).

Each test runs the real server as a subprocess and talks real HTTP to it over
TCP 127.0.0.1 or the Unix socket, checking the contract of
Kallichore's command line, REST status and server endpoints, and the way
Positron launches and finds the server. Servers whose checks are read-only are shared per module; every
server is stopped (killed if need be) when its fixture ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.server_process import (
    START_TIMEOUT,
    Endpoint,
    Reply,
    ServerFactory,
    ServerProcess,
    raw_request,
    run_cli,
    short_tempdir,
)

pytestmark = pytest.mark.integration

API_VERSION = "0.1.64"
TCP_KEYS = [
    "port",
    "base_path",
    "transport",
    "server_path",
    "server_pid",
    "bearer_token",
    "log_path",
    "server_id",
]
SOCKET_KEYS = [
    "socket_path",
    "transport",
    "server_path",
    "server_pid",
    "bearer_token",
    "log_path",
    "server_id",
]
STATUS_KEYS = {
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
}
GENERATED_TOKEN = re.compile(r"[0-9a-f]{64}")
SECRET = "secret_token_12345"
#: "Within a few seconds": how long a graceful shutdown may take.
SHUTDOWN_BUDGET = 5.0  # seconds
#: How long a server may keep a connection open after answering "Connection: close".
EOF_TIMEOUT = 3.0  # seconds


@dataclass
class Running:
    """A started server and what its connection file says."""

    server: ServerProcess
    details: dict[str, Any]
    endpoint: Endpoint
    connection_file: Path


def start_with_connection_file(
    factory: ServerFactory,
    connection_file: Path,
    *args: str,
    env: dict[str, str | None] | None = None,
) -> Running:
    server = factory.start("--connection-file", str(connection_file), *args, env=env)
    details = server.read_connection_file(connection_file)
    return Running(server, details, Endpoint.from_details(details), connection_file)


def assert_error_body(reply: Reply, code: str) -> None:
    """An ``error`` body (Kallichore sends 401, 404 and 405 with none; docs/sessions.md)."""
    assert reply.content_type == "application/json", reply
    error = reply.json()
    assert error["code"] == code, reply
    assert error["message"], reply


def assert_error_exit(result: Any, fragment: str) -> None:
    """Exit 1 with ``Error: ...<fragment>...`` on stderr, not a traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error_lines, f"no 'Error: ' line on stderr:\n{result.stderr}"
    assert any(fragment in line for line in error_lines), (fragment, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def poll_configuration(
    endpoint: Endpoint, predicate: Callable[[dict[str, Any]], bool], timeout: float = 2.0
) -> dict[str, Any]:
    """GET /server_configuration until ``predicate`` holds (Kallichore applies some asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = endpoint.request("GET", "/server_configuration")
        assert reply.status == 200, reply
        config: dict[str, Any] = reply.json()
        if predicate(config) or time.monotonic() > deadline:
            return config
        time.sleep(0.05)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def module_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    servers = ServerFactory(tmp_path_factory.mktemp("servers"))
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def module_sock_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.fixture(scope="module")
def tcp_server(module_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> Running:
    """TCP, authentication off; read-only checks only."""
    conn = tmp_path_factory.mktemp("tcp") / "connection.json"
    return start_with_connection_file(module_factory, conn, "--transport", "tcp", "--token", "none")


@pytest.fixture(scope="module")
def socket_server(
    module_factory: ServerFactory,
    module_sock_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Running:
    """Default transport with a connection file (socket), generated token."""
    conn = tmp_path_factory.mktemp("socket") / "connection.json"
    return start_with_connection_file(module_factory, conn, "--socket-dir", str(module_sock_dir))


@dataclass
class TokenServer:
    running: Running
    token_file: Path


@pytest.fixture(scope="module")
def token_server(
    module_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> TokenServer:
    """TCP with ``--token <file>``; never sent an authorized POST /shutdown."""
    directory = tmp_path_factory.mktemp("token")
    token_file = directory / "token"
    token_file.write_text(f"  {SECRET}\n")
    running = start_with_connection_file(
        module_factory,
        directory / "connection.json",
        "--transport",
        "tcp",
        "--token",
        str(token_file),
    )
    return TokenServer(running, token_file)


@pytest.fixture(scope="module")
def config_server(
    module_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Running:
    """``-i 5 -r 250``; only sent updates that must be rejected."""
    conn = tmp_path_factory.mktemp("config") / "connection.json"
    return start_with_connection_file(
        module_factory, conn, "--transport", "tcp", "--token", "none", "-i", "5", "-r", "250"
    )


# --------------------------------------------------------------------------- flags


def test_version_exits_0() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"kcserver {API_VERSION}"), result.stdout


def test_help_exits_0() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result
    for flag in (
        "--port",
        "--token",
        "--log-file",
        "--log-level",
        "--log-format",
        "--connection-file",
        "--handshake-socket",
        "--idle-shutdown-hours",
        "--resource-sample-interval",
        "--socket-dir",
        "--unix-socket",
        "--transport",
    ):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--no-such-flag"], "--no-such-flag"),
        (["--port", "abc"], "--port"),
        (["--port", "70000"], "--port"),
        (["--idle-shutdown-hours", "-1"], "--idle-shutdown-hours"),
        (["--resource-sample-interval", "x"], "--resource-sample-interval"),
        (["--max-message-size", "abc"], "--max-message-size"),
        (["--max-message-size", "10"], "--max-message-size"),
        (["--client-buffer-size", "-5"], "--client-buffer-size"),
        (["--log-format", "xml"], "--log-format"),
    ],
    ids=[
        "unknown-flag",
        "port-abc",
        "port-70000",
        "idle-hours-negative",
        "interval-x",
        "message-size-abc",
        "message-size-tiny",
        "buffer-negative",
        "log-format-xml",
    ],
)
def test_usage_errors_exit_2(args: list[str], mentions: str, tmp_path: Path) -> None:
    conn = tmp_path / "connection.json"
    result = run_cli(*args, "--transport", "tcp", "--connection-file", str(conn))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "usage:" in result.stderr, result.stderr
    assert mentions in result.stderr, result.stderr
    assert not conn.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--transport", "bogus"],
            "Error: Invalid transport type 'bogus'. Valid values are 'tcp', "
            "'socket' (Unix only), and 'named-pipe' (Windows only).",
        ),
        (
            ["--transport", "named-pipe"],
            "Error: Named pipes (--transport named-pipe) are not supported on Unix systems. "
            "Use --transport socket or --transport tcp instead.",
        ),
        (
            # The default transport becomes "socket" with --connection-file.
            ["--port", "8080"],
            "Error: The --port argument can only be used with TCP transport. "
            "Current transport: socket. Either remove --port or use --transport tcp.",
        ),
        (
            ["--unix-socket", "{sock_dir}/s.sock", "--transport", "tcp"],
            "Error: The --unix-socket argument can only be used with socket transport. "
            "Current transport: tcp. Either remove --unix-socket or use --transport socket.",
        ),
    ],
    ids=["bogus", "named-pipe", "port-with-socket", "unix-socket-with-tcp"],
)
@pytest.mark.skipif(sys.platform == "win32", reason="Unix messages")
def test_transport_validation_exits_1(
    args: list[str], message: str, tmp_path: Path, sock_dir: Path
) -> None:
    conn = tmp_path / "connection.json"
    args = [a.format(sock_dir=sock_dir) for a in args]
    result = run_cli(*args, "--connection-file", str(conn), "--socket-dir", str(sock_dir))
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert message in result.stderr.splitlines(), result.stderr
    assert not conn.exists()
    assert list(sock_dir.iterdir()) == []


# --------------------------------------------------------------------------- TCP


def test_tcp_connection_file(tcp_server: Running) -> None:
    details = tcp_server.details
    assert list(details) == TCP_KEYS
    assert stat.S_IMODE(os.stat(tcp_server.connection_file).st_mode) == 0o600
    port = details["port"]
    assert isinstance(port, int)
    assert 0 < port < 65536
    assert details["base_path"] == f"http://127.0.0.1:{port}"
    assert details["transport"] == "tcp"
    assert details["bearer_token"] is None
    assert details["log_path"] is None
    assert details["server_pid"] == tcp_server.server.pid
    assert os.path.isabs(details["server_path"])
    # Run as `python -m kallichore serve`, yet still a program one can run.
    assert os.access(details["server_path"], os.X_OK), details["server_path"]
    assert not details["server_path"].endswith(".py")
    assert isinstance(details["server_id"], str)
    assert details["server_id"]


def test_tcp_status(tcp_server: Running) -> None:
    reply = tcp_server.endpoint.request("GET", "/status")
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    status = reply.json()
    assert set(status) == STATUS_KEYS
    assert status["sessions"] == 0
    assert status["active"] == 0
    assert status["busy"] is False
    assert status["busy_seconds"] == 0
    for key in ("idle_seconds", "uptime_seconds"):
        assert isinstance(status[key], int), status
        assert status[key] >= 0, status
    assert status["version"] == API_VERSION
    assert status["process_id"] == tcp_server.details["server_pid"] == tcp_server.server.pid
    assert status["server_id"] == tcp_server.details["server_id"]
    started = status["started"]
    assert started.endswith("Z"), started
    started_at = dt.datetime.fromisoformat(started)
    assert abs((dt.datetime.now(dt.UTC) - started_at).total_seconds()) < 120


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux-only")
def test_process_name_is_kcserver(tcp_server: Running) -> None:
    first_line = Path(f"/proc/{tcp_server.server.pid}/status").read_text().splitlines()[0]
    assert first_line == "Name:\tkcserver"


def test_unknown_path_is_404_with_an_error_body(tcp_server: Running) -> None:
    reply = tcp_server.endpoint.request("GET", "/no/such/path")
    assert reply.status == 404
    assert_error_body(reply, "404")


def test_wrong_method_is_405_with_an_error_body(tcp_server: Running) -> None:
    reply = tcp_server.endpoint.request("DELETE", "/status")
    assert reply.status == 405
    assert_error_body(reply, "405")
    assert reply.headers["allow"] == "GET, HEAD"


def test_sessions_list_is_empty(tcp_server: Running) -> None:
    reply = tcp_server.endpoint.request("GET", "/sessions")
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    assert reply.json() == {"total": 0, "sessions": []}


def test_token_none_accepts_bearer_null(tcp_server: Running) -> None:
    # Positron sends "Bearer null" when the server runs without a token.
    reply = tcp_server.endpoint.request("GET", "/sessions", authorization="Bearer null")
    assert reply.status == 200, reply


def test_server_configuration_defaults(tcp_server: Running) -> None:
    reply = tcp_server.endpoint.request("GET", "/server_configuration")
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    # No idle_shutdown_hours (never), no log_level (default info is not reported).
    assert reply.json() == {"resource_sample_interval_ms": 1000}


# --------------------------------------------------------------------------- Unix socket


def test_socket_connection_file(socket_server: Running, module_sock_dir: Path) -> None:
    details = socket_server.details
    pid = socket_server.server.pid
    assert list(details) == SOCKET_KEYS
    assert "port" not in details
    assert "base_path" not in details
    assert details["transport"] == "socket"
    # --socket-dir holds the generated kc-<pid>.sock.
    assert details["socket_path"] == str(module_sock_dir / f"kc-{pid}.sock")
    assert details["server_pid"] == pid
    assert details["log_path"] is None
    assert os.path.isabs(details["server_path"])
    assert stat.S_IMODE(os.stat(socket_server.connection_file).st_mode) == 0o600
    mode = os.stat(details["socket_path"]).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_generated_token_in_connection_file(socket_server: Running) -> None:
    token = socket_server.details["bearer_token"]
    assert isinstance(token, str)
    assert GENERATED_TOKEN.fullmatch(token), token
    endpoint = socket_server.endpoint
    assert endpoint.request("GET", "/sessions", authorization=None).status == 401
    assert endpoint.request("GET", "/sessions").status == 200
    # The connection file is the only place the token goes.
    server = socket_server.server
    assert token not in server.stdout() + server.stderr()


@pytest.mark.parametrize("host", ["localhost", "whatever"])
def test_socket_raw_status(socket_server: Running, host: str) -> None:
    request = f"GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    response = raw_request(socket_server.endpoint, request).decode()
    assert "HTTP/1.1 200 OK" in response, response
    assert "application/json" in response, response
    body = response.partition("\r\n\r\n")[2]
    assert f'"process_id":{socket_server.server.pid}' in body, body


@pytest.mark.parametrize("transport", ["tcp", "socket"])
def test_connection_close_is_honoured(
    transport: str, tcp_server: Running, socket_server: Running
) -> None:
    """After answering a ``Connection: close`` request the server closes (RFC 9112 9.6)."""
    endpoint = (tcp_server if transport == "tcp" else socket_server).endpoint
    request = b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    data = b""
    eof = False
    with endpoint.open_raw(timeout=EOF_TIMEOUT) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + EOF_TIMEOUT
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    eof = True
                    break
                data += chunk
    assert eof, f"no EOF within {EOF_TIMEOUT} s after the response: {data!r}"
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data


def test_unix_socket_creates_missing_directories(
    factory: ServerFactory, sock_dir: Path, tmp_path: Path
) -> None:
    path = sock_dir / "sub" / "dir" / "s.sock"
    running = start_with_connection_file(
        factory, tmp_path / "connection.json", "--unix-socket", str(path)
    )
    assert running.details["transport"] == "socket"
    assert running.details["socket_path"] == str(path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    reply = running.endpoint.request("GET", "/status")
    assert reply.status == 200, reply
    assert reply.json()["process_id"] == running.server.pid


def test_unix_socket_path_too_long(sock_dir: Path, tmp_path: Path) -> None:
    prefix = f"{sock_dir}/"
    path = prefix + "x" * (110 - len(prefix) - len(".sock")) + ".sock"
    assert len(os.fsencode(path)) == 110
    conn = tmp_path / "connection.json"
    result = run_cli("--unix-socket", path, "--connection-file", str(conn))
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert not os.path.exists(path)
    assert list(sock_dir.iterdir()) == []
    assert not conn.exists()
    assert_error_exit(result, "Unix socket path too long")


# --------------------------------------------------------------------------- token


def test_token_file_read_and_deleted(token_server: TokenServer) -> None:
    assert not token_server.token_file.exists()
    assert token_server.running.details["bearer_token"] == SECRET


#: (method, path, body) of the endpoints that need the token.
PROTECTED: list[tuple[str, str, Any]] = [
    ("GET", "/sessions", None),
    ("POST", "/shutdown", None),
    ("GET", "/server_configuration", None),
    ("POST", "/client_heartbeat", {}),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong_token", f"Bearer {SECRET}x", f"Basic {SECRET}", SECRET],
    ids=["missing", "wrong", "longer", "basic", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
def test_protected_endpoints_reject_bad_tokens(
    token_server: TokenServer, method: str, path: str, body: Any, authorization: str | None
) -> None:
    reply = token_server.running.endpoint.request(method, path, body, authorization=authorization)
    assert reply.status == 401, reply
    assert_error_body(reply, "401")
    # Still alive: a rejected /shutdown must not stop the server.
    assert token_server.running.server.returncode is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [p for p in PROTECTED if p[1] != "/shutdown"],
    ids=[f"{m} {p}" for m, p, _ in PROTECTED if p != "/shutdown"],
)
def test_protected_endpoints_accept_token(
    token_server: TokenServer, method: str, path: str, body: Any, scheme: str
) -> None:
    reply = token_server.running.endpoint.request(
        method, path, body, authorization=f"{scheme} {SECRET}"
    )
    assert reply.status == 200, reply


@pytest.mark.parametrize("authorization", [None, "Bearer wrong_token"], ids=["none", "wrong"])
def test_status_needs_no_token(token_server: TokenServer, authorization: str | None) -> None:
    reply = token_server.running.endpoint.request("GET", "/status", authorization=authorization)
    assert reply.status == 200, reply
    assert reply.json()["process_id"] == token_server.running.server.pid


def test_token_64_chars_accepted(factory: ServerFactory, tmp_path: Path) -> None:
    token = "t" * 64
    token_file = tmp_path / "token"
    token_file.write_text(token)
    running = start_with_connection_file(
        factory, tmp_path / "connection.json", "--transport", "tcp", "--token", str(token_file)
    )
    assert running.details["bearer_token"] == token
    assert not token_file.exists()
    assert running.endpoint.request("GET", "/sessions").status == 200


@pytest.mark.parametrize(
    "content", [None, "", "  \n\t\n", "t" * 65], ids=["missing", "empty", "blank", "65-chars"]
)
def test_bad_token_file_exits_1(content: str | None, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    conn = tmp_path / "connection.json"
    result = run_cli(
        "--transport", "tcp", "--token", str(token_file), "--connection-file", str(conn)
    )
    assert_error_exit(result, str(token_file))
    assert not conn.exists()


def start_logging_to_file(
    factory: ServerFactory, tmp_path: Path, *args: str
) -> tuple[Running, Path]:
    """A TCP server with token :data:`SECRET` and ``--log-file``; ``(server, log file)``."""
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SECRET}\n")
    log_file = tmp_path / "server.log"
    running = start_with_connection_file(
        factory,
        tmp_path / "connection.json",
        "--transport",
        "tcp",
        "--token",
        str(token_file),
        "--log-file",
        str(log_file),
        *args,
    )
    return running, log_file


def test_token_never_logged(factory: ServerFactory, tmp_path: Path) -> None:
    running, log_file = start_logging_to_file(factory, tmp_path, "--log-level", "trace")
    assert running.details["log_path"] == str(log_file)
    assert log_file.exists()
    endpoint = running.endpoint
    assert endpoint.request("GET", "/status").status == 200
    assert endpoint.request("GET", "/sessions").status == 200
    assert endpoint.request("POST", "/client_heartbeat", {"process_id": os.getpid()}).status == 200
    assert endpoint.request("GET", "/sessions", authorization="Bearer nope").status == 401
    assert endpoint.request("GET", "/server_configuration").json()["log_level"] == "trace"
    reply = endpoint.request("POST", "/shutdown")
    assert reply.status == 200, reply
    assert reply.body == b"null"
    assert running.server.wait() == 0
    log = log_file.read_text()
    assert log.strip(), "the trace-level log file is empty"
    assert SECRET not in log
    assert SECRET not in running.server.stdout() + running.server.stderr()


ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_text_log_lines_are_dated_and_requests_are_logged(
    factory: ServerFactory, tmp_path: Path
) -> None:
    running, log_file = start_logging_to_file(factory, tmp_path)
    assert running.endpoint.request("GET", "/status").status == 200
    assert running.endpoint.request("POST", "/shutdown").status == 200
    assert running.server.wait() == 0
    lines = log_file.read_text().splitlines()
    assert lines
    for line in lines:
        assert re.match(rf"{ISO_TIME} \[(TRACE|DEBUG|INFO|WARNING|ERROR)\] ", line), line
    assert any(re.search(r"\[INFO\] kallichore\.access: GET /status 200 ", x) for x in lines)


def test_json_log_format(factory: ServerFactory, tmp_path: Path) -> None:
    running, log_file = start_logging_to_file(factory, tmp_path, "--log-format", "json")
    endpoint = running.endpoint
    assert endpoint.request("GET", f"/status?token={SECRET}").status == 200
    assert endpoint.request("GET", "/sessions", authorization="Bearer nope-nope").status == 401
    assert endpoint.request("POST", "/shutdown").status == 200
    assert running.server.wait() == 0
    text = log_file.read_text()
    assert SECRET not in text
    assert "nope-nope" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        assert re.fullmatch(ISO_TIME, entry["time"]), entry
        assert {"level", "logger", "message"} <= entry.keys(), entry
    access = [e for e in entries if e["logger"] == "kallichore.access"]
    assert [(e["method"], e["path"], e["status"], e["level"]) for e in access] == [
        ("GET", "/status?token=***", 200, "INFO"),
        ("GET", "/sessions", 401, "WARNING"),
        ("POST", "/shutdown", 200, "INFO"),
    ]
    assert all(isinstance(e["duration_ms"], float) for e in access)
    # The server's own stdout (the banner) is not the log; the log on stdout is JSON too.
    stdout_lines = [x for x in running.server.stdout().splitlines() if x.startswith("{")]
    assert stdout_lines
    assert all(json.loads(x)["time"] for x in stdout_lines)


# --------------------------------------------------------------------------- bind and announce failures


def test_port_in_use_exits_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port))
    assert_error_exit(result, str(port))


def test_connection_file_directory_missing_exits_1(sock_dir: Path) -> None:
    conn = f"/nonexistent-kc-{uuid.uuid4().hex}/x.json"
    result = run_cli(
        "--connection-file", conn, "--transport", "socket", "--socket-dir", str(sock_dir)
    )
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert list(sock_dir.iterdir()) == []
    assert_error_exit(result, conn)


# --------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("how", ["post-shutdown", "sigterm", "sigint"])
def test_graceful_shutdown(
    how: str, factory: ServerFactory, sock_dir: Path, tmp_path: Path
) -> None:
    running = start_with_connection_file(
        factory, tmp_path / "connection.json", "--socket-dir", str(sock_dir)
    )
    socket_path = running.details["socket_path"]
    assert os.path.exists(socket_path)
    assert running.endpoint.request("GET", "/status").status == 200
    started = time.monotonic()
    if how == "post-shutdown":
        reply = running.endpoint.request("POST", "/shutdown")
        assert reply.status == 200, reply
        assert reply.body == b"null"
    else:
        running.server.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    code = running.server.wait()
    elapsed = time.monotonic() - started
    assert code == 0, running.server.describe()
    assert elapsed < SHUTDOWN_BUDGET, f"took {elapsed:.1f} s"
    assert not os.path.exists(socket_path)
    assert list(sock_dir.iterdir()) == []
    # It held the token: a clean exit removes it.
    assert not running.connection_file.exists()


# --------------------------------------------------------------------------- handshake socket


def test_handshake_socket(factory: ServerFactory, sock_dir: Path) -> None:
    handshake_path = sock_dir / "handshake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(handshake_path))
        listener.listen(1)
        listener.settimeout(START_TIMEOUT)
        server = factory.start(
            "--handshake-socket",
            str(handshake_path),
            "--transport",
            "socket",
            "--socket-dir",
            str(sock_dir),
        )
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            pytest.fail(f"no handshake connection within {START_TIMEOUT} s\n{server.describe()}")
        with conn:
            conn.settimeout(START_TIMEOUT)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    details = json.loads(data)
    assert list(details) == SOCKET_KEYS
    assert details["transport"] == "socket"
    assert details["server_pid"] == server.pid
    assert details["socket_path"] == str(sock_dir / f"kc-{server.pid}.sock")
    assert GENERATED_TOKEN.fullmatch(details["bearer_token"])
    assert details["log_path"] is None
    endpoint = Endpoint.from_details(details)
    reply = endpoint.request("GET", "/status")
    assert reply.status == 200, reply
    status = reply.json()
    assert status["process_id"] == server.pid
    assert status["server_id"] == details["server_id"]
    assert endpoint.request("GET", "/sessions").status == 200


# --------------------------------------------------------------------------- log level


@pytest.mark.parametrize(
    ("args", "rust_log", "reported", "warning"),
    [
        (["--log-level", "bogus"], None, None, "Invalid log level 'bogus'; using 'info'"),
        ([], "debug", "debug", None),
        (["--log-level", "warn"], "debug", "warn", None),
        ([], "kallichore=debug", None, "Invalid log level 'kallichore=debug'; using 'info'"),
    ],
    ids=["flag-bogus", "rust-log-debug", "flag-beats-env", "rust-log-filter"],
)
def test_log_level(
    args: list[str],
    rust_log: str | None,
    reported: str | None,
    warning: str | None,
    factory: ServerFactory,
    tmp_path: Path,
) -> None:
    running = start_with_connection_file(
        factory,
        tmp_path / "connection.json",
        "--transport",
        "tcp",
        "--token",
        "none",
        *args,
        env={"RUST_LOG": rust_log},
    )
    assert running.endpoint.request("GET", "/status").status == 200
    config = running.endpoint.request("GET", "/server_configuration").json()
    if reported is None:
        assert "log_level" not in config, config
    else:
        assert config.get("log_level") == reported, config
    out = running.server.stdout()
    if warning is None:
        assert "Invalid log level" not in out
    else:
        assert warning in out.splitlines(), out


# --------------------------------------------------------------------------- server configuration


def test_server_configuration_flags_and_updates(factory: ServerFactory, tmp_path: Path) -> None:
    running = start_with_connection_file(
        factory,
        tmp_path / "connection.json",
        "--transport",
        "tcp",
        "--token",
        "none",
        "-i",
        "5",
        "-r",
        "250",
    )
    endpoint = running.endpoint

    def post(body: Any) -> None:
        reply = endpoint.request("POST", "/server_configuration", body)
        assert reply.status == 200, (body, reply)
        assert reply.body == b"null"

    config = endpoint.request("GET", "/server_configuration").json()
    assert config == {"idle_shutdown_hours": 5, "resource_sample_interval_ms": 250}

    post({"idle_shutdown_hours": -1})
    config = poll_configuration(endpoint, lambda c: "idle_shutdown_hours" not in c)
    assert config == {"resource_sample_interval_ms": 250}

    post({"resource_sample_interval_ms": 50})  # clamped to 100
    config = poll_configuration(endpoint, lambda c: c["resource_sample_interval_ms"] != 250)
    assert config == {"resource_sample_interval_ms": 100}

    post({"resource_sample_interval_ms": 300, "not_a_field": [1, 2]})  # unknown field ignored
    config = poll_configuration(endpoint, lambda c: c["resource_sample_interval_ms"] != 100)
    assert config == {"resource_sample_interval_ms": 300}

    post({"idle_shutdown_hours": 7})
    config = poll_configuration(endpoint, lambda c: "idle_shutdown_hours" in c)
    assert config == {"idle_shutdown_hours": 7, "resource_sample_interval_ms": 300}

    post({})
    assert endpoint.request("GET", "/server_configuration").json() == config
    assert running.server.returncode is None


@pytest.mark.parametrize(
    ("body", "check"),
    [
        (
            {"idle_shutdown_hours": 70000},
            lambda r: r.json() == {"code": "400", "message": "idle_shutdown_hours is too large"},
        ),
        (
            {"resource_sample_interval_ms": -5},
            lambda r: b"resource_sample_interval_ms" in r.body,
        ),
        ({"idle_shutdown_hours": "5"}, lambda r: b"idle_shutdown_hours" in r.body),
        ({"idle_shutdown_hours": 5.5}, lambda r: b"idle_shutdown_hours" in r.body),
        (b"not json", lambda r: b"ServerConfiguration" in r.body),
        (b"", lambda r: b"Missing required body parameter ServerConfiguration" in r.body),
        (b"null", lambda r: b"Missing required body parameter ServerConfiguration" in r.body),
        (b"[1, 2]", lambda r: b"ServerConfiguration" in r.body),
    ],
    ids=[
        "idle-too-large",
        "interval-negative",
        "idle-string",
        "idle-float",
        "not-json",
        "empty",
        "null",
        "array",
    ],
)
def test_server_configuration_rejects(
    config_server: Running, body: Any, check: Callable[[Reply], bool]
) -> None:
    endpoint = config_server.endpoint
    reply = endpoint.request("POST", "/server_configuration", body)
    assert reply.status == 400, reply
    assert check(reply), reply
    # A rejected update changes nothing.
    config = endpoint.request("GET", "/server_configuration").json()
    assert config == {"idle_shutdown_hours": 5, "resource_sample_interval_ms": 250}
