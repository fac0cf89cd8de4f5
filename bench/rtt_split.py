"""Where an execute round trip's time goes: before the code runs, and after.

The kernel executes ``__import__('time').time()``, so its ``execute_result``
says (on the clock every process here shares) when the code ran. Each round
trip then splits into *in* (client send until the code runs) and *out* (code
runs until the client has read the idle status), for jupyter_client talking
ZeroMQ directly and for kallichore over TCP and over the Unix socket, all
running at once and driven in alternated blocks as in ``run.py``. No probe
in the server is needed: the kernel's own work is in both halves and is the
same for every system, so the differences between systems are the bridge's.

    bench/.venv/bin/python bench/rtt_split.py [rounds] [per_round]
"""

from __future__ import annotations

import statistics
import sys
import time

import systems as S

CODE = "__import__('time').time()"


def split(conn: S.Conn, runs: int) -> list[tuple[float, float]]:
    """(in, out) seconds for ``runs`` round trips on one connection."""
    out = []
    for _ in range(runs):
        sent = time.time()
        mid = conn.execute(CODE)
        ran = None
        deadline = time.monotonic() + 30
        while True:
            channel, msg_type, parent, content = conn.next(deadline)
            arrived = time.time()
            if parent != mid:
                continue
            if channel == "shell":
                conn.replies[mid] = content
            elif msg_type == "execute_result":
                ran = float(content["data"]["text/plain"])
            elif msg_type == "status" and content.get("execution_state") == "idle":
                break
        if ran is None:
            raise RuntimeError("no execute_result before idle")
        out.append((ran - sent, arrived - ran))
        conn.wait_reply(mid, timeout=30)
    return out


def main(rounds: int, per_round: int) -> None:
    S.setup_environment()
    systems: list[S.System] = [S.Direct(), S.Kallichore("tcp"), S.Kallichore("socket")]
    samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    try:
        for s in systems:
            s.start()
        conns = {s.name: s.open("ipykernel")[0] for s in systems}
        for s in systems:
            split(conns[s.name], 30)  # warm-up
        for r in range(rounds):
            k = r % len(systems)
            for s in systems[k:] + systems[:k]:
                samples[s.name] += split(conns[s.name], per_round)
        for s in systems:
            S.close(s, conns[s.name])
    finally:
        for s in systems:
            s.stop()
        S.sweep()
        S.cleanup_workdir()
    base_in, base_out = (statistics.median(x) for x in zip(*samples["direct"], strict=True))
    for name, values in samples.items():
        t_in, t_out = (statistics.median(x) for x in zip(*values, strict=True))
        print(
            f"{name:8} in {t_in * 1e3:.3f} ms ({(t_in - base_in) * 1e3:+.3f})"
            f"  out {t_out * 1e3:.3f} ms ({(t_out - base_out) * 1e3:+.3f})"
            f"  in+out {(t_in + t_out) / (base_in + base_out):.2f}x direct"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 6, int(sys.argv[2]) if len(sys.argv) > 2 else 100
    )
