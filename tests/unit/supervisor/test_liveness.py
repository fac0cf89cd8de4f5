"""AdoptedKernelProbe against a real listening process (tier 4): paused is not gone; dead is."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio

from kallichore.supervisor.liveness import AdoptedKernelProbe, learn_kernel_process
from kallichore.wire.connection_file import ConnectionInfo

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: A stand-in kernel: listens on two ports (hb, shell), prints them, sleeps.
LISTENER = """
import socket, time
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    socks.append(s)
print(*(s.getsockname()[1] for s in socks), flush=True)
time.sleep(120)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[tuple[subprocess.Popen[bytes], ConnectionInfo]]:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        hb, shell = (int(p) for p in proc.stdout.readline().split())
        others = [free_port() for _ in range(3)]
        info = ConnectionInfo(
            hb_port=hb,
            shell_port=shell,
            control_port=others[0],
            stdin_port=others[1],
            iopub_port=others[2],
            key="k",
        )
        yield proc, info
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_learns_the_pid_of_the_listener(
    listener: tuple[subprocess.Popen[bytes], ConnectionInfo],
) -> None:
    proc, info = listener
    learned = await learn_kernel_process(info)
    assert learned is not None
    assert learned[0] == proc.pid
    probe = AdoptedKernelProbe(info)
    await probe.learn_process()
    assert probe.pid == proc.pid


@pytest.mark.parametrize("know_pid", [True, False], ids=["pid", "ports-only"])
async def test_paused_is_not_gone_and_dead_is(
    listener: tuple[subprocess.Popen[bytes], ConnectionInfo], know_pid: bool
) -> None:
    proc, info = listener
    probe = AdoptedKernelProbe(info, await learn_kernel_process(info) if know_pid else None)
    assert (probe.pid is not None) is know_pid
    assert not await probe.is_gone()
    proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            assert not await probe.is_gone()
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.kill()
    await trio.to_thread.run_sync(proc.wait)
    assert await probe.is_gone()


async def test_nothing_listening_is_gone() -> None:
    info = ConnectionInfo(
        hb_port=free_port(),
        shell_port=free_port(),
        control_port=free_port(),
        stdin_port=free_port(),
        iopub_port=free_port(),
        key="k",
    )
    assert await learn_kernel_process(info) is None
    assert await AdoptedKernelProbe(info).is_gone()
