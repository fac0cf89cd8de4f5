"""Resource sampling reads the host's process table once per tick, whatever the sessions.

Real processes (``sleep``) stand in for kernels and for the host's unrelated
processes; the work is counted as reads of the unrelated processes'
``/proc/<pid>/stat``, the cost that grows with the host.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import psutil
import pytest

from kallichore.supervisor.sampling import TREE_REFRESH_TICKS, ProcessTable, ResourceSampler

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="counts reads of /proc")

UNRELATED = 60  # processes
TICKS = 2 * TREE_REFRESH_TICKS  # ticks: a first read and two refreshes


@contextlib.contextmanager
def spawned(argvs: list[list[str]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Each in a process group of its own, killed whole at the end (children too)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(argv, start_new_session=True))
        yield procs
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()


def kernel_argv() -> list[str]:
    # The shell becomes `sleep 61` with `sleep 60` as its child: a two-process tree.
    return ["sh", "-c", "sleep 60 & exec sleep 61"]


def wait_for_child(pid: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc = psutil.Process(pid)
        if proc.name() == "sleep" and (children := proc.children()):
            child: int = children[0].pid
            return child
        time.sleep(0.01)
    raise AssertionError(f"{pid} never started its child")


@contextlib.contextmanager
def stat_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[int]]:
    """Counts opens of ``/proc/<pid>/stat`` (by psutil or by os.open), by pid."""
    import psutil._common

    reads: collections.Counter[int] = collections.Counter()
    os_open = os.open

    def count(name: Any) -> None:
        parts = str(name).split("/")
        if len(parts) == 4 and parts[1] == "proc" and parts[3] == "stat" and parts[2].isdigit():
            reads[int(parts[2])] += 1

    def counting_open(name: Any, *args: Any, **kwargs: Any) -> IO[Any]:
        count(name)
        opened: IO[Any] = open(name, *args, **kwargs)  # noqa: SIM115 (psutil closes it)
        return opened

    def counting_os_open(name: Any, *args: Any, **kwargs: Any) -> int:
        count(name)
        return os_open(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(psutil._common, "open", counting_open, raising=False)
        patch.setattr(os, "open", counting_os_open)
        yield reads


def sample_ticks(
    kernels: list[int], monkeypatch: pytest.MonkeyPatch
) -> tuple[collections.Counter[int], list[dict[str, int]], ProcessTable]:
    table = ProcessTable()
    samplers = [ResourceSampler() for _ in kernels]
    usages: list[dict[str, int]] = []
    with stat_reads(monkeypatch) as reads:
        for _ in range(TICKS):
            table.next_tick()
            usages = [s.sample(pid, 1000, table) for s, pid in zip(samplers, kernels, strict=True)]
    return reads, usages, table


@pytest.mark.time_limit(60)
def test_host_walks_do_not_grow_with_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        spawned([["sleep", "60"]] * UNRELATED) as unrelated,
        spawned([kernel_argv()] * 5) as kernels,
    ):
        for kernel in kernels:
            wait_for_child(kernel.pid)
        pids = [k.pid for k in kernels]

        one_reads, _, one_table = sample_ticks(pids[:1], monkeypatch)
        five_reads, usages, five_table = sample_ticks(pids, monkeypatch)

        # Each unrelated process is read once per walk: on the first tick
        # (new kernels) and on each refresh, never once per session.
        walks = 1 + TICKS // TREE_REFRESH_TICKS
        for proc in unrelated:
            assert one_reads[proc.pid] <= walks
            assert five_reads[proc.pid] <= walks
        assert five_table.walks == one_table.walks <= walks
        # The values are still every kernel's whole tree: two sleeps, one thread each.
        assert [u["thread_count"] for u in usages] == [2] * 5
        assert all(u["memory_bytes"] > 0 for u in usages)
