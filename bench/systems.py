"""The systems under test, behind one small interface.

* ``direct``: jupyter_client talking ZeroMQ straight to the kernel (the limit);
* ``kc-tcp`` / ``kc-unix``: a kallichore server (``python -m kallichore serve``)
  on TCP or on a Unix socket, one WebSocket per session;
* ``kg``: Jupyter Kernel Gateway, ``/api/kernels`` and its channels WebSocket.

Every process is started in its own process group with the benchmark's
marker in its environment (:data:`MARKER_VAR`), so :func:`sweep` can find and
kill anything left, kernels included.
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
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil
from wsclient import WebSocket

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
PYTHON = sys.executable
MARKER_VAR = "KC_BENCH_MARKER"
MARKER = uuid.uuid4().hex
TOKEN = "bench-token-" + uuid.uuid4().hex[:8]
KERNELS = {
    "ipykernel": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "firehose": [PYTHON, os.path.join(BENCH_DIR, "firehose_kernel.py"), "-f", "{connection_file}"],
}
KG_KERNEL_NAMES = {"ipykernel": "python3", "firehose": "firehose"}
WORKDIR = tempfile.mkdtemp(prefix="kcb-", dir="/tmp")


def setup_environment() -> None:
    """Marker, and a JUPYTER_PATH with the firehose kernelspec (for direct and kg)."""
    os.environ[MARKER_VAR] = MARKER
    spec_dir = os.path.join(WORKDIR, "jupyter", "kernels", "firehose")
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": KERNELS["firehose"], "display_name": "firehose", "language": "text"}, f)
    os.environ["JUPYTER_PATH"] = os.path.join(WORKDIR, "jupyter")
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")


def sweep() -> list[int]:
    """Kill every live process carrying our marker; returns their pids."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and proc.environ().get(MARKER_VAR) == MARKER:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return [p.pid for p in found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_header(msg_type: str, session: str) -> dict[str, Any]:
    return {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "bench",
        "session": session,
        "date": datetime.now(UTC).isoformat(),
        "version": "5.3",
    }


EXECUTE_CONTENT = {
    "silent": False,
    "store_history": True,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": True,
}


class Timeout(Exception):
    pass


# ------------------------------------------------------------------ HTTP


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Http:
    """A keep-alive HTTP client (TCP with TCP_NODELAY, or a Unix socket)."""

    def __init__(self, address: tuple[str, int] | str, headers: dict[str, str], timeout: float = 120):
        self.address = address
        self.headers = headers
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if isinstance(self.address, str):
            conn: http.client.HTTPConnection = UnixHTTPConnection(self.address, self.timeout)
        else:
            conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
        conn.connect()
        if not isinstance(self.address, str):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = raw
        return resp.status, value

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ----------------------------------------------------------- connections


