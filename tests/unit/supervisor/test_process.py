"""Tier 4 tests for kallichore.supervisor.process: real child processes, real clock.

Children are ``python -c`` snippets (trio's ``python()`` helper). Every process a
test starts -- and every grandchild whose PID a child reports -- is killed at
teardown, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest
import trio

from kallichore.supervisor.launch import build_command
from kallichore.supervisor.process import (
    MAX_LINE_BYTES,
    KernelProcess,
    spawn_kernel_process,
    terminate_process_group,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

GONE_TIMEOUT = 5.0  # seconds for a killed process to disappear


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


class Output:
    """Collects ``emit`` calls; lets a test wait for a line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._changed = trio.Event()

    def emit(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        self._changed.set()
        self._changed = trio.Event()

    def of(self, stream: str) -> list[str]:
        return [line for name, line in self.lines if name == stream]

    async def wait_for(self, prefix: str) -> str:
        while True:
            for _, line in self.lines:
                if line.startswith(prefix):
                    return line
            await self._changed.wait()


Spawn = Callable[[str], Awaitable[KernelProcess]]


@pytest.fixture
def leftover_pids() -> list[int]:
    return []


@pytest.fixture
async def spawn(leftover_pids: list[int]) -> AsyncIterator[Spawn]:
    procs: list[KernelProcess] = []

    async def _spawn(code: str) -> KernelProcess:
        proc = await spawn_kernel_process(python(code), env=os.environ, cwd=os.getcwd())
        procs.append(proc)
        return proc

    yield _spawn

    with trio.CancelScope(shield=True):
        for proc in procs:
            if proc.returncode is None:
                proc.kill_group()
            await proc.wait()
            await proc.aclose_pipes()
        for pid in leftover_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def is_gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
        return bool(status == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def assert_gone(pid: int) -> None:
    with trio.move_on_after(GONE_TIMEOUT):
        while not is_gone(pid):  # noqa: ASYNC110 -- nothing to wait on but the OS
            await trio.sleep(0.02)
    assert is_gone(pid), f"process {pid} survived"


# --------------------------------------------------------------------------- spawn and output


async def test_output_lines_in_order_and_exit_code(spawn: Spawn) -> None:
    proc = await spawn(
        """
        import sys
        for i in range(3):
            print(f"out{i}", flush=True)
            print(f"err{i}", file=sys.stderr, flush=True)
        sys.stdout.write("tail")
        sys.exit(7)
        """
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        assert await proc.wait() == 7
    assert out.of("stdout") == ["out0\n", "out1\n", "out2\n", "tail"]
    assert out.of("stderr") == ["err0\n", "err1\n", "err2\n"]
    assert proc.returncode == 7
    assert repr(proc) == f"<KernelProcess pid={proc.pid} exited with status 7>"
    assert await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=1) == 7


async def test_output_flood_keeps_order(spawn: Spawn) -> None:
    count = 20000
    proc = await spawn(f"for i in range({count}): print(i)")
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
    assert out.of("stdout") == [f"{i}\n" for i in range(count)]
    assert await proc.wait() == 0


async def test_process_leads_its_own_group_with_devnull_stdin(spawn: Spawn) -> None:
    proc = await spawn(
        """
        import os, sys
        print(os.getpgid(0), os.getsid(0), repr(sys.stdin.read()), flush=True)
        """
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
    assert out.of("stdout") == [f"{proc.pid} {proc.pid} ''\n"]
    assert proc.pgid == proc.pid
    assert proc.pgid != os.getpgid(0)
    assert await proc.wait() == 0


async def test_exit_by_signal_is_negative_signum(spawn: Spawn) -> None:
    proc = await spawn("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert await proc.wait() == -9
    assert repr(proc) == f"<KernelProcess pid={proc.pid} killed by signal 9 (SIGKILL)>"
    await proc.aclose_pipes()


async def test_running_repr(spawn: Spawn) -> None:
    proc = await spawn("import time; time.sleep(30)")
    assert repr(proc) == f"<KernelProcess pid={proc.pid} running>"
    assert proc.returncode is None


async def test_spawn_missing_executable_raises_oserror() -> None:
    with pytest.raises(FileNotFoundError) as info:
        await spawn_kernel_process(["/nonexistent/kernel-binary"], env=os.environ, cwd="/")
    assert info.value.errno == errno.ENOENT


async def test_spawn_bad_cwd_raises_oserror() -> None:
    with pytest.raises(OSError):  # noqa: PT011 -- any OSError, unwrapped
        await spawn_kernel_process(python("pass"), env=os.environ, cwd="/nonexistent/dir")


async def test_spawn_empty_argv() -> None:
    with pytest.raises(ValueError, match="argv"):
        await spawn_kernel_process([], env=os.environ, cwd="/")


async def test_spawn_passes_env_and_cwd(tmp_path: Path) -> None:
    cwd = str(await trio.Path(tmp_path).resolve())
    env = {"KALLICHORE_TEST_VAR": "hello", "PATH": os.environ.get("PATH", "")}
    proc = await spawn_kernel_process(
        python("import os; print(os.environ.get('KALLICHORE_TEST_VAR'), os.getcwd())"),
        env=env,
        cwd=cwd,
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
    assert out.of("stdout") == [f"hello {cwd}\n"]
    assert await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=1) == 0


async def test_long_lines_are_split(spawn: Spawn) -> None:
    proc = await spawn(
        """
        import sys
        sys.stdout.write("x" * 200_000 + "\\n" + "short\\n")
        sys.stdout.write("\\u00e9" * 100_000 + "\\n")
        sys.stdout.write("y" * 150_000)
        """
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
    pieces = out.of("stdout")
    assert all(len(p.encode()) <= MAX_LINE_BYTES for p in pieces)
    assert "\ufffd" not in "".join(pieces)  # multibyte characters never cut
    assert (
        "".join(pieces) == "x" * 200_000 + "\nshort\n" + "\u00e9" * 100_000 + "\n" + "y" * 150_000
    )
    assert "short\n" in pieces
    assert len(pieces) >= 4 + 1 + 4 + 3
    # Only line ends carry newlines.
    assert sum(p.endswith("\n") for p in pieces) == 3


async def test_invalid_utf8_does_not_stop_reader(spawn: Spawn) -> None:
    proc = await spawn(
        """
        import sys
        sys.stdout.buffer.write(b"a\\xff\\xfeb\\n")
        sys.stdout.buffer.flush()
        sys.stdout.buffer.write(b"next\\n\\xc3")
        """
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
    assert out.of("stdout") == ["a\ufffd\ufffdb\n", "next\n", "\ufffd"]


async def test_pump_output_twice_raises(spawn: Spawn) -> None:
    proc = await spawn("pass")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, Output().emit)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already started"):
            await proc.pump_output(Output().emit)


async def test_aclose_pipes_ends_pump(spawn: Spawn) -> None:
    proc = await spawn("import time; print('ready', flush=True); time.sleep(30)")
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        await out.wait_for("ready")
        await proc.aclose_pipes()
    await proc.wait_output_closed()
    assert await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=5) == -15


async def test_cancelled_pump_closes_pipes(spawn: Spawn) -> None:
    proc = await spawn("import time; print('ready', flush=True); time.sleep(30)")
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        await out.wait_for("ready")
        nursery.cancel_scope.cancel()
    assert proc.output_pump_started
    await proc.wait_output_closed()
    assert await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=5) == -15


# --------------------------------------------------------------------------- signals


async def test_interrupt_reaches_handler(spawn: Spawn) -> None:
    proc = await spawn(
        """
        import signal, sys, time
        def on_int(signum, frame):
            print("got SIGINT", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGINT, on_int)
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        await out.wait_for("ready")
        assert proc.interrupt() is True
        assert await proc.wait() == 3
    assert out.of("stdout") == ["ready\n", "got SIGINT\n"]
    assert proc.interrupt() is False  # exited: nothing is sent


async def test_signal_group_after_group_is_gone(spawn: Spawn) -> None:
    proc = await spawn("pass")
    assert await proc.wait() == 0
    assert proc.signal_group(signal.SIGTERM) is False
    assert proc.kill_group() is False
    await proc.aclose_pipes()


# --------------------------------------------------------------------------- the ladder

SIGUSR1_EXITS = """
    import signal, sys, time
    signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
    print("ready", flush=True)
    time.sleep(30)
"""

SIGUSR1_IGNORED = """
    import signal, time
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(30)
"""

SIGTERM_IGNORED = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(30)
"""


async def _ready(proc: KernelProcess, nursery: trio.Nursery) -> Output:
    out = Output()
    nursery.start_soon(proc.pump_output, out.emit)
    await out.wait_for("ready")
    return out


async def test_polite_request_honoured(spawn: Spawn) -> None:
    proc = await spawn(SIGUSR1_EXITS)

    async def polite() -> None:  # stands in for shutdown_request
        os.kill(proc.pid, signal.SIGUSR1)

    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        start = trio.current_time()
        code = await terminate_process_group(proc, polite=polite, polite_grace=10, term_grace=10)
        assert code == 0
        assert trio.current_time() - start < 5


async def test_polite_ignored_then_sigterm(spawn: Spawn) -> None:
    proc = await spawn(SIGUSR1_IGNORED)
    calls: list[float] = []

    async def polite() -> None:
        calls.append(trio.current_time())
        os.kill(proc.pid, signal.SIGUSR1)

    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        start = trio.current_time()
        code = await terminate_process_group(proc, polite=polite, polite_grace=0.3, term_grace=10)
        elapsed = trio.current_time() - start
    assert code == -signal.SIGTERM
    assert len(calls) == 1
    assert 0.3 <= elapsed < 5


async def test_polite_raising_escalates_at_once(
    spawn: Spawn, caplog: pytest.LogCaptureFixture
) -> None:
    proc = await spawn(SIGUSR1_IGNORED)

    async def polite() -> None:
        raise RuntimeError("control socket is gone")

    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        start = trio.current_time()
        with caplog.at_level(logging.WARNING, logger="kallichore.supervisor.process"):
            code = await terminate_process_group(
                proc, polite=polite, polite_grace=20, term_grace=10
            )
        elapsed = trio.current_time() - start
    assert code == -signal.SIGTERM
    assert elapsed < 5
    assert any("polite shutdown request failed" in r.getMessage() for r in caplog.records)


async def test_polite_that_hangs_is_bounded(spawn: Spawn) -> None:
    proc = await spawn(SIGUSR1_IGNORED)

    async def polite() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        code = await terminate_process_group(proc, polite=polite, polite_grace=0.3, term_grace=10)
    assert code == -signal.SIGTERM


async def test_sigterm_ignored_then_sigkill(spawn: Spawn, caplog: pytest.LogCaptureFixture) -> None:
    proc = await spawn(SIGTERM_IGNORED)
    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        start = trio.current_time()
        with caplog.at_level(logging.WARNING, logger="kallichore.supervisor.process"):
            code = await terminate_process_group(proc, polite=None, polite_grace=10, term_grace=0.5)
        elapsed = trio.current_time() - start
    assert code == -signal.SIGKILL
    assert 0.5 <= elapsed < 5
    assert any("ignored SIGTERM" in r.getMessage() for r in caplog.records)


SIGTERM_HANDLED = """
    import os, signal, time
    signal.signal(signal.SIGTERM, lambda *args: os._exit(3))
    print("ready", flush=True)
    time.sleep(30)
"""


async def _stop(proc: KernelProcess) -> None:
    """SIGSTOP the process (as a debugger holds it) and wait until it is in state T."""
    os.kill(proc.pid, signal.SIGSTOP)
    with trio.fail_after(10):
        while not proc.is_stopped():  # noqa: ASYNC110 -- nothing to wait on but the OS
            await trio.sleep(0.01)


async def test_stopped_process_skips_polite_and_runs_its_sigterm_handler(spawn: Spawn) -> None:
    proc = await spawn(SIGTERM_HANDLED)
    asked: list[bool] = []

    async def polite() -> None:  # a stopped kernel could never answer
        asked.append(True)

    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        await _stop(proc)
        start = trio.current_time()
        code = await terminate_process_group(proc, polite=polite, polite_grace=10, term_grace=10)
        elapsed = trio.current_time() - start
    assert asked == []
    assert code == 3  # SIGCONT let the pending SIGTERM reach its handler
    assert elapsed < 5  # far below either grace


async def test_stopped_process_that_ignores_sigterm_is_killed(spawn: Spawn) -> None:
    proc = await spawn(SIGTERM_IGNORED)
    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        await _stop(proc)
        code = await terminate_process_group(proc, polite=None, polite_grace=10, term_grace=0.5)
    assert code == -signal.SIGKILL
    assert not proc.is_stopped()


async def test_terminate_from_cancelled_scope_completes(spawn: Spawn) -> None:
    proc = await spawn(SIGTERM_IGNORED)
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        await _ready(proc, nursery)
        with trio.CancelScope() as scope:
            scope.cancel(reason="kill requested")
            try:
                await trio.sleep_forever()
            finally:
                codes.append(
                    await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=0.3)
                )
        assert scope.cancelled_caught
    assert codes == [-signal.SIGKILL]
    assert proc.returncode == -signal.SIGKILL


async def test_terminate_after_exit_is_quick(spawn: Spawn) -> None:
    proc = await spawn("import sys; sys.exit(5)")
    calls: list[None] = []

    async def polite() -> None:
        calls.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, Output().emit)
        assert await proc.wait() == 5
        code = await terminate_process_group(proc, polite=polite, polite_grace=10, term_grace=10)
    assert code == 5
    assert calls == []  # no polite request to a dead kernel


# --------------------------------------------------------------------------- the process group

SPAWN_GRANDCHILD = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
    print("grandchild", child.pid, flush=True)
    {then}
"""

GRANDCHILD_SLEEPS = "import time; time.sleep(30)"
GRANDCHILD_IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
)


async def _grandchild_pid(out: Output, leftover_pids: list[int]) -> int:
    line = await out.wait_for("grandchild ")
    pid = int(line.split()[1])
    leftover_pids.append(pid)
    return pid


@pytest.mark.parametrize(
    "grandchild", [GRANDCHILD_SLEEPS, GRANDCHILD_IGNORES_SIGTERM], ids=["sleeps", "ignores-term"]
)
async def test_terminate_kills_grandchildren(
    spawn: Spawn, leftover_pids: list[int], grandchild: str
) -> None:
    # The leader dies on SIGTERM; a grandchild that ignores it is swept by
    # the SIGKILL to the group after the leader is reaped.
    proc = await spawn(SPAWN_GRANDCHILD.format(grandchild=grandchild, then="time.sleep(30)"))
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        gpid = await _grandchild_pid(out, leftover_pids)
        await trio.sleep(0.2)  # let the grandchild install its handler
        assert not is_gone(gpid)
        code = await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=5)
    assert code == -signal.SIGTERM
    await assert_gone(gpid)


SPAWN_ESCAPEE = """
    import subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    print("grandchild", child.pid, flush=True)
    {then}
"""


@pytest.mark.parametrize("stop", ["terminate", "kill"])
async def test_setsid_grandchild_is_killed_after_its_kernel(
    spawn: Spawn, leftover_pids: list[int], stop: str
) -> None:
    # Out of reach of the group signals, but still in the kernel's tree when
    # it is told to stop (a kill sends SIGKILL before the ladder runs).
    proc = await spawn(SPAWN_ESCAPEE.format(then="time.sleep(30)"))
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        gpid = await _grandchild_pid(out, leftover_pids)
        assert os.getpgid(gpid) != proc.pgid
        if stop == "kill":
            proc.kill_group()
        await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=5)
    await assert_gone(gpid)


async def test_orphans_of_an_exited_kernel_are_killed(
    spawn: Spawn, leftover_pids: list[int]
) -> None:
    # The kernel exits on its own, leaving a child that still holds its stdout:
    # the pump cannot end until terminate_process_group sweeps the group.
    proc = await spawn(SPAWN_GRANDCHILD.format(grandchild=GRANDCHILD_SLEEPS, then="sys.exit(0)"))
    out = Output()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.pump_output, out.emit)
        gpid = await _grandchild_pid(out, leftover_pids)
        assert await proc.wait() == 0
        assert not is_gone(gpid)
        assert await terminate_process_group(proc, polite=None, polite_grace=1, term_grace=1) == 0
    await assert_gone(gpid)


# --------------------------------------------------------------------------- through a shell


@pytest.mark.skipif(not os.path.exists("/bin/sh"), reason="needs /bin/sh")
@pytest.mark.parametrize(("mode", "arg"), [("shell", None), ("command", "true")])
async def test_shell_wrapper_execs_the_kernel(mode: str, arg: str | None, tmp_path: Path) -> None:
    # History case D24: with ``exec`` the tracked PID is the kernel's, so an
    # interrupt reaches the kernel and not a wrapping shell.
    kernel = python(
        """
        import os, signal, sys, time
        signal.signal(signal.SIGINT, lambda *_: sys.exit(4))
        print("kernel", os.getpid(), flush=True)
        time.sleep(30)
        """
    )
    plan = build_command(
        kernel,
        startup_environment=mode,
        startup_arg=arg,
        working_directory=str(tmp_path),
        server_shell="/bin/sh",
        env=os.environ,
    )
    assert plan.shell == "/bin/sh"
    proc = await spawn_kernel_process(plan.argv, env=os.environ, cwd=str(tmp_path))
    out = Output()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proc.pump_output, out.emit)
            line = await out.wait_for("kernel ")
            assert int(line.split()[1]) == proc.pid
            assert proc.interrupt()
            assert await proc.wait() == 4
    finally:
        await terminate_process_group(proc, polite=None, polite_grace=0, term_grace=1)
    if mode == "command":
        stdout = out.of("stdout")
        assert "KALLICHORE_STARTUP_BEGIN\n" in stdout
        assert "KALLICHORE_STARTUP_SUCCESS\n" in stdout
