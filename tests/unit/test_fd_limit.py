"""kallichore.fd_limit: raising the limit, spotting exhaustion, explaining it."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import zmq

from kallichore import fd_limit
from kallichore.errors import ErrorCode, StartupError
from kallichore.fd_limit import FdLimits

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits of 1024/4096 with 100 descriptors open: far from the limit."""
    monkeypatch.setattr(fd_limit, "current_limits", lambda: FdLimits(1024, 4096))
    monkeypatch.setattr(fd_limit, "open_descriptors", lambda: 100)


def startup_error(cause: BaseException | None = None, message: str = "boom") -> StartupError:
    """A StartupError raised ``from None`` during ``cause``, as session.py raises them."""
    try:
        try:
            if cause is not None:
                raise cause
        except BaseException:
            raise StartupError(ErrorCode.PROCESS_START_FAILED, message) from None
        raise StartupError(ErrorCode.PROCESS_START_FAILED, message)
    except StartupError as exc:
        return exc


@pytest.mark.usefixtures("limits")
def test_unrelated_failure_is_left_alone() -> None:
    assert fd_limit.shortage_error(startup_error(FileNotFoundError(2, "nope"))) is None


@pytest.mark.usefixtures("limits")
@pytest.mark.parametrize(
    "cause",
    [
        OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        OSError(errno.ENFILE, os.strerror(errno.ENFILE)),
        zmq.ZMQError(errno.EMFILE),
    ],
)
def test_exhaustion_found_in_the_context_chain(cause: BaseException) -> None:
    shortage = fd_limit.shortage_error(startup_error(cause))
    assert shortage is not None
    assert shortage.http_status == 500
    assert shortage.code is ErrorCode.PROCESS_START_FAILED
    assert shortage.message == (
        "Failed to start session: out of file descriptors (soft limit 1024, hard limit 4096)"
    )
    assert shortage.details is not None
    assert "100 open, soft limit 1024, hard limit 4096" in shortage.details
    assert "`ulimit -n 4096`" in shortage.details
    assert "LimitNOFILE" not in shortage.details  # the hard limit has room
    assert shortage.details.endswith("The error was: boom.")


@pytest.mark.usefixtures("limits")
def test_exhaustion_found_in_the_message_only() -> None:
    # ZeroMQ errors reach us as text inside our own TransportError.
    error = startup_error(message="Failed to connect: Too many open files")
    assert fd_limit.shortage_error(error) is not None


def test_exhaustion_found_inside_an_exception_group() -> None:
    # A trio nursery (Quart-Trio's, around every request) raises groups.
    inner = OSError(errno.EMFILE, os.strerror(errno.EMFILE), "encodings/idna.py")
    assert fd_limit.is_exhaustion(ExceptionGroup("nursery", [ValueError("x"), inner]))
    assert not fd_limit.is_exhaustion(ExceptionGroup("nursery", [ValueError("x")]))


@pytest.mark.usefixtures("limits")
def test_a_request_at_the_limit_is_told_what_ran_out_and_what_to_change() -> None:
    message, details = fd_limit.request_shortage()
    assert message == (
        "The server is out of file descriptors (open-file soft limit 1024, hard limit 4096); "
        "try again once connections or sessions have closed"
    )
    assert "`ulimit -n 4096`" in details
    assert details.endswith(".")


def test_near_the_limit_counts_even_without_an_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    # ZeroMQ's I/O thread retries a failed connect quietly: the start times out.
    monkeypatch.setattr(fd_limit, "current_limits", lambda: FdLimits(256, 256))
    monkeypatch.setattr(fd_limit, "open_descriptors", lambda: 256 - fd_limit.NEEDED_TO_START + 1)
    timeout = StartupError(ErrorCode.SESSION_CONNECTION_TIMEOUT, "Timed out", exit_code=130)
    shortage = fd_limit.shortage_error(timeout)
    assert shortage is not None
    assert shortage.code is ErrorCode.SESSION_CONNECTION_TIMEOUT
    assert shortage.exit_code == 130
    assert shortage.details is not None
    assert "LimitNOFILE" in shortage.details  # soft == hard: the hard limit must go up
    monkeypatch.setattr(fd_limit, "open_descriptors", lambda: 256 - fd_limit.NEEDED_TO_START)
    assert fd_limit.shortage_error(timeout) is None


def test_a_start_is_refused_while_a_reserve_is_still_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fd_limit, "current_limits", lambda: FdLimits(256, 1024))
    monkeypatch.setattr(fd_limit, "open_descriptors", lambda: 256 - fd_limit.NEEDED_TO_START)
    fd_limit.check_headroom()  # exactly enough: allowed
    monkeypatch.setattr(fd_limit, "open_descriptors", lambda: 256 - fd_limit.NEEDED_TO_START + 1)
    with pytest.raises(StartupError) as caught:
        fd_limit.check_headroom()
    error = caught.value
    assert (error.http_status, error.code) == (500, ErrorCode.PROCESS_START_FAILED)
    assert "out of file descriptors (soft limit 256, hard limit 1024)" in error.message
    assert error.details is not None
    assert "`ulimit -n 1024`" in error.details
    assert error.details.endswith("31 free descriptors are needed to start one.")
    assert "exit_code" not in error.to_startup_body()
    # No limit, or no way to count: never refused.
    monkeypatch.setattr(fd_limit, "current_limits", lambda: FdLimits(None, None))
    fd_limit.check_headroom()


def test_sessions_allowed() -> None:
    assert fd_limit.sessions_allowed(FdLimits(1024, 4096), 59) == (1024 - 59 - 16) // 15 == 63
    assert fd_limit.sessions_allowed(FdLimits(10, 10), 59) == 0
    assert fd_limit.sessions_allowed(FdLimits(None, None), 59) is None


def test_raise_then_restore_for_a_child() -> None:
    """In a child process (limits are process-wide): raise, then spawn a grandchild."""
    code = textwrap.dedent(
        """
        import resource, subprocess, sys, time
        from kallichore import fd_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 200))
        before, after = fd_limit.raise_soft_limit()
        assert (before.soft, before.hard, after.soft, after.hard) == (64, 200, 200, 200), after
        assert fd_limit.raise_soft_limit() == (after, after)  # idempotent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            fd_limit.restore_child_limit(child.pid)
            if hasattr(resource, "prlimit"):
                assert resource.prlimit(child.pid, resource.RLIMIT_NOFILE) == (64, 200)
        finally:
            child.kill()
            child.wait()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_accept_errors_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fd_limit, "current_limits", lambda: FdLimits(256, 512))
    clock = [1000.0]
    monkeypatch.setattr(fd_limit.time, "monotonic", lambda: clock[0])
    throttle = fd_limit._AcceptErrorThrottle()

    def record() -> logging.LogRecord:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            "trio.serve_listeners",
            logging.ERROR,
            __file__,
            1,
            "accept returned %s",
            ("EMFILE",),
            exc_info,
        )

    first = record()
    assert throttle.filter(first)
    assert first.exc_info is None
    assert first.getMessage() == (
        "accept returned EMFILE; open-file soft limit 256, hard limit 512"
    )
    for _ in range(99):
        clock[0] += 0.1
        assert not throttle.filter(record())
    clock[0] += 0.2
    later = record()
    assert throttle.filter(later)
    assert later.getMessage().endswith("; 99 more like this in the last 10 s")
