"""Kernel lifetime and trust against the real server and real ipykernel kernels.

* By default kernels die with their server: a SIGKILLed server's kernel --
  and a child the kernel started in its process group -- is gone within
  :data:`GONE_WITHIN`.
* With ``--kernels-outlive-server`` the kernel survives, and a new server
  adopts it with the kernel's own key (not the new session's) and runs code
  on it.
* An adopted kernel that dies is always reported ``exited`` (repeated, on a
  server that has run a dozen sessions); one that is paused (SIGSTOP) goes
  ``offline``, stays there, and comes back when continued.

Every process started here carries the module's marker; the ``marker``
fixture proves none is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.kernel_server import (
    KernelServer,
    execute,
    kernel_client,
    kill_tree,
    start_external_kernel,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    # jupyter_client / jupyter_core emit deprecation noise we do not own.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: Bound on a kernel's death after its server's.
GONE_WITHIN = 10.0  # seconds
#: Bound on ``exited`` after an adopted kernel dies: one missed heartbeat
#: (5 s) and a probe, with slack for a loaded machine.
EXITED_WITHIN = 15.0  # seconds
#: Rounds of the adopted-kernel exit test: a 1-in-4 miss survives 12 rounds
#: with probability (3/4)**12, about 3 %.
ADOPT_ROUNDS = 12
#: Sessions the server runs before those rounds.
WARMUP_SESSIONS = 12


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@pytest.fixture
def servers() -> Iterator[list[KernelServer]]:
    """Servers a test started (see :func:`start_server`); all stopped afterwards."""
    made: list[KernelServer] = []
    yield made
    for server in made:
        server.stop()


def start_server(made: list[KernelServer], marker: str, workdir: str, *flags: str) -> KernelServer:
    server = KernelServer(workdir, marker, args=flags)
    made.append(server)
    return server.start()


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.path.realpath(str(tmp_path_factory.mktemp("kc-lifetime")))


@pytest.fixture
def external() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Kernels a test starts itself; killed with their trees afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                kill_tree([psutil.Process(proc.pid)])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def sigkill(server: KernelServer) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)


def kcclient_execute(server: KernelServer, session_id: str, code: str) -> str:
    """Run ``code`` through the server (WebSocket, the server signs); its stdout."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kallichore.client.cli",
            "--url",
            f"http://127.0.0.1:{server.port}",
            "execute",
            session_id,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=server.env(),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done
    return done.stdout


# ------------------------------------------------------------ kernel lifetime


def test_kernels_die_with_a_sigkilled_server(
    servers: list[KernelServer], marker: str, workdir: str
) -> None:
    server = start_server(servers, marker, workdir)
    server.create_and_start("doomed")
    kernel_pid = server.session("doomed")["process_id"]
    with kernel_client(server.connection_info("doomed")) as kc:
        result = execute(
            kc,
            "import subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print(child.pid)",
        )
    child_pid = int(result.stdout.strip())
    assert os.getpgid(child_pid) == kernel_pid  # in the kernel's group

    sigkill(server)
    began = time.monotonic()
    wait_for(
        lambda: not alive(kernel_pid) and not alive(child_pid),
        GONE_WITHIN,
        interval=0.05,
        what="the kernel and its child to die with the server",
    )
    print(f"kernel group gone {time.monotonic() - began:.2f} s after the server")


