"""Run the kallichore server as a real subprocess and talk HTTP to it.

Stdlib only (``subprocess``, ``socket``, ``http.client``), so these helpers
test the server exactly as a client such as Positron sees it: a process that
writes a connection file (or sends a handshake) and answers HTTP/1.1 on TCP
127.0.0.1 or on a Unix socket.

Every wait here is bounded; :class:`ServerFactory` stops (and if need be
kills) every process it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tests.support.paths import REPO_ROOT, with_repo_on_path

__all__ = [
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Endpoint",
    "Reply",
    "ServerFactory",
    "ServerProcess",
    "UnixHTTPConnection",
    "raw_request",
    "run_cli",
    "server_command",
    "server_env",
    "short_tempdir",
]

#: How long a server may take to become reachable.
START_TIMEOUT = 10.0  # seconds
#: How long a server may take to exit once asked to.
STOP_TIMEOUT = 10.0  # seconds
#: How long one HTTP exchange may take.
HTTP_TIMEOUT = 10.0  # seconds
_POLL = 0.02  # seconds


def server_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a server: ours, without ``RUST_LOG``, able to import kallichore.

    Settings a developer may have exported (``KALLICHORE_*``, a
    ``kallichore.toml`` in their Jupyter config directory) are left out, so
    the server sees only the flags and ``overrides`` a test gives it.
    ``overrides`` maps names to values; ``None`` removes the variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALLICHORE_")}
    env["KALLICHORE_CONFIG"] = "none"
    env.pop("RUST_LOG", None)
    with_repo_on_path(env)
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def server_command(*args: str, subcommand: str = "serve") -> list[str]:
    """``python -m kallichore serve <args>`` (or another subcommand) with this interpreter."""
    return [sys.executable, "-m", "kallichore", subcommand, *args]


def run_cli(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = STOP_TIMEOUT,
    subcommand: str = "serve",
) -> subprocess.CompletedProcess[str]:
    """Run the server CLI (or ``subcommand``, say ``client``) to completion.

    For invocations that must exit by themselves: ``subprocess.run`` kills
    the process if it outlives ``timeout``.
    """
    return subprocess.run(
        server_command(*args, subcommand=subcommand),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def short_tempdir(prefix: str = "kc-it-") -> Iterator[Path]:
    """A fresh directory directly under /tmp (Unix socket paths are capped at 104 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over an AF_UNIX stream socket (``Host: localhost``)."""

    def __init__(self, path: str, timeout: float = HTTP_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Reply:
    """One HTTP response, fully read."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


#: Marker for "send the endpoint's own token".
_OWN_TOKEN = object()


@dataclass(frozen=True)
class Endpoint:
    """How to reach a running server: TCP port or Unix socket path, and its token."""

    transport: str
    port: int | None = None
    socket_path: str | None = None
    token: str | None = None

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Endpoint:
        """From a connection file / handshake object."""
        return cls(
            transport=details["transport"],
            port=details.get("port"),
            socket_path=details.get("socket_path"),
            token=details.get("bearer_token"),
        )

    def connection(self, timeout: float = HTTP_TIMEOUT) -> http.client.HTTPConnection:
        if self.transport == "tcp":
            assert self.port is not None
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        assert self.socket_path is not None
        return UnixHTTPConnection(self.socket_path, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Any = None,
        *,
        authorization: str | object | None = _OWN_TOKEN,
        headers: Mapping[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> Reply:
        """One request on a fresh connection, closed afterwards.

        Args:
            body: bytes or str are sent as is; anything else (except ``None``)
                is sent as JSON.
            authorization: the ``Authorization`` header value; by default
                ``Bearer <token>`` if the endpoint has a token; ``None`` sends
                no header.
        """
        send_headers = dict(headers or {})
        if authorization is _OWN_TOKEN:
            if self.token is not None:
                send_headers["Authorization"] = f"Bearer {self.token}"
        elif authorization is not None:
            assert isinstance(authorization, str)
            send_headers["Authorization"] = authorization
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
            send_headers.setdefault("Content-Type", "application/json")
        if data is not None:
            send_headers.setdefault("Content-Length", str(len(data)))
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=data, headers=send_headers)
            response = conn.getresponse()
            payload = response.read()
            return Reply(
                status=response.status,
                headers={k.lower(): v for k, v in response.getheaders()},
                body=payload,
            )
        finally:
            conn.close()

    def open_raw(self, timeout: float = HTTP_TIMEOUT) -> socket.socket:
        """A connected raw stream socket to the server."""
        if self.transport == "tcp":
            assert self.port is not None
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        assert self.socket_path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        return sock


def _response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def raw_request(endpoint: Endpoint, request: bytes, *, timeout: float = HTTP_TIMEOUT) -> bytes:
    """Send raw request bytes; read until the response is complete (by Content-Length) or EOF."""
    deadline = time.monotonic() + timeout
    with endpoint.open_raw(timeout) as sock:
        sock.sendall(request)
        data = b""
        while not _response_complete(data):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"incomplete response after {timeout} s: {data!r}")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


# --------------------------------------------------------------------------- processes


class ServerProcess:
    """One server subprocess; stdout and stderr go to files (no pipe can fill up)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        workdir: Path,
        env: Mapping[str, str | None] | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
        cwd: Path | str = REPO_ROOT,
    ) -> None:
        """Start ``python -m kallichore serve <args>``, or ``command`` if given, in ``cwd``."""
        self.args = list(args)
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".out", dir=workdir)
        os.close(fd)
        self.stdout_path = Path(name)
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self._stdout: TextIO = open(self.stdout_path, "w")  # noqa: SIM115
        self._stderr: TextIO = open(self.stderr_path, "w")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                list(command) if command is not None else server_command(*args),
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                cwd=cwd,
                env=server_env(env),
                start_new_session=True,
            )
        except BaseException:
            self._close_files()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"server {self.args} (pid {self.pid}, exit {self.proc.poll()})\n"
            f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"
        )

    def _check_alive(self, waiting_for: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"server exited while waiting for {waiting_for}\n{self.describe()}"
            )

    def wait_for_path(self, path: Path | str, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``path`` exists (the server must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            self._check_alive(str(path))
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear within {timeout} s\n{self.describe()}")
            time.sleep(_POLL)

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """Wait until stdout contains ``text``; returns stdout."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.stdout()
            if text in out:
                return out
            self._check_alive(repr(text))
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed within {timeout} s\n{self.describe()}")
            time.sleep(_POLL)

    def read_connection_file(
        self, path: Path | str, timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """Wait for the connection file and parse it (tolerating a half-written file)."""
        deadline = time.monotonic() + timeout
        while True:
            self.wait_for_path(path, max(0.0, deadline - time.monotonic()))
            try:
                with open(path) as f:
                    details: dict[str, Any] = json.load(f)
                return details
            except json.JSONDecodeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_POLL)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the server to exit by itself; returns the exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server did not exit within {timeout} s\n{self.describe()}"
            ) from None

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``; always reaps. Idempotent."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        self._stdout.close()
        self._stderr.close()


class ServerFactory:
    """Starts servers and guarantees they are all stopped by :meth:`close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[ServerProcess] = []

    def start(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> ServerProcess:
        server = ServerProcess(
            args, workdir=self.workdir, env=env, command=command, pass_fds=pass_fds
        )
        self.servers.append(server)
        return server

    def close(self) -> None:
        errors: list[BaseException] = []
        for server in self.servers:
            try:
                server.stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        self.servers.clear()
        if errors:
            raise errors[0]
