"""Helpers for integration tests that run the real server and real kernels.

Everything here is synchronous (threads, ``subprocess``, ``http.client``) and
every wait is bounded. Processes are tagged with an environment variable
(:data:`MARKER_VAR`) so that a test module can find every process it caused --
servers, kernels, kernels' children -- and prove none is left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.support.bodies import session_body
from tests.support.server_process import ServerProcess, server_env

__all__ = [
    "MARKER_VAR",
    "HttpResult",
    "KernelDroppedOutputWarning",
    "KernelServer",
    "kill_tree",
    "marked_processes",
    "wait_for",
]


class KernelDroppedOutputWarning(UserWarning):
    """A kernel's own IOPub socket dropped messages (not an error of ours).

    Shown, not raised: ``pyproject.toml`` lets this category through its
    warnings-are-errors rule. See ``docs/channels.md``.
    """


#: Environment variable carrying a per-module marker into every process we start.
MARKER_VAR = "KC_INTEGRATION_MARKER"


#: How long a server gets to write its connection file.
SERVER_READY_TIMEOUT = 20.0  # seconds
#: How long a server gets to stop its kernels and exit after SIGTERM.
SERVER_STOP_TIMEOUT = 20.0  # seconds
#: Default bound on one HTTP request (starts of 20 kernels on 2 cores are slow).
HTTP_TIMEOUT = 60.0  # seconds


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises:
        AssertionError: ``timeout`` seconds passed (the message shows the
            last value seen).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last={last!r}")
        time.sleep(interval)


class HttpResult:
    """A finished HTTP exchange."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, elapsed: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        # Error bodies carry a kernel's captured output: show enough of it to
        # diagnose a failure from CI's log alone.
        limit = 500 if self.status < 400 else 8000
        return f"<HttpResult {self.status} {self.body[:limit]!r} in {self.elapsed:.2f}s>"


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live (non-zombie) process whose environment carries ``marker``."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER_VAR) == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_tree(procs: list[psutil.Process]) -> None:
    """SIGKILL ``procs`` and their descendants (best effort, bounded)."""
    everything: dict[int, psutil.Process] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            everything[proc.pid] = proc
            for child in proc.children(recursive=True):
                everything[child.pid] = child
    for proc in everything.values():
        with contextlib.suppress(psutil.Error, OSError):
            proc.kill()
    psutil.wait_procs(list(everything.values()), timeout=5)


