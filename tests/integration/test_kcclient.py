"""``kcclient`` where users meet it: a real server, a real ipykernel, real pipes, signals and terminals.

Each test runs ``kcclient`` as a subprocess. Ctrl-C is a real SIGINT to the
client process (or the byte ``^C`` typed into a pseudo-terminal, for the
console); ``| head -2`` is a real shell pipeline; the console is driven
through a pty so readline, history and ``input()`` work as in a terminal.
The connection file ``kcclient connection-file`` writes is checked the way
``jupyter console --existing`` would use it: jupyter_client's
``BlockingKernelClient`` loads it and does a ``kernel_info`` round trip with
the kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kallichore.client._execute import INTERRUPT_GRACE
from tests.integration.helpers import REPO_ROOT
from tests.integration.test_channels import ChannelServer

pytestmark = pytest.mark.integration

#: Bound on one CLI invocation.
CLI_TIMEOUT = 60.0  # seconds
#: Bound on the console printing what a test waits for.
EXPECT_TIMEOUT = 30.0  # seconds
#: Code that says it started, then runs long enough to need an interrupt.
LONG_RUNNING = "import time; print('go', flush=True); time.sleep(60)"
ANSI = "\x1b["


@pytest.fixture(scope="module")
def server(marker: str) -> Iterator[ChannelServer]:
    srv = ChannelServer("tcp", marker).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def env(server: ChannelServer, tmp_path: Path) -> dict[str, str]:
    """The client's environment: the server's connection file, no colour setting, private Jupyter dirs."""
    values = dict(os.environ)
    values["PYTHONPATH"] = REPO_ROOT + os.pathsep + values.get("PYTHONPATH", "")
    values["KALLICHORE_CONNECTION_FILE"] = server.connection_file
    values["JUPYTER_DATA_DIR"] = str(tmp_path / "data")
    values["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    values.pop("NO_COLOR", None)
    return values


@pytest.fixture(scope="module")
def session(server: ChannelServer) -> Iterator[str]:
    """One running ipykernel shared by the tests that leave it idle."""
    sid = f"kc-{uuid.uuid4().hex[:8]}"
    yield from _started(server, sid)


def _started(server: ChannelServer, sid: str) -> Iterator[str]:
    values = dict(os.environ, KALLICHORE_CONNECTION_FILE=server.connection_file)
    started = _kcclient(values, "start", "--id", sid)
    assert started.returncode == 0, started.stderr
    try:
        yield sid
    finally:
        _kcclient(values, "kill", sid)


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kallichore.client.cli", *args]


def _kcclient(
    env: dict[str, str], *args: str, **options: object
) -> subprocess.CompletedProcess[str]:
    options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        _argv(*args),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=REPO_ROOT,
        **options,
    )


def _status(env: dict[str, str], sid: str) -> str:
    listed = _kcclient(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return next(str(s["status"]) for s in json.loads(listed.stdout) if s["session_id"] == sid)


def _wait_status(env: dict[str, str], sid: str, wanted: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := _status(env, sid)) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


@contextlib.contextmanager
def _running(env: dict[str, str], sid: str, code: str) -> Iterator[subprocess.Popen[str]]:
    """``kcclient execute`` started and seen printing ``go``; killed if still running at the end."""
    proc = subprocess.Popen(
        _argv("execute", sid, code),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "go\n", proc.communicate(timeout=CLI_TIMEOUT)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CLI_TIMEOUT)


# ----------------------------------------------------------------- Ctrl-C


def test_ctrl_c_interrupts_the_kernel_and_exits_130(env: dict[str, str], session: str) -> None:
    with _running(env, session, LONG_RUNNING) as proc:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=INTERRUPT_GRACE + 20)
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" in err  # the interrupted reply's traceback
    assert "did not answer" not in err
    assert "Traceback (most recent call last):\n  File" not in err  # not ours
    assert _wait_status(env, session, "idle") == "idle"
    after = _kcclient(env, "execute", session, "print('after')")
    assert (after.returncode, after.stdout) == (0, "after\n"), after.stderr


def test_ctrl_c_on_a_kernel_that_ignores_it(server: ChannelServer, env: dict[str, str]) -> None:
    """One Ctrl-C gives the kernel INTERRUPT_GRACE seconds; a second one exits at once."""
    sid = f"kc-deaf-{uuid.uuid4().hex[:8]}"
    deaf = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); " + LONG_RUNNING
    for _ in _started(server, sid):
        with _running(env, sid, deaf) as proc:
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=INTERRUPT_GRACE + 20)
            waited = time.monotonic() - start
        assert proc.returncode == 130, err
        assert "did not answer the interrupt" in err, err
        assert INTERRUPT_GRACE - 0.5 <= waited < INTERRUPT_GRACE + 15, waited

        restarted = _kcclient(env, "restart", sid)
        assert restarted.returncode == 0, restarted.stderr
        with _running(env, sid, deaf) as proc:
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=INTERRUPT_GRACE + 20)
            waited = time.monotonic() - start
        assert proc.returncode == 130, err
        assert waited < INTERRUPT_GRACE, waited
        assert "Traceback" not in err, err
