"""A ``python -m kallichore serve`` process on one transport, for the channel tests.

A :class:`~tests.support.server_process.ServerProcess` in a short private
directory (socket paths must stay under 104 bytes), tagged with ``MARKER_VAR``
so a module can prove that nothing it started outlives it, and given time to
stop its kernels when the test is done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.kernel_server import MARKER_VAR, SERVER_READY_TIMEOUT, SERVER_STOP_TIMEOUT
from tests.support.server_process import Endpoint, ServerProcess

TOKEN = "channels-test-token"
#: Bound on one HTTP exchange with the server (a session start waits for its kernel).
HTTP_TIMEOUT = 30.0  # seconds


class ChannelServer:
    """A server on ``transport`` (``"tcp"`` or ``"socket"``) with ``extra`` flags."""

    def __init__(self, transport: str, marker: str, extra: tuple[str, ...] = ()) -> None:
        self.transport = transport
        self.marker = marker
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="kcch-", dir="/tmp")
        self.connection_file = os.path.join(self.dir, "server.json")
        self.process: ServerProcess | None = None
        self.endpoint: Endpoint | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def port(self) -> int:
        if self.endpoint is None or self.endpoint.port is None:
            return 0
        return self.endpoint.port

    @property
    def socket_path(self) -> str:
        if self.endpoint is None or self.endpoint.socket_path is None:
            return ""
        return self.endpoint.socket_path

    def start(self) -> ChannelServer:
        token_file = os.path.join(self.dir, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        args = ["--transport", self.transport]
        args += ["--connection-file", self.connection_file, "--token", token_file]
        if self.transport == "socket":
            args += ["--socket-dir", self.dir]
        self.process = ServerProcess(
            [*args, *self.extra],
            workdir=Path(self.dir),
            env={MARKER_VAR: self.marker, "TMPDIR": self.dir},
        )
        try:
            details = self.process.read_connection_file(self.connection_file, SERVER_READY_TIMEOUT)
            self.endpoint = Endpoint.from_details(details)
        except BaseException:
            self.stop()  # a server that never got ready must not outlive the test
            raise
        return self

    def log(self) -> str:
        return self.process.describe() if self.process is not None else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(SERVER_STOP_TIMEOUT)
        if not os.environ.get("KC_KEEP_TEST_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request with the token (unless ``headers`` empties ``Authorization``)."""
        assert self.endpoint is not None, "not started"
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        reply = self.endpoint.request(
            method,
            path,
            None if body is None else json.dumps(body).encode(),
            authorization=None,
            headers={k: v for k, v in all_headers.items() if v},
            timeout=HTTP_TIMEOUT,
        )
        return reply.status, reply.body

    def session(self, session_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/sessions/{session_id}")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result
