"""kallichore soak test: sessions churning for minutes against one real server.

    make soak                                   # 600 s, seed 1
    SOAK_SECONDS=60 SOAK_SEED=7 make soak       # a short run with another seed

One ``python -m kallichore serve`` on 127.0.0.1 (TCP, a random port), real
ipykernels, and ``SOAK_WORKERS`` (default 4) client threads. Each worker, with
its own seeded random stream, loops until the time is up: create and start a
session (interrupt mode message or signal), connect its WebSocket, then run a
random series of operations on it --

* **execute**: print 1 to 5,000 numbered lines; every line is checked for
  loss, duplication and order once the kernel reports idle;
* **interrupt**: a ``time.sleep(60)`` cell is interrupted over REST; the
  reply must be ``KeyboardInterrupt``;
* **restart**: ``POST /restart``, then a cell must run on the new kernel over
  the same WebSocket;
* **reconnect**: close the WebSocket and open a new one;

-- and finally kill and delete it (or, for the last session, leave it running
so the server is stopped with kernels alive). Meanwhile one thread samples the
server's RSS, open descriptors and threads every second and another times
``GET /status`` four times a second. At the end the server gets SIGTERM, and
every process this run started (found by a marker in its environment) that
is still alive 2 s after the server exits counts as an orphan (and is
killed).

Bounded: the run stops by itself after ``SOAK_SECONDS`` plus the current
operations (each bounded, at most 120 s), traffic is at most 5,000 short
lines per cell, everything is loopback, and the temporary directory is
removed. The exit status is 0 only if nothing was lost, duplicated or
reordered, no operation failed and there were no orphans.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
import systems as S
from wsclient import WebSocket

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SEED = int(os.environ.get("SOAK_SEED", "1"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "4"))
#: Bound on any single wait for the kernel (a reply, output, a restart).
OP_TIMEOUT = 120.0  # seconds
LINE_COUNTS = [1, 10, 100, 1000, 5000]
OPERATIONS = ["execute", "interrupt", "restart", "reconnect"]
WEIGHTS = [6, 1, 1, 2]


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


class Tally:
    """Counters shared by the workers (under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def add(self, **counts: int) -> None:
        with self.lock:
            self.counts.update(counts)

    def error(self, worker: int, op: str, exc: BaseException) -> None:
        text = str(exc)
        if len(text) > 400:  # a startupError carries the kernel's whole traceback
            text = text[:200] + " ... " + text[-200:]
        line = f"worker {worker} {op}: {type(exc).__name__}: {text}"
        log("ERROR", line)
        with self.lock:
            self.counts["op_errors"] += 1
            if len(self.errors) < 50:
                self.errors.append(line)


class SoakSession:
    """One session: its id and a WebSocket on it."""

    def __init__(self, server: S.Kallichore, http: S.Http, rng: random.Random) -> None:
        self.server = server
        self.http = http
        self.sid = "soak-" + uuid.uuid4().hex[:10]
        body = {
            "session_id": self.sid,
            "display_name": self.sid,
            "language": "python",
            "username": "soak",
            "input_prompt": ">>> ",
            "continuation_prompt": "... ",
            "argv": S.KERNELS["ipykernel"],
            "working_directory": S.WORKDIR,
            "env": [],
            "interrupt_mode": rng.choice(["message", "signal"]),
            "connection_timeout": 60,
        }
        self.request("PUT", "/sessions", body)
        self.request("POST", f"/sessions/{self.sid}/start")
        self.conn = self.connect()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        status, value = self.http.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {value}")
        return value

    def connect(self) -> S.WsConn:
        headers = {"Authorization": f"Bearer {S.TOKEN}"}
        ws = WebSocket(self.server.address, f"/sessions/{self.sid}/channels", headers)
        return S.WsConn(ws)

    def run_cell(self, code: str, on_output: Any = None) -> tuple[dict[str, Any], str]:
        """Execute ``code``; (reply content, all stdout) once reply and idle are in."""
        msg_id = self.conn.execute(code)
        deadline = time.monotonic() + OP_TIMEOUT
        reply: dict[str, Any] | None = None
        idle = False
        out: list[str] = []
        while reply is None or not idle:
            channel, msg_type, parent, content = self.conn.next(deadline)
            if parent != msg_id:
                continue
            if channel == "shell" and msg_type == "execute_reply":
                reply = content
            elif msg_type == "status" and content.get("execution_state") == "idle":
                idle = True
            elif msg_type == "stream" and content.get("name") == "stdout":
                out.append(content["text"])
                if on_output is not None:
                    on_output()
        return reply, "".join(out)

    def close(self, *, kill: bool) -> None:
        self.conn.close()
        if not kill:
            return
        status, value = self.http.request("POST", f"/sessions/{self.sid}/kill")
        # KS-3: the kernel already exited (a failed restart); delete it all the same.
        if status != 200 and not (isinstance(value, dict) and value.get("code") == "KS-3"):
            raise RuntimeError(f"POST /sessions/{self.sid}/kill: {status} {value}")
        for _ in range(100):
            status, _ = self.http.request("DELETE", f"/sessions/{self.sid}")
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"session {self.sid} could not be deleted after kill")


