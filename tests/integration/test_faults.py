"""Fault cases against the real server and real ipykernels.

What happens to the processes around a kernel when things go wrong: a child
that left the kernel's process group, a daemon that left its tree, a kernel
that refuses to stop while the server shuts down. docs/reliability.md lists
every fault case with the test that covers it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.support.kernel_server import KernelServer, execute, kernel_client, wait_for

pytestmark = [
    pytest.mark.integration,
    # jupyter_client / jupyter_core emit deprecation noise we do not own.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: A child in a new session (setsid), still the kernel's child.
ESCAPEE = (
    "__import__('subprocess').Popen([__import__('sys').executable, '-c', "
    "'import time; time.sleep(600)'], start_new_session=True).pid"
)
#: Starts a setsid'd sleeper with nothing of ours open, prints its PID, exits.
_DAEMONIZE = (
    "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', "
    "'import time; time.sleep(600)'], start_new_session=True, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
)
#: A daemon: setsid, then its parent exits, so it leaves the kernel's tree.
DAEMON = (
    "int(__import__('subprocess').run([__import__('sys').executable, '-c', "
    f"{_DAEMONIZE!r}], capture_output=True, text=True).stdout)"
)
#: Make an ipykernel ignore shutdown_request (on control) and SIGTERM.
STUBBORN = """
import signal
import time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
async def _ignore(*args, **kwargs):
    pass
get_ipython().kernel.control_handlers["shutdown_request"] = _ignore
"""


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def evaluate(server: KernelServer, session_id: str, expression: str) -> Any:
    """The JSON value of ``expression`` evaluated in the session's kernel."""
    with kernel_client(server.connection_info(session_id)) as kc:
        result = execute(kc, f"import json as _j\nprint(_j.dumps({expression}))", timeout=30)
    assert result.status == "ok", result
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def server(tmp_path: os.PathLike[str], marker: str) -> Iterator[KernelServer]:
    server = KernelServer(str(tmp_path), marker)
    try:
        yield server.start()
    finally:
        server.stop()


def test_setsid_child_is_killed_with_its_kernel_but_a_daemon_is_not(
    server: KernelServer,
) -> None:
    server.create_and_start("escape")
    kernel_pid = server.session("escape")["process_id"]
    escapee = evaluate(server, "escape", ESCAPEE)
    daemon = evaluate(server, "escape", DAEMON)
    try:
        assert os.getpgid(escapee) != kernel_pid  # out of reach of our group signals
        assert os.getpgid(daemon) != kernel_pid
        assert daemon not in [p.pid for p in psutil.Process(kernel_pid).children(recursive=True)]
        assert server.post("/sessions/escape/kill").status == 200
        wait_for(lambda: not alive(kernel_pid), 10, what="the kernel to be gone")
        # Still in the kernel's tree when it was stopped: found and killed.
        wait_for(lambda: not alive(escapee), 10, what=f"setsid child {escapee} to be gone")
        # Left the tree before: nothing ties it to the kernel; it survives.
        assert alive(daemon)
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(daemon).kill()
        with contextlib.suppress(psutil.Error):
            psutil.Process(escapee).kill()


def test_server_sigterm_stops_a_kernel_that_ignores_shutdown_and_sigterm(
    server: KernelServer,
) -> None:
    server.create_and_start("stubborn")
    kernel_pid = server.session("stubborn")["process_id"]
    with kernel_client(server.connection_info("stubborn")) as kc:
        assert execute(kc, STUBBORN).status == "ok"
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    # Ladder: shutdown_request (5 s), SIGTERM (3 s), SIGKILL.
    assert server.wait_exit(20) == 0, server.log()[-3000:]
    assert not alive(kernel_pid)
    log = server.log()
    assert "did not exit 5.0 s after a shutdown request" in log
    assert "ignored SIGTERM for 3.0 s; sending SIGKILL" in log


#: A kernel at a breakpoint: the main thread blocks (as pdb waiting for a
#: command does) with SIGTERM and SIGINT ignored. Sent, never answered.
BREAKPOINT = """
import signal, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
threading.Event().wait()
"""
#: A kernel that cleans up on SIGTERM, as a kernel with a handler does.
CLEAN_EXIT_ON_SIGTERM = "import os, signal; signal.signal(signal.SIGTERM, lambda *a: os._exit(7))"
#: shutdown_request grace + SIGTERM grace + SIGKILL (1 s to die), plus slack for a busy machine.
LADDER_BOUND = 5.0 + 3.0 + 1.0 + 6.0
#: A restart also starts the next kernel before it answers.
RESTART_BOUND = LADDER_BOUND + 20.0


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # only zombies left
        return True
    return False