class Conn:
    """One client connection to one kernel: send requests, read messages."""

    session = uuid.uuid4().hex
    #: Replies seen while reading for something else, by parent msg_id.
    replies: dict[str, dict[str, Any]]

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        raise NotImplementedError

    def next(self, deadline: float) -> tuple[str, str, str | None, dict[str, Any]]:
        """(channel, msg_type, parent msg_id, content) of the next message."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def execute(self, code: str) -> str:
        return self.send("shell", "execute_request", {"code": code, **EXECUTE_CONTENT})

    def wait_reply(self, msg_id: str, timeout: float = 60.0) -> dict[str, Any]:
        if msg_id in self.replies:
            return self.replies.pop(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            channel, _, parent, content = self.next(deadline)
            if channel == "shell" and parent == msg_id:
                return content


class WsConn(Conn):
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.replies = {}

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        header = new_header(msg_type, self.session)
        self.ws.send_text(
            orjson.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                    "channel": channel,
                    "buffers": [],
                }
            )
        )
        return str(header["msg_id"])

    def next(self, deadline: float) -> tuple[str, str, str | None, dict[str, Any]]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout
            self.ws.settimeout(left)
            try:
                raw = self.ws.recv()
            except TimeoutError:
                raise Timeout from None
            msg = orjson.loads(raw)
            channel = msg.get("channel")
            if channel is None:  # kallichore "kind": "kernel" events
                continue
            parent = msg.get("parent_header") or {}
            return channel, msg["header"]["msg_type"], parent.get("msg_id"), msg["content"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ws.close()


class DirectConn(Conn):
    """jupyter_client's BlockingKernelClient, iopub and shell channels."""

    def __init__(self, km: Any, kc: Any) -> None:
        self.replies = {}
        self.km = km
        self.kc = kc

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        ch = self.kc.shell_channel if channel == "shell" else self.kc.control_channel
        msg = self.kc.session.msg(msg_type, content)
        ch.send(msg)
        return str(msg["header"]["msg_id"])

    def next(self, deadline: float) -> tuple[str, str, str | None, dict[str, Any]]:
        import zmq

        poller = zmq.Poller()
        poller.register(self.kc.iopub_channel.socket, zmq.POLLIN)
        poller.register(self.kc.shell_channel.socket, zmq.POLLIN)
        while True:
            # Drain iopub first without polling (it is the hot path).
            if self.kc.iopub_channel.msg_ready():
                msg = self.kc.iopub_channel.get_msg(timeout=0)
                return "iopub", msg["msg_type"], msg["parent_header"].get("msg_id"), msg["content"]
            if self.kc.shell_channel.msg_ready():
                msg = self.kc.shell_channel.get_msg(timeout=0)
                return "shell", msg["msg_type"], msg["parent_header"].get("msg_id"), msg["content"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout
            poller.poll(int(left * 1000) + 1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)


# --------------------------------------------------------------- systems


class System:
    name = ""
    pid: int | None = None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def open(self, kernel: str) -> tuple[Conn, float]:
        """A new session with ``kernel``, connected; and create+start-until-kernel_info seconds."""
        raise NotImplementedError

    def status(self) -> None:
        raise NotImplementedError

    def rss(self) -> int | None:
        return psutil.Process(self.pid).memory_info().rss if self.pid else None

    def cpu(self) -> float:
        if self.pid is None:
            t = psutil.Process().cpu_times()
        else:
            t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


class Direct(System):
    name = "direct"

    def open(self, kernel: str) -> tuple[Conn, float]:
        from jupyter_client.manager import KernelManager

        t0 = time.perf_counter()
        km = KernelManager(kernel_name=KG_KERNEL_NAMES[kernel])
        km.start_kernel(cwd=WORKDIR)
        import zmq

        # No receive high-water mark on iopub (jupyter_client's default is
        # 1000, which drops a firehose); the supervisors under test have none.
        ctx = zmq.Context()
        ctx.setsockopt(zmq.RCVHWM, 0)
        kc = km.client(context=ctx)
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
        except BaseException:
            DirectConn(km, kc).close()
            raise
        elapsed = time.perf_counter() - t0
        return DirectConn(km, kc), elapsed


class Kallichore(System):
    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.name = "kc-tcp" if transport == "tcp" else "kc-unix"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = ""
        self.address: tuple[str, int] | str = ""
        self.http: Http | None = None
        self.sessions: dict[Conn, str] = {}

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"{self.transport[:1]}-", dir=WORKDIR)
        cfile = os.path.join(self.dir, "server.json")
        tfile = os.path.join(self.dir, "token")
        with open(tfile, "w") as f:
            f.write(TOKEN)
        argv = [PYTHON, "-m", "kallichore", "serve", "--transport", self.transport,
                "--connection-file", cfile, "--token", tfile]
        if self.transport == "socket":
            argv += ["--socket-dir", self.dir]
        with open(os.path.join(self.dir, "server.log"), "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.dir}/server.log")
            with contextlib.suppress(OSError, ValueError):
                with open(cfile) as f:
                    info = json.load(f)
                if info.get("port") or info.get("socket_path"):
                    self.address = (
                        ("127.0.0.1", int(info["port"])) if info.get("port")
                        else info["socket_path"]
                    )
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready")
            time.sleep(0.05)
        self.http = self._client()

    def _client(self) -> Http:
        return Http(self.address, {"Authorization": f"Bearer {TOKEN}"})

    def stop(self) -> None:
        if self.http:
            self.http.close()
        _stop_process(self.proc)

    def create_and_start(self, kernel: str, http: Http | None = None) -> tuple[str, float]:
        http = http or self._client()
        sid = "b-" + uuid.uuid4().hex[:12]
        body = {
            "session_id": sid, "display_name": sid, "language": "python", "username": "bench",
            "input_prompt": ">>> ", "continuation_prompt": "... ", "argv": KERNELS[kernel],
            "working_directory": WORKDIR, "env": [], "interrupt_mode": "message",
            "connection_timeout": 120,
        }
        t0 = time.perf_counter()
        status, value = http.request("PUT", "/sessions", body)
        if status != 200:
            raise RuntimeError(f"create: {status} {value}")
        status, value = http.request("POST", f"/sessions/{sid}/start")
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"start: {status} {value}")
        return sid, elapsed

    def connect(self, sid: str, http: Http | None = None) -> WsConn:
        http = http or self._client()
        if self.transport == "tcp":
            ws = WebSocket(self.address, f"/sessions/{sid}/channels",
                           {"Authorization": f"Bearer {TOKEN}"})
        else:
            status, path = http.request("GET", f"/sessions/{sid}/channels")
            if status != 200:
                raise RuntimeError(f"channels: {status} {path}")
            ws = WebSocket(path, f"/api/channels/{sid}")
        conn = WsConn(ws)
        self.sessions[conn] = sid
        return conn

    def open(self, kernel: str) -> tuple[Conn, float]:
        http = self._client()
        try:
            sid, elapsed = self.create_and_start(kernel, http)
            return self.connect(sid, http), elapsed
        finally:
            http.close()

    def close(self, conn: Conn) -> None:
        conn.close()
        sid = self.sessions.pop(conn, None)
        if sid:
            self.remove(sid)

    def remove(self, sid: str) -> None:
        http = self._client()
        try:
            http.request("POST", f"/sessions/{sid}/kill")
            for _ in range(50):
                status, _ = http.request("DELETE", f"/sessions/{sid}")
                if status == 200:
                    break
                time.sleep(0.1)
        finally:
            http.close()

    def status(self) -> None:
        assert self.http is not None
        status, _ = self.http.request("GET", "/status")
        assert status == 200, status