def check_lines(text: str, tag: str, sent: int) -> dict[str, int]:
    """Loss, duplication and order of ``tag i`` lines for i in range(sent)."""
    numbers = [int(line.split()[1]) for line in text.splitlines() if line.startswith(tag + " ")]
    seen = set(numbers)
    out_of_order = sum(1 for a, b in itertools.pairwise(numbers) if b <= a)
    return {
        "lines_sent": sent,
        "lines_received": len(numbers),
        "lines_lost": sent - len(seen & set(range(sent))),
        "lines_duplicated": len(numbers) - len(seen),
        "lines_out_of_order": out_of_order,
    }


def op_execute(session: SoakSession, rng: random.Random, tally: Tally, tag: str) -> None:
    sent = rng.choice(LINE_COUNTS)
    reply, text = session.run_cell(f"for i in range({sent}):\n    print({tag!r}, i)")
    if reply.get("status") != "ok":
        raise RuntimeError(f"execute reply {reply.get('status')}: {reply.get('ename')}")
    tally.add(executes=1, **check_lines(text, tag, sent))


def op_interrupt(session: SoakSession, rng: random.Random, tally: Tally, tag: str) -> None:
    fired: list[float] = []

    def interrupt_once() -> None:
        if not fired:
            fired.append(time.monotonic())
            session.request("POST", f"/sessions/{session.sid}/interrupt")

    code = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    reply, _ = session.run_cell(code, on_output=interrupt_once)
    if reply.get("ename") != "KeyboardInterrupt":
        raise RuntimeError(f"interrupt: reply {reply.get('status')} {reply.get('ename')}")
    tally.add(interrupts=1)


def op_restart(session: SoakSession, rng: random.Random, tally: Tally, tag: str) -> None:
    session.request("POST", f"/sessions/{session.sid}/restart")
    reply, text = session.run_cell("print('back')")
    if reply.get("status") != "ok" or "back" not in text:
        raise RuntimeError(f"after restart: {reply.get('status')} {text!r}")
    tally.add(restarts=1)


def op_reconnect(session: SoakSession, rng: random.Random, tally: Tally, tag: str) -> None:
    session.conn.close()
    session.conn = session.connect()
    tally.add(reconnects=1)


OPS = {
    "execute": op_execute,
    "interrupt": op_interrupt,
    "restart": op_restart,
    "reconnect": op_reconnect,
}


def worker(index: int, server: S.Kallichore, deadline: float, tally: Tally) -> None:
    rng = random.Random(f"{SEED}-{index}")
    http = server._client()
    cell = 0
    try:
        while time.monotonic() < deadline:
            try:
                session = SoakSession(server, http, rng)
            except Exception as exc:
                tally.error(index, "create", exc)
                time.sleep(1)
                continue
            tally.add(sessions=1)
            last = False
            for _ in range(rng.randint(2, 12)):
                if time.monotonic() >= deadline:
                    last = True
                    break
                op = rng.choices(OPERATIONS, WEIGHTS)[0]
                cell += 1
                try:
                    OPS[op](session, rng, tally, f"w{index}c{cell}")
                except Exception as exc:
                    tally.error(index, op, exc)
                    break
            try:
                # The last session stays up: the server is stopped with it running.
                session.close(kill=not last)
                tally.add(kills=0 if last else 1)
            except Exception as exc:
                tally.error(index, "kill", exc)
    finally:
        http.close()


class ServerProbe:
    """Samples the server process and times ``GET /status`` until stopped."""

    def __init__(self, server: S.Kallichore) -> None:
        self.server = server
        self.proc = psutil.Process(server.pid)
        self.samples: list[tuple[int, int, int]] = []
        self.status_ms: list[float] = []
        self.status_failures = 0
        self.stop = threading.Event()

    def sample(self) -> tuple[int, int, int]:
        with self.proc.oneshot():
            return self.proc.memory_info().rss, self.proc.num_fds(), self.proc.num_threads()

    def run_sampler(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.sample())

    def run_status(self) -> None:
        http = self.server._client()
        try:
            while not self.stop.wait(0.25):
                t0 = time.perf_counter()
                try:
                    status, _ = http.request("GET", "/status")
                except OSError:
                    status = 0
                if status == 200:
                    self.status_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    self.status_failures += 1
        finally:
            http.close()