class KernelServer:
    """One real ``python -m kallichore serve`` process over TCP."""

    def __init__(
        self,
        workdir: str,
        marker: str,
        *,
        token: str | None = None,
        args: tuple[str, ...] = (),
        fd_limits: tuple[int, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.marker = marker
        self.token = token
        self.args = args  # extra `serve` flags
        # (soft, hard) RLIMIT_NOFILE the server process starts with.
        self.fd_limits = fd_limits
        self.name = uuid.uuid4().hex[:8]
        self.connection_file = os.path.join(workdir, f"server-{self.name}.json")
        self.tmpdir = os.path.join(workdir, f"tmp-{self.name}")
        os.makedirs(self.tmpdir, exist_ok=True)
        self.process: ServerProcess | None = None
        self.port: int = 0
        # Every kernel-ish pid we saw under this server (for teardown).
        self._seen: dict[int, psutil.Process] = {}

    # ------------------------------------------------------------- lifecycle

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    def _env_overrides(self) -> dict[str, str | None]:
        return {
            MARKER_VAR: self.marker,
            # Kernel connection files land here (tempfile.gettempdir()).
            "TMPDIR": self.tmpdir,
            # Base values for the append/prepend environment actions.
            "KC_TEST_BASE_APPEND": "base",
            "KC_TEST_BASE_PREPEND": "base",
            "KC_TEST_UNSET": None,
        }

    def env(self) -> dict[str, str]:
        """The server's environment (for other processes that must look like it)."""
        return server_env(self._env_overrides())

    def start(self) -> KernelServer:
        token = self._token_file() if self.token is not None else "none"
        serve_args = ["--transport", "tcp", "--connection-file", self.connection_file]
        serve_args += ["--token", token, *self.args]
        command = None
        if self.fd_limits is not None:
            # Set in the server process itself (no preexec_fn in a threaded test).
            command = [
                sys.executable,
                "-c",
                "import resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, {self.fd_limits}); "
                "from kallichore.cli import module_main; module_main(sys.argv[1:])",
                "serve",
                *serve_args,
            ]
        self.process = ServerProcess(
            serve_args,
            workdir=Path(self.workdir),
            env=self._env_overrides(),
            command=command,
            cwd=self.workdir,
        )
        try:
            details = self.process.read_connection_file(self.connection_file, SERVER_READY_TIMEOUT)
        except BaseException:
            self.stop()  # a server that never got ready must not outlive the test
            raise
        self.port = int(details["port"])
        return self

    def _token_file(self) -> str:
        """``--token`` names a file holding the token."""
        assert self.token is not None
        path = os.path.join(self.workdir, f"token-{self.name}")
        with open(path, "w") as f:
            f.write(self.token)
        return path

    def log(self) -> str:
        """What the server printed: its stdout, then its stderr (the log)."""
        if self.process is None:
            return ""
        return self.process.stdout() + self.process.stderr()

    def remember_children(self) -> None:
        """Note every descendant of the server (so teardown can kill them)."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._seen[child.pid] = child

    def wait_exit(self, timeout: float) -> int | None:
        """The server's exit code, or ``None`` if it is still running after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and kill whatever it left."""
        if self.process is None:
            return
        self.remember_children()
        self.process.stop(SERVER_STOP_TIMEOUT)
        leftovers = [p for p in self._seen.values() if _alive(p)]
        if leftovers:
            kill_tree(leftovers)

    # ------------------------------------------------------------------ HTTP

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        timeout: float = HTTP_TIMEOUT,
        headers: dict[str, str] | None = None,
    ) -> HttpResult:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        began = time.monotonic()
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            payload = resp.read()
            return HttpResult(
                resp.status,
                {k.lower(): v for k, v in resp.getheaders()},
                payload,
                time.monotonic() - began,
            )
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> HttpResult:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> HttpResult:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> HttpResult:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> HttpResult:
        return self.request("DELETE", path, **kw)

    # -------------------------------------------------------------- sessions

    def create(self, session_id: str, **overrides: Any) -> None:
        res = self.put("/sessions", session_body(session_id, **overrides))
        assert res.status == 200, res
        assert res.json() == {"session_id": session_id}

    def start_session(self, session_id: str) -> dict[str, Any]:
        res = self.post(f"/sessions/{session_id}/start")
        assert res.status == 200, f"start {session_id}: {res}\n{self.log()[-3000:]}"
        info: dict[str, Any] = res.json()
        self.remember_children()
        return info

    def create_and_start(self, session_id: str, **overrides: Any) -> dict[str, Any]:
        self.create(session_id, **overrides)
        return self.start_session(session_id)

    def session(self, session_id: str) -> dict[str, Any]:
        res = self.get(f"/sessions/{session_id}")
        assert res.status == 200, res
        body: dict[str, Any] = res.json()
        return body

    def status_of(self, session_id: str) -> str:
        return str(self.session(session_id)["status"])

    def wait_status(self, session_id: str, status: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (s := self.session(session_id))["status"] == status and s,
            timeout,
            what=f"session {session_id} to be {status}",
        )
        return found

    def connection_info(self, session_id: str) -> dict[str, Any]:
        res = self.get(f"/sessions/{session_id}/connection_info")
        assert res.status == 200, res
        info: dict[str, Any] = res.json()
        return info


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@contextlib.contextmanager
def running_server(
    workdir: str, marker: str, *, token: str | None = None
) -> Iterator[KernelServer]:
    """A started :class:`KernelServer`, always stopped on the way out."""
    server = KernelServer(workdir, marker, token=token)
    try:
        yield server.start()
    finally:
        server.stop()


# ------------------------------------------------------------ Jupyter client


@contextlib.contextmanager
def kernel_client(info: dict[str, Any]) -> Iterator[Any]:
    """A started ``BlockingKernelClient`` talking to the kernel directly.

    ``info`` is the session's ``connection_info`` (its key is the session key).
    """
    from jupyter_client.blocking.client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(info)  # type: ignore[arg-type]
    kc.session.key = info["key"].encode()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=15)
        yield kc
    finally:
        kc.stop_channels()


class Execution:
    """The outcome of one ``execute_request``."""

    def __init__(self, reply: dict[str, Any], stdout: str, stderr: str) -> None:
        self.reply = reply
        self.stdout = stdout
        self.stderr = stderr

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])

    def __repr__(self) -> str:
        return (
            f"<Execution {self.reply['content']!r} stdout={self.stdout!r} stderr={self.stderr!r}>"
        )


def collect_execution(kc: Any, msg_id: str, timeout: float) -> Execution:
    """Wait (bounded) for the reply to ``msg_id`` and the output it produced."""
    deadline = time.monotonic() + timeout
    reply: dict[str, Any] | None = None
    stdout: list[str] = []
    stderr: list[str] = []
    idle = False
    while reply is None or not idle:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"no complete execution of {msg_id} within {timeout:g} s "
                f"(reply={reply!r}, stdout={''.join(stdout)!r})"
            )
        if reply is None:
            with contextlib.suppress(Exception):
                msg = kc.get_shell_msg(timeout=min(remaining, 0.1))
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
        with contextlib.suppress(Exception):
            while True:
                msg = kc.get_iopub_msg(timeout=0.05)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    (stdout if msg["content"]["name"] == "stdout" else stderr).append(
                        msg["content"]["text"]
                    )
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
    return Execution(reply, "".join(stdout), "".join(stderr))


def execute(kc: Any, code: str, timeout: float = 15.0) -> Execution:
    """Run ``code`` and wait (bounded) for its reply and output."""
    msg_id = kc.execute(code, allow_stdin=False)
    return collect_execution(kc, msg_id, timeout)


def start_external_kernel(
    server: KernelServer, workdir: str, session_id: str, external: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """An ipykernel in its own process group, with the session's connection info."""
    info = server.connection_info(session_id)
    path = os.path.join(workdir, f"{session_id}-connection.json")
    with open(path, "w") as f:
        json.dump(info, f)
    kernel = subprocess.Popen(
        [sys.executable, "-m", "ipykernel_launcher", "-f", path],
        env=server.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    external.append(kernel)
    return kernel, info