class KernelGateway(System):
    name = "kg"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http: Http | None = None
        self.kernels: dict[Conn, str] = {}

    def start(self) -> None:
        self.port = free_port()
        exe = os.path.join(os.path.dirname(PYTHON), "jupyter-kernelgateway")
        argv = [exe, "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
                "--KernelGatewayApp.log_level=WARN"]
        logdir = tempfile.mkdtemp(prefix="kg-", dir=WORKDIR)
        with open(os.path.join(logdir, "kg.log"), "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=WORKDIR, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        self.pid = self.proc.pid
        self.http = Http(("127.0.0.1", self.port), {})
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kernel gateway exited early; see {logdir}/kg.log")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = self.http.request("GET", "/api")
                if status == 200:
                    return
                self.http.close()
            if time.monotonic() > deadline:
                raise RuntimeError("kernel gateway not ready")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.http:
            self.http.close()
        _stop_process(self.proc)

    def create_and_start(self, kernel: str, http: Http | None = None) -> str:
        http = http or Http(("127.0.0.1", self.port), {})
        status, value = http.request("POST", "/api/kernels", {"name": KG_KERNEL_NAMES[kernel]})
        if status not in (200, 201):
            raise RuntimeError(f"kg start: {status} {value}")
        return str(value["id"])

    def connect(self, kid: str) -> WsConn:
        ws = WebSocket(("127.0.0.1", self.port), f"/api/kernels/{kid}/channels")
        conn = WsConn(ws)
        self.kernels[conn] = kid
        return conn

    def open(self, kernel: str) -> tuple[Conn, float]:
        http = Http(("127.0.0.1", self.port), {})
        try:
            t0 = time.perf_counter()
            kid = self.create_and_start(kernel, http)
            conn = self.connect(kid)
            conn.wait_reply(conn.send("shell", "kernel_info_request", {}), timeout=120)
            return conn, time.perf_counter() - t0
        finally:
            http.close()

    def close(self, conn: Conn) -> None:
        conn.close()
        kid = self.kernels.pop(conn, None)
        if kid:
            self.remove(kid)

    def remove(self, kid: str) -> None:
        http = Http(("127.0.0.1", self.port), {})
        try:
            http.request("DELETE", f"/api/kernels/{kid}")
        finally:
            http.close()

    def status(self) -> None:
        assert self.http is not None
        status, _ = self.http.request("GET", "/api")
        assert status == 200, status


def close(system: System, conn: Conn) -> None:
    if isinstance(system, (Kallichore, KernelGateway)):
        system.close(conn)
    else:
        conn.close()


def cleanup_workdir() -> None:
    shutil.rmtree(WORKDIR, ignore_errors=True)
