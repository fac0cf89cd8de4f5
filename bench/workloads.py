"""The workloads. Each function runs one block against one system and returns samples."""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import threading
import time
from typing import Any

import psutil
from systems import Conn, Kallichore, KernelGateway, System, Timeout, WsConn, close

PRINT_CODE = "for i in range({n}):\n    print(i, flush=True)"


def _until_idle(conn: Conn, msg_id: str, deadline: float, on_stream: Any = None) -> bool:
    """Read until the idle status for ``msg_id``; False if it never came."""
    try:
        while True:
            channel, msg_type, parent, content = conn.next(deadline)
            if channel == "shell" and parent == msg_id:
                conn.replies[msg_id] = content
                continue
            if channel != "iopub" or parent != msg_id:
                continue
            if msg_type == "stream":
                if on_stream is not None:
                    on_stream(content)
            elif msg_type == "status" and content.get("execution_state") == "idle":
                return True
    except Timeout:
        return False


def execute_rtt(conn: Conn, runs: int) -> list[float]:
    """Seconds from sending ``1`` to an idle kernel until its idle status."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        mid = conn.execute("1")
        if not _until_idle(conn, mid, time.monotonic() + 30):
            raise RuntimeError("execute_rtt: no idle within 30 s")
        out.append(time.perf_counter() - t0)
        # Let the execute_reply arrive too, so the kernel is really idle.
        conn.wait_reply(mid, timeout=30)
    return out


def flushed_print(conn: Conn, lines: int, timeout: float) -> dict[str, Any]:
    texts: list[str] = []
    messages = 0

    def on_stream(content: dict[str, Any]) -> None:
        nonlocal messages
        messages += 1
        texts.append(content.get("text", ""))

    t0 = time.perf_counter()
    mid = conn.execute(PRINT_CODE.format(n=lines))
    idle = _until_idle(conn, mid, time.monotonic() + timeout, on_stream)
    elapsed = time.perf_counter() - t0
    got = [int(x) for x in "".join(texts).split() if x.isdigit()]
    distinct = set(got)
    if idle:
        with contextlib.suppress(Timeout):
            conn.wait_reply(mid, timeout=10)
    return {
        "seconds": elapsed,
        "lines_per_s": len(got) / elapsed,
        "messages": messages,
        "messages_per_s": messages / elapsed,
        "delivered": len(got),
        "missing": lines - len(distinct & set(range(lines))),
        "duplicates": len(got) - len(distinct),
        "in_order": got == sorted(got),
        "idle_arrived": idle,
        "exactly_once": idle and got == list(range(lines)),
    }


def firehose(system: System, conn: Conn, n: int, timeout: float) -> dict[str, Any]:
    """N stream messages from the firehose kernel to one client."""
    first = last = 0.0
    count = 0

    def on_stream(_content: dict[str, Any]) -> None:
        nonlocal first, last, count
        now = time.perf_counter()
        if not count:
            first = now
        last = now
        count += 1

    cpu0 = system.cpu()
    t0 = time.perf_counter()
    mid = conn.execute(str(n))
    idle = _until_idle(conn, mid, time.monotonic() + timeout, on_stream)
    elapsed = time.perf_counter() - t0
    cpu = system.cpu() - cpu0
    if idle:
        with contextlib.suppress(Timeout):
            conn.wait_reply(mid, timeout=10)
    span = last - first
    return {
        "seconds_to_idle": elapsed,
        "msgs_per_s": count / span if span > 0 else 0.0,
        "delivered": count,
        "lost": n - count,
        "idle_arrived": idle,
        "cpu_s_per_10k": cpu / count * 10_000 if count else None,
    }


def session_start(system: System, kernel: str = "ipykernel") -> float:
    conn, elapsed = system.open(kernel)
    close(system, conn)
    return elapsed


def concurrent_start(system: System, count: int) -> dict[str, Any]:
    """``count`` sessions started at once: wall time until all are ready."""
    results: list[Any] = [None] * count
    conns: list[Conn | None] = [None] * count

    def one(i: int) -> None:
        try:
            conns[i], results[i] = system.open("ipykernel")
        except Exception as exc:  # reported, not raised
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    closers = [threading.Thread(target=close, args=(system, c)) for c in conns if c is not None]
    for t in closers:
        t.start()
    for t in closers:
        t.join(timeout=120)
    each = [r for r in results if isinstance(r, float)]
    errors = [repr(r) for r in results if not isinstance(r, float)]
    return {"wall_s": wall, "each_s": each, "errors": errors}


def server_rss(system: Kallichore | KernelGateway, counts: list[int]) -> dict[str, Any]:
    """Server RSS (MB) with 0 and then ``counts`` firehose sessions."""
    time.sleep(2)
    out: dict[str, Any] = {"0": system.rss() / 2**20}
    ids: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        if isinstance(system, Kallichore):
            sid, _ = system.create_and_start("firehose")
        else:
            sid = system.create_and_start("firehose")
        with lock:
            ids.append(sid)

    for target in counts:
        while len(ids) < target:
            batch = [threading.Thread(target=one) for _ in range(min(5, target - len(ids)))]
            for t in batch:
                t.start()
            for t in batch:
                t.join(timeout=120)
        time.sleep(2)
        out[str(target)] = system.rss() / 2**20
    for sid in ids:
        system.remove(sid)
    out["per_session_mb"] = (out[str(counts[-1])] - out["0"]) / counts[-1]
    return out


# ------------------------------------------------ REST latency under flood


def _flooder(address: Any, kind: str, token_transport: str, ids: list[str], stop: Any,
             counts: Any, port: int) -> None:  # pragma: no cover - child process
    import systems as S

    def run(i: int, sid: str) -> None:
        if kind == "kg":
            kg = S.KernelGateway()
            kg.port = port
            conn: S.Conn = kg.connect(sid)
        else:
            kc = S.Kallichore(token_transport)
            kc.address = address
            conn = kc.connect(sid)
        while not stop.is_set():
            mid = conn.execute("20000")
            n = 0

            def on(_c: Any) -> None:
                nonlocal n
                n += 1
                if n % 500 == 0:
                    with counts.get_lock():
                        counts.value += 500

            if not _until_idle(conn, mid, time.monotonic() + 10, on):
                break  # (Kernel Gateway can lose the idle)
        conn.close()

    def guarded(i: int, sid: str) -> None:
        try:
            run(i, sid)
        except Exception as exc:
            print(f"flooder {i}: {exc!r}", flush=True)

    threads = [threading.Thread(target=guarded, args=(i, sid)) for i, sid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


#: Seconds after the floods (sessions deleted) at which the server's RSS is taken.
RSS_SETTLE_S = 15


def status_under_flood(system: Kallichore | KernelGateway, sessions: int, requests: int
                       ) -> dict[str, Any]:
    ids = []
    for _ in range(sessions):
        if isinstance(system, Kallichore):
            ids.append(system.create_and_start("firehose")[0])
        else:
            ids.append(system.create_and_start("firehose"))
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counts = ctx.Value("q", 0)
    kind = "kg" if isinstance(system, KernelGateway) else "kc"
    proc = ctx.Process(
        target=_flooder,
        args=(getattr(system, "address", None), kind, getattr(system, "transport", ""), ids,
              stop, counts, getattr(system, "port", 0)),
    )
    proc.start()
    latencies = []
    peak_rss = 0
    sampling = threading.Event()

    def sample_rss() -> None:
        nonlocal peak_rss
        while not sampling.wait(0.2):
            with contextlib.suppress(Exception):
                peak_rss = max(peak_rss, system.rss() or 0)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        time.sleep(1.5)  # let the floods get going
        c0 = counts.value
        t0 = time.perf_counter()
        for _ in range(requests):
            s = time.perf_counter()
            system.status()
            latencies.append(time.perf_counter() - s)
            time.sleep(0.01)
        flood_rate = (counts.value - c0) / (time.perf_counter() - t0)
    finally:
        stop.set()
        proc.join(timeout=90)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        sampling.set()
        sampler.join()
        for sid in ids:
            system.remove(sid)
    # Memory the floods left behind, once the sessions are gone (kallichore
    # gives its heap back within 10 s: kallichore/memory.py).
    time.sleep(RSS_SETTLE_S)
    rss_after = system.rss() or 0
    return {
        "latencies": latencies,
        "flood_msgs_per_s": flood_rate,
        "peak_rss_mb": peak_rss / 1e6,
        "rss_after_mb": rss_after / 1e6,
    }


# ------------------------------------------------ resource sampling on a busy host


def _drain_usage(conn: Conn) -> int:
    """Reads what the server has sent ``conn`` so far; returns the ``resourceUsage`` events."""
    assert isinstance(conn, WsConn)
    seen = 0
    conn.ws.settimeout(0.01)
    while True:
        try:
            raw = conn.ws.recv()
        except (TimeoutError, OSError):
            return seen
        seen += b"resourceUsage" in (raw if isinstance(raw, bytes) else raw.encode())


def busy_host_sampling(
    system: Kallichore, sessions: int, host_procs: int, window_s: float
) -> dict[str, Any]:
    """The server's CPU and threads while it samples resources on a busy host.

    ``host_procs`` idle ``sleep`` processes stand in for the host's unrelated
    processes; ``sessions`` sessions have a client attached, sampled at the
    server's default 1 s interval. The clients read what they are sent (their
    ``resourceUsage`` events are counted), nothing else runs.
    """
    sleepers: list[subprocess.Popen[bytes]] = []
    conns: list[Conn] = []
    server = psutil.Process(system.pid)
    idle_threads = server.num_threads()
    try:
        for _ in range(host_procs):
            sleepers.append(
                subprocess.Popen(
                    ["sleep", "3600"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for _ in range(sessions):
            conns.append(system.open("firehose")[0])
        time.sleep(3)  # settle: the kernels' first samples
        for conn in conns:
            _drain_usage(conn)
        threads = server.num_threads()
        events = 0
        cpu0, t0 = system.cpu(), time.perf_counter()
        while time.perf_counter() - t0 < window_s:
            time.sleep(1)
            events += sum(_drain_usage(conn) for conn in conns)
            threads = max(threads, server.num_threads())
        cpu = system.cpu() - cpu0
        wall = time.perf_counter() - t0
    finally:
        for conn in conns:
            close(system, conn)
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
    return {
        "cpu_percent_of_core": 100 * cpu / wall,
        "idle_threads": idle_threads,
        "max_threads": threads,
        "usage_events_per_s": events / wall,
        "host_processes": host_procs,
        "sessions": sessions,
        "window_s": wall,
    }
