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
import fcntl
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kallichore import API_VERSION, __version__
from kallichore.client._execute import INTERRUPT_GRACE
from tests.support.channel_server import ChannelServer
from tests.support.paths import REPO_ROOT, with_repo_on_path

pytestmark = pytest.mark.integration

#: Bound on one CLI invocation.
CLI_TIMEOUT = 60.0  # seconds
#: Bound on the console printing what a test waits for.
EXPECT_TIMEOUT = 30.0  # seconds
#: Code that says it started, then runs long enough to need an interrupt.
# 'g' + 'o': the echo of the source on a terminal must not look like the output.
LONG_RUNNING = "import time; print('g' + 'o', flush=True); time.sleep(60)"
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
    with_repo_on_path(values)
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


def _kcclient(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(*args),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env, stdin=subprocess.DEVNULL
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
    gone = _kcclient(env, "execute", sid, "1")
    assert gone.returncode == 1
    assert gone.stderr.startswith("kcclient: "), gone.stderr
    assert gone.stderr.count("\n") == 1, gone.stderr
    assert "Group" not in gone.stderr, gone.stderr


# ----------------------------------------------------------------- output


def test_pipe_closed_by_head_ends_quietly(env: dict[str, str], session: str) -> None:
    command = " ".join(
        [*map(_quote, _argv("execute", session, "for i in range(20000): print(i)")), "| head -2"]
    )
    result = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout == "0\n1\n"
    assert result.stderr == ""


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


def test_plain_text_when_not_a_terminal_and_in_json(env: dict[str, str], session: str) -> None:
    failed = _kcclient(env, "execute", session, "1/0")
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stderr
    assert ANSI not in failed.stderr

    as_json = _kcclient(env, "execute", session, "1/0", "--json")
    document = json.loads(as_json.stdout)
    assert document["status"] == "error"
    traceback = "\n".join(document["error"]["traceback"])
    assert "ZeroDivisionError" in traceback
    assert ANSI not in as_json.stdout  # in the outputs too


def test_colour_only_on_a_terminal_without_no_color(env: dict[str, str], session: str) -> None:
    coloured = _on_a_terminal(env, "execute", session, "1/0")
    assert "ZeroDivisionError" in coloured
    assert ANSI in coloured
    plain = _on_a_terminal({**env, "NO_COLOR": "1"}, "execute", session, "1/0")
    assert "ZeroDivisionError" in plain
    assert ANSI not in plain


def test_stream_without_newline_does_not_run_into_the_result(
    env: dict[str, str], session: str
) -> None:
    run = _kcclient(env, "execute", session, "print('partial', end='')\n6*7")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "partial\n42\n"


# ---------------------------------------------------------------- options


def test_json_and_version_where_users_put_them(env: dict[str, str], session: str) -> None:
    for args in (["list", "--json"], ["--json", "list"]):
        listed = _kcclient(env, *args)
        assert listed.returncode == 0, listed.stderr
        assert session in [s["session_id"] for s in json.loads(listed.stdout)]
    status = _kcclient(env, "status", "--json")
    assert json.loads(status.stdout)["sessions"] >= 1

    expected = f"{API_VERSION} (kallichore {__version__})\n"
    versions = {
        "kcclient": _kcclient(env, "--version"),
        "kcserver": _run(
            [sys.executable, "-c", "from kallichore.cli import main; main()", "--version"], env
        ),
        "python -m kallichore": _run([sys.executable, "-m", "kallichore", "--version"], env),
    }
    for prog, result in versions.items():
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{prog} {expected}"


def test_help_goes_to_stdout(env: dict[str, str]) -> None:
    for argv in (
        _argv("--help"),
        _argv("console", "--help"),
        [sys.executable, "-m", "kallichore", "--help"],
        [sys.executable, "-m", "kallichore", "client", "--help"],
    ):
        result = _run(argv, env)
        assert result.returncode == 0, (argv, result.stderr)
        assert "usage:" in result.stdout, argv
        assert result.stderr == "", argv


# --------------------------------------------------------------- commands


def test_kernelspecs_needs_no_server(env: dict[str, str], tmp_path: Path) -> None:
    spec_dir = tmp_path / "data" / "kernels" / "echo"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": ["echo", "{connection_file}"], "display_name": "Echo"})
    )
    alone = {k: v for k, v in env.items() if k != "KALLICHORE_CONNECTION_FILE"}
    listed = _kcclient(alone, "kernelspecs")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("Available kernels:\n")
    assert re.search(r"^  echo\s+" + re.escape(str(spec_dir)) + "$", listed.stdout, re.M)
    assert re.search(r"^  python3\s", listed.stdout, re.M)
    as_json = json.loads(_kcclient(alone, "kernelspecs", "--json").stdout)["kernelspecs"]
    assert as_json["echo"]["resource_dir"] == str(spec_dir)
    assert as_json["echo"]["spec"]["display_name"] == "Echo"


def test_connection_file_works_with_jupyter_client(
    env: dict[str, str], session: str, tmp_path: Path
) -> None:
    from jupyter_client import BlockingKernelClient

    written = _kcclient(env, "connection-file", session)
    assert written.returncode == 0, written.stderr
    path = Path(written.stdout.strip())
    assert path == tmp_path / "runtime" / f"kernel-{session}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    client = BlockingKernelClient()
    client.load_connection_file(str(path))
    client.start_channels()
    try:
        reply = client.kernel_info(reply=True, timeout=EXPECT_TIMEOUT)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["implementation"] == "ipython"


