"""A ``python -m kallichore serve`` process on one transport, for the channel tests.

The server runs from this checkout in a short private directory (socket paths
must stay under 104 bytes), tagged with ``MARKER_VAR`` so a module can prove
that nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.support.kernel_server import MARKER_VAR
from tests.support.paths import with_repo_on_path
from tests.support.server_process import UnixHTTPConnection

TOKEN = "channels-test-token"
#: Bound on one HTTP exchange with the server.
HTTP_TIMEOUT = 30.0  # seconds
#: Bound on a server writing its connection file.
SERVER_READY_TIMEOUT = 20.0  # seconds


class ChannelServer:
    """A ``python -m kallichore serve`` process on one transport."""

    def __init__(self, transport: str, marker: str, extra: tuple[str, ...] = ()) -> None:
        self.transport = transport
        self.marker = marker
        self.extra = extra
        # Short: socket paths must stay under 104 bytes.
        self.dir = tempfile.mkdtemp(prefix="kcch-", dir="/tmp")
        self.connection_file = os.path.join(self.dir, "server.json")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.socket_path = ""

    def start(self) -> ChannelServer:
        argv = [sys.executable, "-m", "kallichore", "serve", "--transport", self.transport]
        token_file = os.path.join(self.dir, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        argv += ["--connection-file", self.connection_file, "--token", token_file]
        if self.transport == "socket":
            argv += ["--socket-dir", self.dir]
        argv += self.extra
        env = dict(os.environ)
        env[MARKER_VAR] = self.marker
        with_repo_on_path(env)
        env["TMPDIR"] = self.dir
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            return self._wait_ready()
        except BaseException:
            self.stop()  # a server that never got ready must not outlive the test
            raise

    def _wait_ready(self) -> ChannelServer:
        assert self.proc is not None
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                with open(self.connection_file) as f:
                    details = json.load(f)
                if details.get("port") or details.get("socket_path"):
                    self.port = int(details.get("port") or 0)
                    self.socket_path = details.get("socket_path") or ""
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not os.environ.get("KC_KEEP_TEST_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.transport == "tcp":
            conn: http.client.HTTPConnection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=HTTP_TIMEOUT
            )
        else:
            conn = UnixHTTPConnection(self.socket_path, HTTP_TIMEOUT)
        all_headers = {"Authorization": f"Bearer {TOKEN}"}
        all_headers.update(headers or {})
        all_headers = {k: v for k, v in all_headers.items() if v}
        data = None if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def session(self, session_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/sessions/{session_id}")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result