def stop_server(server: S.Kallichore) -> tuple[float, list[int]]:
    """SIGTERM the server; (seconds to exit, pids of orphans found and killed)."""
    assert server.proc is not None
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        log("server did not exit within 60 s of SIGTERM; killing it")
        with contextlib.suppress(OSError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    exit_seconds = time.monotonic() - t0
    time.sleep(2)
    return exit_seconds, S.sweep()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report(
    tally: Tally,
    probe: ServerProbe,
    start: tuple[int, int, int],
    end: tuple[int, int, int],
    elapsed: float,
    exit_seconds: float,
    orphans: list[int],
    server_log: str,
) -> bool:
    c = tally.counts
    peak = tuple(max(s[i] for s in [start, *probe.samples, end]) for i in range(3))
    print()
    print(
        f"soak: {elapsed:.0f} s, seed {SEED}, {WORKERS} workers, real ipykernel, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  sessions {c['sessions']}  executes {c['executes']}  interrupts {c['interrupts']}  "
        f"restarts {c['restarts']}  reconnects {c['reconnects']}  kills {c['kills']}"
    )
    print(
        f"  lines sent {c['lines_sent']}  received {c['lines_received']}  lost "
        f"{c['lines_lost']}  duplicated {c['lines_duplicated']}  out of order "
        f"{c['lines_out_of_order']}"
    )
    print(f"  failed operations {c['op_errors']}")
    for line in tally.errors:
        print(f"    {line}")
    for name, i, fmt in (("RSS", 0, mib), ("fds", 1, str), ("threads", 2, str)):
        print(f"  server {name:8} start {fmt(start[i])}  peak {fmt(peak[i])}  end {fmt(end[i])}")
    print(
        f"  /status  {len(probe.status_ms)} requests  p50 {percentile(probe.status_ms, 50):.1f} ms"
        f"  p99 {percentile(probe.status_ms, 99):.1f} ms  max "
        f"{max(probe.status_ms, default=float('nan')):.1f} ms  failed {probe.status_failures}"
    )
    print(
        f"  server exit after SIGTERM {exit_seconds:.1f} s; orphans after shutdown "
        f"{len(orphans)} {orphans if orphans else ''}"
    )
    with open(server_log, errors="replace") as f:
        log_text = f.read()
    tracebacks = log_text.count("Traceback")
    errors = log_text.count("[ERROR]")
    print(f"  server log: {errors} ERROR lines, {tracebacks} tracebacks")
    return not (
        c["lines_lost"]
        or c["lines_duplicated"]
        or c["lines_out_of_order"]
        or c["op_errors"]
        or orphans
    )


def main() -> int:
    S.setup_environment()
    server = S.Kallichore("tcp")
    log(f"soak: {SECONDS:.0f} s, seed {SEED}, {WORKERS} workers; starting kcserver")
    server.start()
    ok = False
    try:
        probe = ServerProbe(server)
        start = probe.sample()
        tally = Tally()
        t0 = time.monotonic()
        deadline = t0 + SECONDS
        threads = [
            threading.Thread(target=probe.run_sampler, daemon=True),
            threading.Thread(target=probe.run_status, daemon=True),
        ]
        threads += [
            threading.Thread(target=worker, args=(i, server, deadline, tally))
            for i in range(WORKERS)
        ]
        for t in threads:
            t.start()
        next_log = t0
        while any(t.is_alive() for t in threads[2:]):
            time.sleep(0.5)
            if time.monotonic() >= next_log:
                next_log += 30
                with tally.lock:
                    counts = dict(tally.counts)
                log(f"{time.monotonic() - t0:.0f} s: {counts}")
        elapsed = time.monotonic() - t0
        end = probe.sample()
        probe.stop.set()
        for t in threads[:2]:
            t.join()
        server_log = os.path.join(server.dir, "server.log")
        exit_seconds, orphans = stop_server(server)
        ok = report(tally, probe, start, end, elapsed, exit_seconds, orphans, server_log)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        S._stop_process(server.proc, grace=10)
        S.sweep()
        S.cleanup_workdir()
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
