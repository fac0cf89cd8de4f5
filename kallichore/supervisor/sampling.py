"""Reading a kernel's process tree with psutil: resource usage and working directory.

Both are polls of ``/proc`` (or the platform's equivalent) on the kernel
process; neither knows about sessions or clients. The session asks and
decides what to tell its client.
"""

from __future__ import annotations

import datetime as dt

import attrs
import psutil

__all__ = ["TREE_REFRESH_TICKS", "ResourceSampler", "WorkingDirectoryProbe"]

#: Resource tree is re-read every this many samples (children come and go).
TREE_REFRESH_TICKS = 5  # samples


@attrs.define(eq=False)
class ResourceSampler:
    """Sums CPU, memory and threads over a kernel's process tree."""

    _procs: dict[int, psutil.Process] = attrs.field(factory=dict, init=False)
    _ticks: int = attrs.field(default=0, init=False)

    def sample(self, pid: int, interval_ms: int) -> dict[str, int]:
        """One measurement of ``pid`` and its descendants (the ``resourceUsage`` object)."""
        self._ticks += 1
        if pid not in self._procs or self._ticks % TREE_REFRESH_TICKS == 0:
            self._refresh_tree(pid)
        cpu = 0.0
        memory = 0
        threads = 0
        for child_pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    memory += proc.memory_info().rss
                    threads += proc.num_threads()
            except (psutil.Error, OSError):
                del self._procs[child_pid]
        return {
            "cpu_percent": round(cpu),
            "memory_bytes": memory,
            "thread_count": max(threads, 1),
            "sampling_period_ms": interval_ms,
            "timestamp": int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        }

    def forget(self) -> None:
        """The kernel is gone: drop the processes held."""
        self._procs.clear()

    def _refresh_tree(self, pid: int) -> None:
        try:
            root = self._procs.get(pid) or psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except (psutil.Error, OSError):
            return
        known = self._procs
        self._procs = {p.pid: known.get(p.pid, p) for p in tree}


@attrs.define(eq=False)
class WorkingDirectoryProbe:
    """Reads a kernel process's current directory."""

    # The process whose cwd was read last (kept: see read()).
    _process: psutil.Process | None = attrs.field(default=None, init=False, repr=False)

    def read(self, pid: int) -> str | None:
        """``pid``'s working directory, or ``None`` if it cannot be read."""
        # Runs after every execution, just when the client is likely to send
        # its next request: a new psutil.Process reads /proc/<pid>/stat
        # (about 20 us warm, several times that right after a wake-up),
        # the cached one only reads the cwd link.
        proc = self._process
        try:
            if proc is None or proc.pid != pid:
                proc = self._process = psutil.Process(pid)
            cwd: str = proc.cwd()
        except (psutil.Error, OSError):
            return None
        return cwd or None
