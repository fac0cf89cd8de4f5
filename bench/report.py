"""Summaries, targets, and the JSON / markdown / PNG writers."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

KC = ("kc-tcp", "kc-unix")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    raw = result["raw"]
    s: dict[str, Any] = {}
    for name in result["systems"]:
        row: dict[str, Any] = {}
        rtt = [x * 1e3 for x in raw["rtt"].get(name, [])]
        row["rtt_ms"] = {"median": med(rtt), "p95": pct(rtt, 0.95), "n": len(rtt)}
        pr = raw["print"].get(name, [])
        row["print"] = {
            "lines_per_s": med([r["lines_per_s"] for r in pr]),
            "lines_per_s_p95": pct([r["lines_per_s"] for r in pr], 0.05),
            "seconds_to_idle": med([r["seconds"] for r in pr]),
            "seconds_to_idle_p95": pct([r["seconds"] for r in pr], 0.95),
            "lost_fraction": med([r["missing"] / max(1, r["missing"] + r["delivered"]
                                                     - r["duplicates"]) for r in pr]),
            "runs": len(pr),
            "exactly_once_runs": sum(bool(r["exactly_once"]) for r in pr),
            "idle_lost_runs": sum(not r["idle_arrived"] for r in pr),
        }
        fh = raw["firehose"].get(name, [])
        cpu = [r["cpu_s_per_10k"] for r in fh if r["cpu_s_per_10k"] is not None]
        row["firehose"] = {
            "msgs_per_s": med([r["msgs_per_s"] for r in fh]),
            "msgs_per_s_p95": pct([r["msgs_per_s"] for r in fh], 0.05),
            "cpu_s_per_10k": med(cpu),
            "lost_runs": sum(r["lost"] > 0 or not r["idle_arrived"] for r in fh),
            "runs": len(fh),
        }
        st = [x * 1e3 for x in raw["start"].get(name, [])]
        row["start_ms"] = {"median": med(st), "p95": pct(st, 0.95), "n": len(st)}
        cc = raw["concurrent"].get(name, [])
        row["concurrent20_s"] = {
            "median": med([r["wall_s"] for r in cc]),
            "p95": pct([r["wall_s"] for r in cc], 0.95),
            "errors": sum(len(r["errors"]) for r in cc),
        }
        rs = raw["rss"].get(name, [])
        row["rss_mb"] = rs[0] if rs else None
        stt = [x * 1e3 for r in raw["status"].get(name, []) for x in r["latencies"]]
        row["status_ms"] = {
            "median": med(stt), "p95": pct(stt, 0.95), "p99": pct(stt, 0.99), "n": len(stt),
            "flood_msgs_per_s": med([r["flood_msgs_per_s"] for r in raw["status"].get(name, [])]),
            "peak_rss_mb": med([r["peak_rss_mb"] for r in raw["status"].get(name, [])
                                if r.get("peak_rss_mb") is not None]),
            "rss_after_mb": med([r["rss_after_mb"] for r in raw["status"].get(name, [])
                                 if r.get("rss_after_mb") is not None]),
        }
        sp = raw.get("sampling", {}).get(name, [])
        row["sampling"] = sp[0] if sp else None
        s[name] = row
    return s


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    d = summary.get("direct", {})
    kg = summary.get("kg", {})
    out = []

    def add(name: str, system: str, value: Any, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "system": system, "value": value, "goal": goal, "met": ok})

    for k in KC:
        r = summary.get(k)
        if not r:
            continue
        if r["rtt_ms"]["median"] and d.get("rtt_ms", {}).get("median"):
            ratio = r["rtt_ms"]["median"] / d["rtt_ms"]["median"]
            add("execute round trip", k, f"{ratio:.2f} x direct", "<= 1.10 x", ratio <= 1.10)
        p, dp = r["print"], d.get("print", {})
        if p["lines_per_s"] and dp.get("lines_per_s"):
            ratio = p["lines_per_s"] / dp["lines_per_s"]
            ok = ratio >= 0.95 and p["exactly_once_runs"] == p["runs"]
            add("flushed print", k, f"{ratio:.2f} x direct, exactly once in "
                f"{p['exactly_once_runs']}/{p['runs']}", ">= 0.95 x, all exactly once", ok)
        f = r["firehose"]
        if f["msgs_per_s"]:
            kgr = kg.get("firehose", {}).get("msgs_per_s")
            ok = f["msgs_per_s"] >= 30_000 and (not kgr or f["msgs_per_s"] >= 2 * kgr)
            add("firehose", k, f"{f['msgs_per_s']:.0f} msg/s"
                + (f" ({f['msgs_per_s'] / kgr:.1f} x kg)" if kgr else ""),
                ">= 30 000 msg/s and >= 2 x kg", ok)
        if r["start_ms"]["median"] and d.get("start_ms", {}).get("median"):
            diff = r["start_ms"]["median"] - d["start_ms"]["median"]
            add("session start", k, f"direct {diff:+.0f} ms", "<= direct + 50 ms", diff <= 50)
        rs = r["rss_mb"]
        if rs:
            add("server RSS idle", k, f"{rs['0']:.1f} MB", "<= 60 MB", rs["0"] <= 60)
            add("server RSS per session", k, f"{rs['per_session_mb']:.2f} MB", "<= 1.5 MB",
                rs["per_session_mb"] <= 1.5)
        st = r["status_ms"]
        if st["p99"] is not None:
            add("GET /status p99 under flood", k, f"{st['p99']:.1f} ms", "< 20 ms", st["p99"] < 20)
        sp = r.get("sampling")
        if sp:
            add("sampling on a busy host, CPU", k, f"{sp['cpu_percent_of_core']:.2f} % of a core",
                "< 1 %", sp["cpu_percent_of_core"] < 1)
            # Beyond the idle server's: ZeroMQ's I/O and reaper threads and
            # one trio worker, whatever the sessions.
            add("sampling on a busy host, threads", k,
                f"{sp['max_threads']} (idle server {sp['idle_threads']})", "<= idle + 3",
                sp["max_threads"] <= sp["idle_threads"] + 3)
    return out


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(result: dict[str, Any], summary: dict[str, Any], tgts: list[dict[str, Any]]) -> str:
    names = result["systems"]
    d = summary.get("direct", {})
    meta = result.get("meta", {})

    def ratio(v: Any, ref: Any) -> str:
        return "" if not v or not ref else f" ({v / ref:.2f}x)"

    rows: list[tuple[str, list[str]]] = []

    def line(label: str, get: Any, fmt: str = "{:.1f}", ref_key: Any = None) -> None:
        cells = []
        for n in names:
            v = get(summary[n])
            ref = ref_key(d) if ref_key and d else None
            cells.append(_f(v, fmt) + (ratio(v, ref) if ref_key and n != "direct" else ""))
        rows.append((label, cells))

    line("execute `1` round trip, median ms", lambda r: r["rtt_ms"]["median"], "{:.2f}",
         lambda r: r["rtt_ms"]["median"])
    line("execute `1` round trip, p95 ms", lambda r: r["rtt_ms"]["p95"], "{:.2f}",
         lambda r: r["rtt_ms"]["p95"])
    line("flushed print, lines/s (median)", lambda r: r["print"]["lines_per_s"], "{:,.0f}",
         lambda r: r["print"]["lines_per_s"])
    line("flushed print, s to idle (median)", lambda r: r["print"]["seconds_to_idle"], "{:.2f}",
         lambda r: r["print"]["seconds_to_idle"])
    line("flushed print, s to idle (p95)", lambda r: r["print"]["seconds_to_idle_p95"], "{:.2f}")
    line("flushed print, lines lost (median %)",
         lambda r: None if r["print"]["lost_fraction"] is None
         else 100 * r["print"]["lost_fraction"], "{:.1f}")
    rows.append(("flushed print, runs exactly once / final idle lost",
                 [f"{summary[n]['print']['exactly_once_runs']}/{summary[n]['print']['runs']}"
                  f" / {summary[n]['print']['idle_lost_runs']}" for n in names]))
    line("firehose, msg/s to one client (median)", lambda r: r["firehose"]["msgs_per_s"],
         "{:,.0f}", lambda r: r["firehose"]["msgs_per_s"])
    line("firehose, CPU s per 10k msgs (server; direct: client)",
         lambda r: r["firehose"]["cpu_s_per_10k"], "{:.3f}")
    rows.append(("firehose, runs with loss", [
        f"{summary[n]['firehose']['lost_runs']}/{summary[n]['firehose']['runs']}" for n in names]))
    line("session start, median ms", lambda r: r["start_ms"]["median"], "{:.0f}",
         lambda r: r["start_ms"]["median"])
    line("session start, p95 ms", lambda r: r["start_ms"]["p95"], "{:.0f}")
    line("20 sessions at once, wall s (median)", lambda r: r["concurrent20_s"]["median"],
         "{:.2f}", lambda r: r["concurrent20_s"]["median"])
    for c in ("0", "10", "50"):
        line(f"server RSS, {c} sessions, MB", lambda r, c=c: (r["rss_mb"] or {}).get(c))
    line("server RSS per session, MB", lambda r: (r["rss_mb"] or {}).get("per_session_mb"),
         "{:.2f}")
    line("`GET /status` under 5 floods, p50 ms", lambda r: r["status_ms"]["median"], "{:.1f}")
    line("`GET /status` under 5 floods, p99 ms", lambda r: r["status_ms"]["p99"], "{:.1f}")
    line("  (flood delivered meanwhile, msg/s)", lambda r: r["status_ms"]["flood_msgs_per_s"],
         "{:,.0f}")
    line("server RSS, peak during the 5 floods, MB", lambda r: r["status_ms"]["peak_rss_mb"],
         "{:.0f}")
    line("server RSS, 15 s after the floods (sessions deleted), MB",
         lambda r: r["status_ms"]["rss_after_mb"], "{:.0f}")
    line("server CPU, 10 attached sessions sampled on a busy host, % of a core",
         lambda r: (r.get("sampling") or {}).get("cpu_percent_of_core"), "{:.2f}")
    line("server threads meanwhile", lambda r: (r.get("sampling") or {}).get("max_threads"),
         "{:.0f}")

    out = [f"# Benchmark results ({meta.get('mode', '?')} run, {meta.get('date', '?')})", ""]
    out.append(f"Machine: {meta.get('machine', '?')}; Python {meta.get('python', '?')}; "
               + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
               + f". Took {meta.get('duration_s', '?')} s.")
    out.append("")
    out.append("Ratios in parentheses are to `direct` (jupyter_client on ZeroMQ). "
               "`kg` is Jupyter Kernel Gateway (`/api/kernels` WebSocket); "
               "for `kg`, `GET /status` is `GET /api`.")
    out.append("")
    out.append("| workload | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for label, cells in rows:
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.append("| target | system | value | goal | met |")
    out.append("|---|---|---|---|---|")
    for t in tgts:
        out.append(f"| {t['target']} | {t['system']} | {t['value']} | {t['goal']} | "
                   f"{'yes' if t['met'] else 'NO'} |")
    if result.get("errors"):
        out += ["", "## Errors", ""] + ["```\n" + e + "```" for e in result["errors"]]
    return "\n".join(out) + "\n"


def chart(result: dict[str, Any], summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw, names = result["raw"], result["systems"]
    colors = {"direct": "#555555", "kc-tcp": "#1f77b4", "kc-unix": "#2ca02c", "kg": "#d62728"}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))

    def box(ax: Any, data: dict[str, list[float]], title: str, unit: str, log: bool) -> None:
        labels = [n for n in names if data.get(n)]
        if not labels:
            ax.set_visible(False)
            return
        parts = ax.boxplot([data[n] for n in labels], tick_labels=labels, showfliers=True,
                           whis=(5, 95), patch_artist=True, flierprops={"markersize": 2})
        for patch, n in zip(parts["boxes"], labels, strict=True):
            patch.set_facecolor(colors.get(n, "#999999"))
            patch.set_alpha(0.6)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)

    def bars(ax: Any, values: dict[str, float | None], title: str, unit: str,
             line: float | None = None) -> None:
        labels = [n for n in names if values.get(n)]
        if not labels:
            ax.set_visible(False)
            return
        vals = [values[n] for n in labels]
        ax.bar(labels, vals, color=[colors.get(n, "#999") for n in labels], alpha=0.8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=9)
        if line:
            ax.axhline(line, color="k", ls="--", lw=1)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)

    box(axes[0][0], {n: [x * 1e3 for x in raw["rtt"].get(n, [])] for n in names},
        "execute `1` round trip (box 25-75 %, whiskers 5-95 %)", "ms (log)", True)
    box(axes[0][1], {n: [x * 1e3 for x in raw["start"].get(n, [])] for n in names},
        "session start (create + start until kernel_info)", "ms", False)
    box(axes[0][2], {n: [x * 1e3 for r in raw["status"].get(n, []) for x in r["latencies"]]
                     for n in names},
        "GET /status while 5 sessions flood (kg: GET /api)", "ms (log)", True)
    bars(axes[1][0], {n: summary[n]["print"]["lines_per_s"] for n in names},
         "flushed print: lines delivered per s (median)", "lines/s")
    bars(axes[1][1], {n: summary[n]["firehose"]["msgs_per_s"] for n in names},
         "firehose: msg/s to one client (median; dashed: 30 000)", "msg/s", 30_000)
    bars(axes[1][2], {n: (summary[n]["rss_mb"] or {}).get("50") for n in names},
         "server RSS with 50 fake-kernel sessions", "MB")
    meta = result.get("meta", {})
    fig.suptitle(f"kallichore benchmark ({meta.get('mode', '')}, {meta.get('date', '')}, "
                 f"{meta.get('machine', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(result: dict[str, Any], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(result)
    tgts = targets(summary)
    doc = {"meta": result.get("meta"), "summary": summary, "targets": tgts,
           "errors": result.get("errors"), "raw": result["raw"]}
    paths = [os.path.join(out_dir, f"latest.{ext}") for ext in ("json", "md", "png")]
    with open(paths[0], "w") as f:
        json.dump(doc, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(result, summary, tgts))
    chart(result, summary, paths[2])
    return paths
