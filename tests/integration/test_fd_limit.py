"""A real server under a low open-file limit: raised at start, explained when exhausted.

The server is started with ``RLIMIT_NOFILE`` (soft 64, hard 224), so it can
raise its soft limit to 224 and then hold about a dozen sessions. The kernels
are the fake kernel from :mod:`kallichore.testing.fake_kernel` (real
processes, real ZeroMQ; each costs the server as many descriptors as an
ipykernel, and starts faster).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.kernel_server import KernelServer, wait_for

pytestmark = pytest.mark.integration

SOFT, HARD = 64, 224
FAKE_KERNEL = [sys.executable, "-m", "kallichore.testing.fake_kernel", "-f", "{connection_file}"]
#: More than SOFT descriptors' worth of sessions: the test must hit the limit.
MAX_SESSIONS = HARD // 10


@pytest.fixture
def server(tmp_path: os.PathLike[str], marker: str) -> Iterator[KernelServer]:
    server = KernelServer(str(tmp_path), marker, fd_limits=(SOFT, HARD))
    try:
        yield server.start()
    finally:
        server.stop()


def start_until_refused(server: KernelServer) -> tuple[list[str], dict[str, object]]:
    """Start fake-kernel sessions until one fails for lack of descriptors.

    Returns the started ids and that failure's body. A start that fails for
    another reason (a kernel losing a port race with another process on a
    busy machine) is tolerated twice.
    """
    started: list[str] = []
    other_failures: list[object] = []
    for n in range(MAX_SESSIONS):
        sid = f"fd-{n}"
        server.create(sid, argv=FAKE_KERNEL, connection_timeout=20)
        res = server.post(f"/sessions/{sid}/start")
        if res.status != 200:
            assert res.status == 500, res
            body = res.json()
            if "file descriptors" in body["error"]["message"]:
                return started, body
            other_failures.append(body)
            assert len(other_failures) <= 2, other_failures
            continue
        started.append(sid)
        server.remember_children()
    raise AssertionError(f"{MAX_SESSIONS} sessions started under a hard limit of {HARD}")


def test_limit_is_raised_and_exhaustion_is_explained(server: KernelServer) -> None:
    assert psutil.Process(server.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (HARD, HARD)  # type: ignore[union-attr]
    log = server.log()
    assert f"Raised the open-file soft limit from {SOFT} to {HARD}" in log
    assert f"Open-file limit: soft limit {HARD}, hard limit {HARD};" in log
    assert "room for about" in log

    started, body = start_until_refused(server)
    assert len(started) >= 5, (started, body)
    error = body["error"]
    assert isinstance(error, dict)
    assert "out of file descriptors" in error["message"]
    assert f"soft limit {HARD}, hard limit {HARD}" in error["message"]
    # soft == hard: the advice is to raise the hard limit.
    assert "raise the hard limit (LimitNOFILE=" in error["details"]

    # Kernels get the soft limit the server started with, not the raised one.
    kernel_pid = server.get(f"/sessions/{started[0]}").json()["process_id"]
    assert psutil.Process(kernel_pid).rlimit(psutil.RLIMIT_NOFILE) == (SOFT, HARD)

    # The server stays up, and a freed session's descriptors are usable again.
    assert server.get("/status").status == 200
    assert server.post(f"/sessions/{started[0]}/kill").status == 200
    wait_for(
        lambda: server.delete(f"/sessions/{started[0]}").status == 200,
        20,
        what="deletion of the killed session",
    )
    again = "fd-again"
    server.create(again, argv=FAKE_KERNEL, connection_timeout=20)
    res = server.post(f"/sessions/{again}/start")
    assert res.status == 200, f"{res}\n{server.log()[-3000:]}"


def test_accept_at_the_limit_waits_instead_of_failing(server: KernelServer) -> None:
    """Idle connections use up the descriptors; a new request is served once some close."""
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    fillers: list[socket.socket] = []
    try:
        open_before = proc.num_fds()
        while proc.num_fds() < HARD and len(fillers) < HARD:
            fillers.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            # One at a time, each accepted before the next: a filler left in
            # the listen backlog would take a descriptor freed below before
            # the late request could, and then the late request would wait
            # for the server to time idle connections out.
            wait_for(
                lambda: proc.num_fds() >= min(HARD, open_before + len(fillers)),
                10,
                interval=0.005,
                what="the server to accept a filler",
            )
        assert proc.num_fds() >= HARD, "the server never ran out of descriptors"
        late = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        late.sendall(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # the server tries to accept it, and fails, meanwhile
        for filler in fillers[:8]:
            filler.close()
        reply = late.recv(4096)
        late.close()
        assert reply.startswith(b"HTTP/1.1 200"), (reply[:300], server.log()[-3000:])
    finally:
        for filler in fillers:
            filler.close()
    assert server.proc.poll() is None
    assert server.get("/status").status == 200
    # trio retries every 0.1 s and logs each failure; we let one line through per 10 s.
    emfile_lines = [line for line in server.log().splitlines() if "returned EMFILE" in line]
    assert 1 <= len(emfile_lines) <= 3, emfile_lines
    assert f"open-file soft limit {HARD}, hard limit {HARD}" in emfile_lines[0]


def test_requests_are_answered_with_no_descriptor_to_spare(server: KernelServer) -> None:
    """The descriptor an accept takes is the last one: nothing on the way to the answer may open a file.

    The server's soft limit is lowered to what it holds plus one. These are
    its first requests, so this also covers what is done only once (a codec
    or module imported on first use used to make every request at the limit
    an empty ``500``).
    """
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)  # type: ignore[attr-defined]
    proc.rlimit(psutil.RLIMIT_NOFILE, (proc.num_fds() + 1, hard))  # type: ignore[attr-defined]
    try:
        for path, status in [
            ("/status", 200),
            ("/sessions", 200),
            ("/openapi.json", 200),
            ("/no-such-endpoint", 404),
            ("/status", 200),
        ]:
            res = server.get(path, timeout=10)
            assert res.status == status, f"{path}: {res}\n{server.log()[-3000:]}"
            assert res.headers["content-type"] == "application/json", res
            res.json()
    finally:
        proc.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))  # type: ignore[attr-defined]
    assert "Error in ASGI Framework" not in server.log()
