"""The lifeline: kernels (and their process groups) die with the server (tier 4, processes).

A small "server" -- a Python child running :func:`open_lifeline` and
:func:`spawn_kernel_process` -- starts a "kernel" that starts a child of its
own in its group; the test then SIGKILLs the server, as the OOM killer
would, and the whole group must be gone within :data:`GONE_WITHIN`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import trio

import kallichore
from kallichore.supervisor.lifeline import PARENT_PID_VARIABLE, open_lifeline
from kallichore.supervisor.process import spawn_kernel_process, terminate_process_group

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

REPO_ROOT = str(Path(kallichore.__file__).resolve().parent.parent)
#: Bound on the group's death after the server's.
GONE_WITHIN = 5.0  # seconds
POLL = 0.05  # seconds

#: A "kernel" that leaves a child in its process group, then sleeps.
KERNEL = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "time.sleep(120)\n"
)
#: A "server": lifeline plus one kernel; prints the kernel's pid, then waits to be killed.
SERVER = f"""
import os, sys, trio
from kallichore.supervisor.lifeline import open_lifeline
from kallichore.supervisor.process import spawn_kernel_process

async def main():
    async with open_lifeline() as lifeline:
        kernel = await spawn_kernel_process(
            [sys.executable, "-c", {KERNEL!r}], env=os.environ, cwd=".", lifeline=lifeline
        )
        print(kernel.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


async def wait_until(predicate: Callable[[], bool], bound: float) -> None:
    """Poll ``predicate`` until true; fails the test after ``bound`` seconds."""
    with trio.fail_after(bound):
        while not predicate():  # noqa: ASYNC110 -- nothing to wait on but the OS
            await trio.sleep(POLL)


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups a test made; killed at teardown whatever happened."""
    made: list[int] = []
    yield made
    for pgid in made:
        for proc in group_members(pgid):
            proc.kill()


async def test_a_sigkilled_server_takes_its_kernel_groups_with_it(groups: list[int]) -> None:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    server = await trio.lowlevel.open_process(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        assert server.stdout is not None
        line = await server.stdout.receive_some()
        kernel_pid = int(line)
        groups.append(kernel_pid)
        await wait_until(lambda: len(group_members(kernel_pid)) == 2, 10)
        environ = psutil.Process(kernel_pid).environ()
        assert environ.get(PARENT_PID_VARIABLE) == str(server.pid)
    finally:
        server.send_signal(signal.SIGKILL)
        await server.wait()
        if server.stdout is not None:
            await server.stdout.aclose()
    began = trio.current_time()
    await wait_until(lambda: not group_members(kernel_pid), GONE_WITHIN)
    print(f"group gone {trio.current_time() - began:.3f} s after the server")


async def test_a_reaped_kernel_is_forgotten_and_a_dead_watchdog_is_replaced(
    groups: list[int],
) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    async with open_lifeline() as lifeline:
        first = await spawn_kernel_process(sleep, env=os.environ, cwd=".", lifeline=lifeline)
        groups.append(first.pid)
        await terminate_process_group(first, polite=None, polite_grace=0, term_grace=1)
        assert lifeline.running

        second = await spawn_kernel_process(sleep, env=os.environ, cwd=".", lifeline=lifeline)
        groups.append(second.pid)
        # The watchdog dies on its own: the next message finds it gone, and
        # the next start starts another, which learns of the running group.
        watchdog = lifeline._process
        assert watchdog is not None
        watchdog.kill()
        await watchdog.wait()
        lifeline.forget(second.pid)  # the write fails: the watchdog is retired
        assert not lifeline.running
        lifeline.watch(second.pid)
        third = await spawn_kernel_process(sleep, env=os.environ, cwd=".", lifeline=lifeline)
        groups.append(third.pid)
        assert lifeline.running
    # Leaving the block closes our end: the new watchdog kills what is still
    # listed (second and third), and nothing else.
    await wait_until(
        lambda: not group_members(second.pid) and not group_members(third.pid), GONE_WITHIN
    )
    for proc in (second, third):
        await proc.wait()
        await proc.aclose_pipes()