def _stop_at_debugger(server: KernelServer, session_id: str, setup: str | None = None) -> int:
    """Start a session, run ``setup`` in it, then stop its kernel (SIGSTOP, state T)."""
    server.create_and_start(session_id)
    kernel_pid = int(server.session(session_id)["process_id"])
    if setup is not None:
        with kernel_client(server.connection_info(session_id)) as kc:
            assert execute(kc, setup).status == "ok"
    os.kill(kernel_pid, signal.SIGSTOP)
    wait_for(
        lambda: psutil.Process(kernel_pid).status() == psutil.STATUS_STOPPED,
        10,
        what="the kernel to be stopped",
    )
    return kernel_pid


def _restart_past(server: KernelServer, session_id: str, kernel_pid: int) -> float:
    """Restart the session; its old kernel and group must be gone. Returns the seconds taken."""
    started = time.monotonic()
    assert server.post(f"/sessions/{session_id}/restart").status == 200
    elapsed = time.monotonic() - started
    assert elapsed < RESTART_BOUND
    assert not alive(kernel_pid)
    assert _group_gone(kernel_pid)
    server.wait_status(session_id, "idle", 30)
    return elapsed


@pytest.mark.time_limit(60)
def test_server_shutdown_stops_a_kernel_stopped_in_a_debugger(server: KernelServer) -> None:
    kernel_pid = _stop_at_debugger(server, "stopped")
    started = time.monotonic()
    assert server.post("/shutdown").status == 200
    assert server.wait_exit(LADDER_BOUND) == 0, server.log()[-3000:]
    elapsed = time.monotonic() - started
    assert not alive(kernel_pid)
    assert _group_gone(kernel_pid)
    log = server.log()
    assert f"kernel process {kernel_pid} is stopped (SIGSTOP or a debugger)" in log, log[-3000:]
    assert f"kernel process {kernel_pid} stopped (" in log, log[-3000:]
    print(f"stopped kernel, server shutdown: {elapsed:.2f} s")


@pytest.mark.time_limit(60)
def test_restart_stops_a_stopped_kernel_with_a_sigterm_handler_cleanly(
    server: KernelServer,
) -> None:
    # Stopped, a process keeps a handled SIGTERM pending; SIGCONT lets it run.
    kernel_pid = _stop_at_debugger(server, "handler", CLEAN_EXIT_ON_SIGTERM)
    elapsed = _restart_past(server, "handler", kernel_pid)
    log = server.log()
    assert f"kernel process {kernel_pid} stopped (exit status: 7)" in log, log[-3000:]
    assert "ignored SIGTERM" not in log
    print(f"stopped kernel with a SIGTERM handler, restart: {elapsed:.2f} s")


@pytest.mark.time_limit(60)
def test_restart_stops_a_kernel_blocked_at_a_breakpoint(server: KernelServer) -> None:
    server.create_and_start("breakpoint")
    kernel_pid = int(server.session("breakpoint")["process_id"])
    with kernel_client(server.connection_info("breakpoint")) as kc:
        kc.execute(BREAKPOINT)
        wait_for(lambda: server.status_of("breakpoint") == "busy", 10, what="busy")
    elapsed = _restart_past(server, "breakpoint", kernel_pid)
    log = server.log()
    assert "did not exit 5.0 s after a shutdown request" in log, log[-3000:]
    assert "ignored SIGTERM for 3.0 s; sending SIGKILL" in log, log[-3000:]
    assert f"kernel process {kernel_pid} stopped (signal: 9 (SIGKILL))" in log, log[-3000:]
    print(f"kernel blocked at a breakpoint, restart: {elapsed:.2f} s")


@pytest.mark.time_limit(60)
def test_kill_ends_a_kernel_stopped_in_a_debugger_as_exited(server: KernelServer) -> None:
    kernel_pid = _stop_at_debugger(server, "killed")
    started = time.monotonic()
    assert server.post("/sessions/killed/kill").status == 200
    elapsed = time.monotonic() - started
    server.wait_status("killed", "exited", 10)
    assert not alive(kernel_pid)
    assert _group_gone(kernel_pid)
    print(f"stopped kernel, kill: {elapsed:.2f} s")
