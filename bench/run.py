"""kallichore benchmark: direct ZeroMQ vs kallichore (TCP, Unix socket) vs Kernel Gateway.

    bench/.venv/bin/python bench/run.py [--quick] [--only W1,W2] [--out bench/results]

One process tree: this process is the client for every system and starts
every server and kernel itself. Each workload runs in rounds; in each round
every system runs one block, in an order that rotates from round to round
(alternating runs). Results: ``<out>/latest.json``, ``latest.md``, ``latest.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import systems as S
import workloads as W
from report import write_all

FULL = {
    "rtt_rounds": 5, "rtt_per_round": 100,
    "print_rounds": 5, "print_lines": 20_000, "print_timeout": 60,
    "fire_rounds": 5, "fire_n": 100_000, "fire_timeout": 60,
    "start_rounds": 10, "conc_rounds": 2, "conc_n": 20,
    "rss_counts": [10, 50], "status_requests": 500, "status_sessions": 5,
    "sampling_sessions": 10, "sampling_host_procs": 3000, "sampling_window_s": 60,
}
QUICK = {
    "rtt_rounds": 2, "rtt_per_round": 50,
    "print_rounds": 1, "print_lines": 5_000, "print_timeout": 20,
    "fire_rounds": 1, "fire_n": 20_000, "fire_timeout": 20,
    "start_rounds": 2, "conc_rounds": 1, "conc_n": 20,
    "rss_counts": [10, 50], "status_requests": 100, "status_sessions": 5,
    "sampling_sessions": 10, "sampling_host_procs": 3000, "sampling_window_s": 20,
}
WORKLOADS = ["rtt", "print", "firehose", "start", "concurrent", "rss", "status", "sampling"]
#: The workloads that run on fresh servers of their own, after the shared ones.
OWN_SERVER = {"rss", "sampling"}


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def rotated(items: list[Any], r: int) -> list[Any]:
    k = r % len(items)
    return items[k:] + items[:k]


def fresh(system: S.System, conn: S.Conn) -> S.Conn:
    """A new WebSocket to the same kallichore session.

    The blocking client answers pings only while it reads, and on the Unix
    socket the server drops a client with more than 3 unanswered pings (40 s):
    while the other systems run their blocks, ours would be dropped. So each
    block starts on a fresh connection (outside the timed region)."""
    if isinstance(system, S.Kallichore):
        sid = system.sessions.pop(conn)
        conn.close()
        return system.connect(sid)
    return conn


def run(params: dict[str, Any], only: list[str], skip_kg: bool) -> dict[str, Any]:
    systems: list[S.System] = [S.Direct(), S.Kallichore("tcp"), S.Kallichore("socket")]
    if not skip_kg:
        systems.append(S.KernelGateway())
    raw: dict[str, dict[str, Any]] = {w: {s.name: [] for s in systems} for w in WORKLOADS}
    errors: list[str] = []
    # Started only for the workloads that share them.
    shared = systems if set(only) - OWN_SERVER else []
    for s in shared:
        s.start()
        log("started", s.name, "pid", s.pid)
    try:
        # --- execute round trip and flushed print: one ipykernel per system
        if "rtt" in only or "print" in only:
            conns = {s.name: s.open("ipykernel")[0] for s in systems}
            for s in systems:
                W.execute_rtt(conns[s.name], 10)  # warm-up
            if "rtt" in only:
                for r in range(params["rtt_rounds"]):
                    for s in rotated(systems, r):
                        conns[s.name] = fresh(s, conns[s.name])
                        raw["rtt"][s.name] += W.execute_rtt(conns[s.name], params["rtt_per_round"])
                    log("rtt round", r + 1)
            if "print" in only:
                for r in range(params["print_rounds"]):
                    for s in rotated(systems, r):
                        conns[s.name] = fresh(s, conns[s.name])
                        res = W.flushed_print(conns[s.name], params["print_lines"],
                                              params["print_timeout"])
                        raw["print"][s.name].append(res)
                        log("print", s.name, {k: res[k] for k in
                                              ("lines_per_s", "delivered", "idle_arrived")})
                        if not res["idle_arrived"]:
                            # The kernel may still be printing; start afresh.
                            S.close(s, conns[s.name])
                            conns[s.name] = s.open("ipykernel")[0]
            for s in systems:
                S.close(s, conns[s.name])
        # --- firehose
        if "firehose" in only:
            conns = {s.name: s.open("firehose")[0] for s in systems}
            for s in systems:
                W.firehose(s, conns[s.name], 1000, 10)  # warm-up
            for r in range(params["fire_rounds"]):
                for s in rotated(systems, r):
                    conns[s.name] = fresh(s, conns[s.name])
                    res = W.firehose(s, conns[s.name], params["fire_n"], params["fire_timeout"])
                    raw["firehose"][s.name].append(res)
                    log("firehose", s.name, {k: res[k] for k in
                                             ("msgs_per_s", "delivered", "idle_arrived",
                                              "cpu_s_per_10k")})
                    if not res["idle_arrived"]:
                        S.close(s, conns[s.name])
                        conns[s.name] = s.open("firehose")[0]
            for s in systems:
                S.close(s, conns[s.name])
        # --- session start
        if "start" in only:
            for r in range(params["start_rounds"]):
                for s in rotated(systems, r):
                    raw["start"][s.name].append(W.session_start(s))
            log("start", {k: [round(x, 3) for x in v] for k, v in raw["start"].items()})
        if "concurrent" in only:
            for r in range(params["conc_rounds"]):
                for s in rotated(systems, r):
                    res = W.concurrent_start(s, params["conc_n"])
                    raw["concurrent"][s.name].append(res)
                    log("concurrent", s.name, round(res["wall_s"], 2), res["errors"][:2])
        # --- REST latency while 5 sessions flood
        if "status" in only:
            servers = [s for s in systems if s.name != "direct"]
            for s in servers:
                res = W.status_under_flood(s, params["status_sessions"],
                                           params["status_requests"])
                raw["status"][s.name].append(res)
                lat = sorted(res["latencies"])
                p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
                log("status", s.name, f"p50 {p50:.1f} ms p99 {p99:.1f} ms "
                    f"flood {res['flood_msgs_per_s']:.0f} msg/s")
    except Exception:
        errors.append(traceback.format_exc())
        log("ERROR", errors[-1])
    finally:
        for s in shared:
            s.stop()
    def on_fresh_server(workload: str, s: Any, measure: Any) -> None:
        try:
            s.start()
            res = measure(s)
            raw[workload][s.name].append(res)
            log(workload, s.name, {k: round(v, 2) for k, v in res.items()})
        except Exception:
            errors.append(traceback.format_exc())
            log("ERROR", errors[-1])
        finally:
            s.stop()

    # --- server RSS: fresh servers
    if "rss" in only:
        for s in [S.Kallichore("tcp"), S.Kallichore("socket")] + (
            [] if skip_kg else [S.KernelGateway()]
        ):
            on_fresh_server("rss", s, lambda s: W.server_rss(s, params["rss_counts"]))
    # --- resource sampling on a busy host: a fresh server, its CPU and threads
    if "sampling" in only:
        on_fresh_server("sampling", S.Kallichore("tcp"), lambda s: W.busy_host_sampling(
            s, params["sampling_sessions"], params["sampling_host_procs"],
            params["sampling_window_s"]))
    return {"raw": raw, "errors": errors, "systems": [s.name for s in systems]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller runs (a ~2.5 minute smoke test)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--skip-kg", action="store_true", help="do not run Kernel Gateway")
    ap.add_argument("--out", default=os.path.join(S.BENCH_DIR, "results"))
    args = ap.parse_args()
    only = [w for w in args.only.split(",") if w]
    params = QUICK if args.quick else FULL
    S.setup_environment()
    started = time.time()
    try:
        result = run(params, only, args.skip_kg)
    finally:
        left = S.sweep()
        if left:
            log("killed leftover processes:", left)
        S.cleanup_workdir()
    result["meta"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "params": params,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "duration_s": round(time.time() - started, 1),
        "versions": versions(),
    }
    paths = write_all(result, args.out)
    log("wrote", *paths)
    return 1 if result["errors"] else 0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("kallichore", "jupyter_kernel_gateway", "jupyter_client", "ipykernel", "pyzmq",
                "trio", "hypercorn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


if __name__ == "__main__":
    sys.exit(main())
