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