def test_kernels_outlive_the_server_when_asked_and_a_new_server_adopts_them(
    servers: list[KernelServer],
    marker: str,
    workdir: str,
    external: list[subprocess.Popen[bytes]],
) -> None:
    first = start_server(servers, marker, workdir, "--kernels-outlive-server")
    first.create_and_start("survivor")
    kernel_pid = first.session("survivor")["process_id"]
    info = first.connection_info("survivor")
    assert "JPY_PARENT_PID" not in psutil.Process(kernel_pid).environ()
    assert "41" in kcclient_execute(first, "survivor", "x = 41\nprint(x)")

    sigkill(first)
    time.sleep(2.0)  # longer than ipykernel's parent poll: nothing should notice
    assert alive(kernel_pid), "the kernel died with its server"

    try:
        second = start_server(servers, marker, workdir)
        second.create("adopter", argv=[])
        assert second.connection_info("adopter")["key"] != info["key"]
        res = second.put("/sessions/adopter/adopt", {**info, "signature_scheme": "hmac-md5"})
        assert res.status == 400, res
        assert "hmac-md5" in res.json()["message"], res
        res = second.put("/sessions/adopter/adopt", info)
        assert res.status == 200, f"{res}\n{second.log()[-3000:]}"
        assert res.json()["language_info"]["name"] == "python"
        # The server signs with the kernel's key: the kernel accepts, and its
        # state from the first server is there.
        assert "42" in kcclient_execute(second, "adopter", "print(x + 1)")
        assert second.connection_info("adopter")["key"] == info["key"]

        os.killpg(kernel_pid, signal.SIGKILL)
        second.wait_status("adopter", "exited", EXITED_WITHIN)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(kernel_pid, signal.SIGKILL)


# ------------------------------------------------------- adopted kernel exit


def test_an_adopted_kernel_that_dies_is_always_reported_exited(
    servers: list[KernelServer],
    marker: str,
    workdir: str,
    external: list[subprocess.Popen[bytes]],
) -> None:
    server = start_server(servers, marker, workdir)
    warmup = [f"warm-{i:02d}" for i in range(WARMUP_SESSIONS)]
    for sid in warmup:
        server.create(sid, connection_timeout=60)
    for sid in warmup:
        server.start_session(sid)
    for sid in warmup:
        assert server.post(f"/sessions/{sid}/kill").status == 200

    timings = []
    for round_ in range(ADOPT_ROUNDS):
        sid = f"adopted-{round_:02d}"
        server.create(sid, argv=[])
        kernel, info = start_external_kernel(server, workdir, sid, external)
        res = server.put(f"/sessions/{sid}/adopt", info)
        assert res.status == 200, f"{res}\n{server.log()[-3000:]}"
        with kernel_client(info) as kc:
            assert execute(kc, "1 + 1").status == "ok"
        os.killpg(kernel.pid, signal.SIGKILL)
        kernel.wait(timeout=10)
        began = time.monotonic()
        try:
            server.wait_status(sid, "exited", EXITED_WITHIN)
        except AssertionError:
            raise AssertionError(
                f"round {round_}: {server.session(sid)}\n{server.log()[-3000:]}"
            ) from None
        timings.append(time.monotonic() - began)
    print("seconds to exited:", " ".join(f"{t:.2f}" for t in timings))


def test_a_paused_adopted_kernel_stays_offline_and_comes_back(
    servers: list[KernelServer],
    marker: str,
    workdir: str,
    external: list[subprocess.Popen[bytes]],
) -> None:
    server = start_server(servers, marker, workdir)
    for round_ in range(2):
        sid = f"paused-{round_}"
        server.create(sid, argv=[])
        kernel, info = start_external_kernel(server, workdir, sid, external)
        res = server.put(f"/sessions/{sid}/adopt", info)
        assert res.status == 200, res

        os.killpg(kernel.pid, signal.SIGSTOP)
        server.wait_status(sid, "offline", EXITED_WITHIN)
        # Two more missed heartbeats, each probed: still only offline.
        time.sleep(12.0)
        assert server.status_of(sid) == "offline", server.log()[-3000:]

        os.killpg(kernel.pid, signal.SIGCONT)
        server.wait_status(sid, "idle", EXITED_WITHIN)
        with kernel_client(info) as kc:
            assert execute(kc, "1 + 1").status == "ok"

        os.killpg(kernel.pid, signal.SIGKILL)
        kernel.wait(timeout=10)
        server.wait_status(sid, "exited", EXITED_WITHIN)
