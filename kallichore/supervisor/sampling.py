"""Reading a kernel's process tree with psutil: resource usage and working directory.

Both are polls of ``/proc`` (or the platform's equivalent) on the kernel
process; neither knows about sessions or clients. The session asks and
decides what to tell its client.

Finding a kernel's descendants means reading every process's parent on the
host (``/proc/*/stat`` on Linux): the cost grows with the host's processes,
not the kernel's. :class:`ProcessTable` does that walk at most once per
sampling tick and shares it between every session's :class:`ResourceSampler`.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import sys

import attrs
import psutil

__all__ = ["TREE_REFRESH_TICKS", "ProcessTable", "ResourceSampler", "WorkingDirectoryProbe"]

#: Resource tree is re-read every this many samples (children come and go).
TREE_REFRESH_TICKS = 5  # samples


def _read_parents() -> dict[int, int]:
    """``{pid: ppid}`` for every process on the host, in one pass."""
    if sys.platform == "linux":
        return _read_proc_parents()
    parents: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if isinstance(ppid, int):
            parents[proc.pid] = ppid
    return parents


def _read_proc_parents() -> dict[int, int]:
    # One read of /proc/<pid>/stat per process, as psutil's own pass does
    # (the one behind Process.children()), but without a buffered file object
    # each: 16 ms instead of 34 ms for 3,000 processes, and psutil's public
    # process_iter(["ppid"]) takes 110 ms.
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:  # gone, or hidden from us
            continue
        try:
            stat = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split(None, 2)
        if len(fields) >= 2:
            parents[int(name)] = int(fields[1])
    return parents


@attrs.define(eq=False)
class ProcessTable:
    """The host's parent-child links, shared by every session's sampler.

    The sampling clock calls :meth:`next_tick` before it measures the
    sessions. Trees are re-read on the same tick for every session (every
    :data:`TREE_REFRESH_TICKS` ticks, or when a sampler meets a new kernel),
    and the host is walked at most once for all of them.
    """

    _ticks: int = attrs.field(default=0, init=False)
    _children: dict[int, list[int]] | None = attrs.field(default=None, init=False)
    #: How many times the host's processes were walked (for tests and benches).
    walks: int = attrs.field(default=0, init=False)

    def next_tick(self) -> None:
        """A new sampling tick: the links read on the last one are stale."""
        self._ticks += 1
        self._children = None

    @property
    def refresh_due(self) -> bool:
        """Whether samplers should re-read their trees on this tick."""
        return self._ticks % TREE_REFRESH_TICKS == 0

    def descendants(self, pid: int) -> list[int]:
        """``pid``'s children, grandchildren and so on (not ``pid`` itself)."""
        children = self._children
        if children is None:
            children = collections.defaultdict(list)
            for child, parent in _read_parents().items():
                children[parent].append(child)
            self._children = children
            self.walks += 1
        found: list[int] = []
        seen = {pid}
        stack = [pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in seen:  # pids reused during the walk can loop
                    seen.add(child)
                    found.append(child)
                    stack.append(child)
        return found


@attrs.define(eq=False)
class ResourceSampler:
    """Sums CPU, memory and threads over a kernel's process tree."""

    _procs: dict[int, psutil.Process] = attrs.field(factory=dict, init=False)

    def sample(self, pid: int, interval_ms: int, table: ProcessTable) -> dict[str, int]:
        """One measurement of ``pid`` and its descendants (the ``resourceUsage`` object)."""
        if pid not in self._procs or table.refresh_due:
            self._refresh_tree(pid, table)
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

    def _refresh_tree(self, pid: int, table: ProcessTable) -> None:
        # Processes already held are kept: cpu_percent() measures since the
        # previous call on the same Process object.
        known = self._procs
        try:
            root = known.get(pid) or psutil.Process(pid)
            tree = {pid: root}
            for child in table.descendants(pid):
                proc = known.get(child) or _process_or_none(child)
                # Younger than the kernel, or its pid was reused after the walk.
                if proc is not None and proc.create_time() >= root.create_time():
                    tree[child] = proc
        except (psutil.Error, OSError):
            return
        self._procs = tree


def _process_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.Error, OSError):
        return None


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