# --------------------------------------------------------------- messages


def test_delete_of_a_running_session_says_kill_it_first(env: dict[str, str], session: str) -> None:
    result = _kcclient(env, "delete", session)
    assert result.returncode == 1
    assert result.stderr == f"kcclient: Session {session} is running; kill it first\n"


def test_401_says_which_token_and_where_from(env: dict[str, str], server: ChannelServer) -> None:
    wrong = _kcclient(env, "--token", "wrong", "list")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr, wrong.stderr
    assert "sent the token given with --token" in wrong.stderr, wrong.stderr
    execute = _kcclient(env, "--token", "wrong", "execute", "any", "1")
    assert execute.stderr == wrong.stderr  # the channel says the same
    no_token = _kcclient(env, "--url", f"http://127.0.0.1:{server.port}", "list")
    assert no_token.returncode == 1
    assert "sent no token: no --token and no connection file" in no_token.stderr, no_token.stderr
    assert no_token.stderr.count("\n") == 1


def test_failed_start_leaves_no_session(env: dict[str, str], tmp_path: Path) -> None:
    spec_dir = tmp_path / "data" / "kernels" / "broken"
    spec_dir.mkdir(parents=True)
    code = "import sys; print('no luck today'); sys.exit(3)"
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-c", code]}))
    sid = f"kc-broken-{uuid.uuid4().hex[:8]}"
    started = _kcclient(env, "start", "--kernel", "broken", "--id", sid)
    assert started.returncode == 1
    assert started.stderr.startswith("no luck today\nkcclient: "), started.stderr
    assert started.stderr.count("\n") == 2, started.stderr
    # On a terminal (with the spinner) the same, not a wrapped error.
    shown = _on_a_terminal(env, "start", "--kernel", "broken", "--id", sid + "-tty")
    assert "no luck today\r\nkcclient: " in shown, shown
    assert "Group" not in shown, shown
    listed = _kcclient(env, "list", "--json")
    left = [s["session_id"] for s in json.loads(listed.stdout)]
    assert sid not in left
    assert sid + "-tty" not in left


# ---------------------------------------------------------------- console


class _Terminal:
    """A process on a pseudo-terminal, read with ``expect``."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, follower = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env={**env, "TERM": "xterm"},
            cwd=REPO_ROOT,
            start_new_session=True,
            # Make the pty the controlling terminal, so ^C becomes SIGINT.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(follower)
        self.seen = ""
        self.log = ""

    def expect(self, text: str, timeout: float = EXPECT_TIMEOUT) -> str:
        """Read until ``text`` appears; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen in:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                assert chunk, f"{text!r} not seen before EOF in:\n{self.seen}"
                self.seen += chunk.decode("utf-8", "replace")
        head, _, self.seen = self.seen.partition(text)
        self.log += head + text
        return head + text

    def prompt(self) -> str:
        """Read up to the next ``In [N]: `` prompt; return what came before it, the prompt included."""
        before = self.expect("In [")
        return before + self.expect("]: ")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout=EXPECT_TIMEOUT)
        self.proc.kill()
        self.proc.wait(timeout=EXPECT_TIMEOUT)
        os.close(self.master)
        return -9


def _on_a_terminal(env: dict[str, str], *args: str) -> str:
    terminal = _Terminal(_argv(*args), env)
    try:
        out = ""
        with contextlib.suppress(AssertionError):  # read to EOF
            out = terminal.expect("\0never\0")
        return terminal.seen or out
    finally:
        terminal.close()


def test_console_history_ctrl_c_and_input(env: dict[str, str], session: str) -> None:
    terminal = _Terminal(_argv("console", session), env)
    try:
        terminal.expect("Ctrl-D leaves")
        terminal.prompt()
        terminal.send("x = 41\r")
        terminal.prompt()
        terminal.send("x + 1\r")
        assert re.search(r"Out\[\d+\]: 42\r?\n", terminal.prompt())
        terminal.send("x = 1\r")
        terminal.prompt()
        terminal.send("\x1b[A\x1b[A\r")  # up twice: x + 1 again
        assert re.search(r"Out\[\d+\]: 2\r?\n", terminal.prompt())  # readline redraws the line

        terminal.send("for i in range(2):\r")
        terminal.expect("...: ")
        terminal.send("print('loop', i)\r")
        terminal.expect("...: ")
        terminal.send("\r")
        assert "loop 1" in terminal.prompt()

        terminal.send("name = input('who? ')\r")
        terminal.expect("who? ")
        terminal.send("bob\r")
        terminal.prompt()
        terminal.send("name.upper()\r")
        assert "'BOB'" in terminal.prompt()

        terminal.send(LONG_RUNNING + "\r")
        terminal.expect("go")
        terminal.send("\x03")
        assert "KeyboardInterrupt" in terminal.prompt()
        terminal.send("print('still here')\r")
        assert "still here" in terminal.prompt()

        terminal.send("\x04")
        assert terminal.close() == 0
    finally:
        terminal.close()
    history = Path(env["JUPYTER_DATA_DIR"]) / "kcclient_history"
    lines = history.read_text().splitlines()
    assert "x = 41" in lines
    assert "bob" not in lines  # answers to input() are not code
