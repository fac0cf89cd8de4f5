"""KernelSession, through SessionRegistry, against in-memory kernels in virtual time.

The registry is built with :class:`tests.support.memory_kernel.MemoryKernelBackend`:
every kernel is a few trio tasks speaking Jupyter over
:mod:`kallichore.transport.memory`, and its "process" takes signals. All the
supervisor code runs for real -- connection files, the JEP 65/66 startup
paths, the pumps, the heartbeat, the shutdown ladder of
:func:`~kallichore.supervisor.process.terminate_process_group` -- under the
autojump clock, so connection timeouts, shutdown graces and hours of idleness
take no real time and their lengths can be asserted exactly.

The same scenarios over real processes and ZeroMQ are in
tests/integration/test_session_fake_kernel.py.
"""

from __future__ import annotations

import errno
import itertools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from kallichore.errors import SessionStateError, StartupError
from kallichore.server.idle import IdleWatcher
from kallichore.session.state import SessionStatus
from kallichore.supervisor.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.registry import SessionRegistry
from kallichore.supervisor.session import (
    SHUTDOWN_POLITE_GRACE,
    SHUTDOWN_TERM_GRACE,
    KernelSession,
    SessionSpec,
)
from kallichore.testing.fake_kernel import Behaviour, fake_kernel_argv
from kallichore.transport.base import CHANNELS
from kallichore.transport.memory import FIRST_PORT
from kallichore.wire.connection_file import ConnectionInfo, encode_connection_file
from tests.support.memory_kernel import FIRST_FAKE_PID, MemoryKernelBackend, MemoryKernelProcess
from tests.support.session_frames import (
    Frames,
    execute_request,
    is_idle,
    is_jupyter,
    is_output,
    is_status_event,
    msg_id,
)

LADDER = SHUTDOWN_POLITE_GRACE + SHUTDOWN_TERM_GRACE  # seconds a kernel that ignores both takes


@pytest.fixture
async def backend() -> AsyncIterator[MemoryKernelBackend]:
    """Runs the fake kernels; at teardown (after the registry's) none may be left running."""
    async with trio.open_nursery() as nursery:
        backend = MemoryKernelBackend(nursery)
        yield backend
        running = [p.pid for p in backend.spawned if p.returncode is None]
        nursery.cancel_scope.cancel()
    assert not running, f"fake kernels left running: {running}"


@pytest.fixture
async def registry(backend: MemoryKernelBackend) -> AsyncIterator[SessionRegistry]:
    registry = SessionRegistry(
        kernel_backend=backend, kernel_policy=KernelPolicy(outlive_server=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        yield registry
        nursery.cancel_scope.cancel()


@pytest.fixture
def make_session(registry: SessionRegistry, tmp_path: Path) -> Callable[..., KernelSession]:
    """``make_session(*behaviours, protocol_version=, ...)`` -> a new session."""
    ids = itertools.count()

    def make(
        *behaviours: str,
        protocol_version: str = "5.3",
        connection_timeout: float = 30.0,
        interrupt_mode: str = "message",
    ) -> KernelSession:
        argv = fake_kernel_argv(*behaviours, registration_file=protocol_version == "5.5")
        spec = SessionSpec(
            session_id=f"memory-{next(ids)}",
            argv=tuple(argv),
            display_name="Fake",
            language="fake",
            username="tester",
            input_prompt=">>> ",
            continuation_prompt="... ",
            session_mode="console",
            working_directory=str(tmp_path),
            env=(),
            interrupt_mode=interrupt_mode,
            connection_timeout=connection_timeout,
            protocol_version=protocol_version,
        )
        return registry.create(spec)

    return make


StartSession = Callable[..., Awaitable[tuple[KernelSession, MemoryKernelProcess]]]


@pytest.fixture
def start_session(
    make_session: Callable[..., KernelSession], backend: MemoryKernelBackend
) -> StartSession:
    """``await start_session(*behaviours, ...)`` -> a started session and its kernel process."""

    async def start(*behaviours: str, **options: Any) -> tuple[KernelSession, MemoryKernelProcess]:
        session = make_session(*behaviours, **options)
        await session.start()
        return session, process_of(backend, session)

    return start


def process_of(backend: MemoryKernelBackend, session: KernelSession) -> MemoryKernelProcess:
    (process,) = [p for p in backend.spawned if p.pid == session.process_id]
    return process


# -------------------------------------------------------------------- start


async def test_start_returns_kernel_info_and_a_polite_shutdown_takes_no_time(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
) -> None:
    session = make_session()
    info = await session.start()

    assert info["implementation"] == "fake"
    assert session.kernel_info == info
    assert session.status is SessionStatus.IDLE
    assert session.process_id == FIRST_FAKE_PID
    began = trio.current_time()
    await session.shutdown()
    assert trio.current_time() - began < 0.1
    assert session.status is SessionStatus.EXITED
    assert session.exit_code == 0
    assert backend.spawned[0].signals == []  # shutdown_request was enough


async def test_execute_streams_output_and_reports_every_status(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    frames = Frames(session)
    await session.start()
    await frames.wait_for(is_output("listening on"))
    request = execute_request("hello")
    await session.send_from_client(request)
    await frames.wait_for(is_idle(msg_id(request)))

    assert [s["content"]["text"] for s in frames.jupyter("stream")] == ["hello"]
    (reply,) = frames.jupyter("execute_reply")
    assert reply["content"]["execution_count"] == 1
    assert not frames.jupyter("kernel_info_reply")
    assert [e["status"] for e in frames.events("status")] == ["starting", "idle", "busy", "idle"]


async def test_jep66_registration_handshake(
    autojump_clock: MockClock, make_session: Callable[..., KernelSession]
) -> None:
    session = make_session(protocol_version="5.5")
    frames = Frames(session)
    await session.start()
    frames.drain()
    [completed] = frames.events("handshakeCompleted")
    assert session.connection_info is not None
    assert completed == [session.session_id, session.connection_info.to_json_dict()]
    assert session.connection_info.shell_port >= FIRST_PORT  # the kernel's own choice


async def test_a_kernel_that_never_answers_times_out_after_exactly_the_connection_timeout(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
) -> None:
    session = make_session("no-kernel-info", connection_timeout=30)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert trio.current_time() - began == pytest.approx(30, abs=0.01)
    assert caught.value.code.value == "KS-7"
    assert caught.value.exit_code == 130
    assert "listening on" in (caught.value.output or "")
    assert session.status is SessionStatus.EXITED
    assert backend.spawned[0].signals == [signal.SIGKILL]  # a failed start is killed


@pytest.mark.parametrize(
    ("protocol_version", "code"),
    [("5.3", "KS-7"), ("5.5", "KS-17")],
    ids=["connection-file", "jep66"],
)
async def test_a_kernel_that_never_binds_times_out_in_the_right_phase(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    protocol_version: str,
    code: str,
) -> None:
    session = make_session("slow-start 60", protocol_version=protocol_version, connection_timeout=5)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert trio.current_time() - began == pytest.approx(5, abs=0.01)
    assert caught.value.code.value == code


async def test_exit_on_start_is_ks8_with_exit_code_and_output_at_once(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("exit-on-start 3", "slow-start 2")
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert trio.current_time() - began == pytest.approx(2, abs=0.01)  # not the 30 s timeout
    error = caught.value
    assert error.code.value == "KS-8"
    assert error.exit_code == 3
    assert "simulated startup failure" in (error.output or "")


async def test_a_kernel_refused_during_the_jep66_handshake_is_ks14(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("bad-signature", protocol_version="5.5")
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert caught.value.code.value == "KS-14"
    assert caught.value.exit_code == 1
    assert "handshake refused" in (caught.value.output or "")


async def test_a_failed_spawn_is_a_startup_error_with_the_errno(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
    registry: SessionRegistry,
) -> None:
    backend.spawn_error = PermissionError(errno.EACCES, "Permission denied", "fake")
    session = make_session()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert caught.value.exit_code == errno.EACCES
    assert "Permission denied" in caught.value.message
    assert session.status is SessionStatus.EXITED
    assert len(registry.ports) == 0  # the ports picked for it are free again


async def test_a_kernel_that_lost_a_port_race_is_started_again_with_new_ports(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend.ports_taken = 2
    session = make_session()
    await session.start()

    assert [p.returncode for p in backend.spawned] == [1, 1, None]
    assert session.status is SessionStatus.IDLE
    retries = [r.getMessage() for r in caplog.records if "starting again" in r.getMessage()]
    assert [m.rsplit("(", 1)[1] for m in retries] == ["attempt 2 of 3)", "attempt 3 of 3)"]


async def test_a_kernel_that_keeps_losing_port_races_fails_after_three_attempts(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
) -> None:
    backend.ports_taken = 3
    session = make_session()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert caught.value.code.value == "KS-8"
    assert "Address already in use" in (caught.value.output or "")
    assert len(backend.spawned) == 3


# ------------------------------------------------------- the shutdown ladder


async def test_shutdown_of_a_kernel_that_ignores_everything_climbs_the_whole_ladder(
    autojump_clock: MockClock,
    start_session: StartSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor.process")
    session, process = await start_session("ignore-shutdown")
    began = trio.current_time()
    await session.shutdown()

    assert trio.current_time() - began == pytest.approx(LADDER, abs=0.01)
    assert process.signals == [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL]
    assert session.exit_code == -signal.SIGKILL
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"did not exit {SHUTDOWN_POLITE_GRACE:.1f} s after" in m for m in messages)
    assert any("sending SIGKILL" in m for m in messages)


async def test_a_kernel_that_ignores_the_request_but_not_sigterm_stops_at_the_second_rung(
    autojump_clock: MockClock,
    start_session: StartSession,
) -> None:
    session, process = await start_session("ignore-shutdown")
    process.ignore_sigterm = False
    began = trio.current_time()
    await session.shutdown()

    assert trio.current_time() - began == pytest.approx(SHUTDOWN_POLITE_GRACE, abs=0.01)
    assert process.signals == [signal.SIGTERM]
    assert session.exit_code == -signal.SIGTERM


async def test_a_stopped_kernel_skips_the_request_and_sigcont_lets_it_act_on_sigterm(
    autojump_clock: MockClock,
    start_session: StartSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor.process")
    session, process = await start_session()
    frames = Frames(session)
    process.signal_group(signal.SIGSTOP)  # a debugger stopped it: it reads nothing
    began = trio.current_time()
    await session.shutdown()

    assert trio.current_time() - began < 0.1  # no wait for a reply that cannot come
    assert process.signals == [signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT]
    assert session.exit_code == -signal.SIGTERM
    assert frames.drain()[-1] == {"kind": "kernel", "exited": -signal.SIGTERM}
    assert frames.events("status")[-1]["status"] == "exited"
    messages = [r.getMessage() for r in caplog.records]
    assert any("is stopped (SIGSTOP or a debugger)" in m for m in messages)
    assert any(f"{process.pid} stopped (signal: 15 (SIGTERM))" in m for m in messages)


async def test_a_stopped_kernel_that_ignores_sigterm_is_killed_at_the_term_grace(
    autojump_clock: MockClock,
    start_session: StartSession,
) -> None:
    session, process = await start_session("ignore-shutdown")
    frames = Frames(session)
    process.signal_group(signal.SIGSTOP)
    began = trio.current_time()
    await session.shutdown()

    assert trio.current_time() - began == pytest.approx(SHUTDOWN_TERM_GRACE, abs=0.01)
    assert process.signals == [signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT, signal.SIGKILL]
    assert session.exit_code == -signal.SIGKILL
    assert frames.drain()[-1] == {"kind": "kernel", "exited": -signal.SIGKILL}
    assert frames.events("status")[-1]["status"] == "exited"


async def test_kill_skips_the_polite_step_and_exited_is_the_last_event(
    autojump_clock: MockClock,
    start_session: StartSession,
) -> None:
    session, process = await start_session("ignore-shutdown")
    frames = Frames(session)
    began = trio.current_time()
    await session.kill()

    assert trio.current_time() - began < 0.1
    assert process.signals == [signal.SIGKILL]
    assert session.process_id is None
    assert frames.drain()[-1] == {"kind": "kernel", "exited": -signal.SIGKILL}
    assert frames.events("status")[-1]["status"] == "exited"


async def test_registry_teardown_stops_every_kernel_concurrently(
    autojump_clock: MockClock, make_session: Callable[..., KernelSession], registry: SessionRegistry
) -> None:
    stubborn = [make_session("ignore-shutdown") for _ in range(3)]
    polite = make_session()
    for session in (*stubborn, polite):
        await session.start()
    began = trio.current_time()
    await registry.shutdown_all()
    assert trio.current_time() - began == pytest.approx(LADDER, abs=0.01)
    assert all(s.status is SessionStatus.EXITED for s in (*stubborn, polite))
    assert polite.exit_code == 0


# -------------------------------------------------------------------- restart


async def test_restart_gives_a_new_process_and_the_old_one_left_politely(
    autojump_clock: MockClock,
    start_session: StartSession,
) -> None:
    session, first = await start_session()
    frames = Frames(session)
    await session.restart(None, None)

    assert session.process_id not in (None, first.pid)
    assert first.returncode == 0
    assert first.signals == []
    assert session.status is SessionStatus.IDLE
    frames.drain()
    assert frames.events("exited") == [0]
    statuses = [e["status"] for e in frames.events("status")]
    assert statuses[:2] == ["starting", "idle"]
    assert statuses[-3:] == ["exited", "starting", "idle"]


async def test_restart_of_a_stubborn_kernel_climbs_the_ladder_then_starts_again(
    autojump_clock: MockClock,
    start_session: StartSession,
    backend: MemoryKernelBackend,
) -> None:
    session, first = await start_session("ignore-shutdown")
    began = trio.current_time()
    await session.restart(None, None)

    assert trio.current_time() - began == pytest.approx(LADDER, abs=0.01)
    assert first.signals == [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL]
    assert session.status is SessionStatus.IDLE
    assert len(backend.spawned) == 2


async def test_restart_whose_new_kernel_hangs_is_ks17_after_the_timeout(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session(protocol_version="5.5", connection_timeout=10)
    await session.start()
    hang = (("replace", "FAKE_KERNEL_BEHAVIOUR", "slow-start 60"),)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.restart(None, hang)
    assert trio.current_time() - began == pytest.approx(10, abs=0.01)
    assert caught.value.code.value == "KS-17"
    assert session.status is SessionStatus.EXITED


# ------------------------------------------------------ interrupt and queue


async def test_message_interrupt_ends_the_execution_and_drops_the_queue(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
) -> None:
    session = make_session(interrupt_mode="message")
    frames = Frames(session)
    await session.start()
    requests = [execute_request(code) for code in ("sleep 20", "second", "third")]
    for request in requests:
        await session.send_from_client(request)
    await frames.wait_for(is_jupyter("execute_input", parent=msg_id(requests[0])))
    await trio.sleep(3)
    began = trio.current_time()
    await session.interrupt()

    reply = await frames.wait_for(is_jupyter("execute_reply", parent=msg_id(requests[0])))
    assert trio.current_time() - began < 0.1
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    [dropped] = frames.events("executionsDropped")
    assert dropped["msg_ids"] == [msg_id(r) for r in requests[1:]]
    await frames.wait_for(is_idle(msg_id(requests[0])))
    await trio.sleep(30)  # whatever was dropped would have run by now
    frames.drain()
    parents = {(f["parent_header"] or {}).get("msg_id") for f in frames.jupyter()}
    assert not parents & {msg_id(r) for r in requests[1:]}
    assert process_of(backend, session).signals == []


async def test_signal_interrupt_reaches_the_kernel_process(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
) -> None:
    session = make_session(interrupt_mode="signal")
    frames = Frames(session)
    await session.start()
    request = execute_request("sleep 20")
    await session.send_from_client(request)
    await frames.wait_for(is_jupyter("execute_input", parent=msg_id(request)))
    await session.interrupt()
    reply = await frames.wait_for(is_jupyter("execute_reply", parent=msg_id(request)))
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert process_of(backend, session).signals == [signal.SIGINT]


async def test_execute_requests_queue_and_run_in_order(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    frames = Frames(session)
    await session.start()
    requests = [execute_request(code) for code in ("sleep 5", "second", "third")]
    began = trio.current_time()
    for request in requests:
        await session.send_from_client(request)
    frames.drain()
    assert frames.events("executionQueued") == [msg_id(r) for r in requests[1:]]

    await frames.wait_for(is_idle(msg_id(requests[2])))
    assert trio.current_time() - began == pytest.approx(5, abs=0.01)
    streams = frames.jupyter("stream")
    assert [s["parent_header"]["msg_id"] for s in streams] == [msg_id(r) for r in requests]
    counts = [r["content"]["execution_count"] for r in frames.jupyter("execute_reply")]
    assert counts == [1, 2, 3]
    assert session.execution_queue.to_json() == {"length": 0, "pending": []}


async def test_flood_arrives_complete_and_in_order(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    frames = Frames(session)
    await session.start()
    request = execute_request("flood 2000")
    await session.send_from_client(request)
    await frames.wait_for(is_idle(msg_id(request)))
    texts = [s["content"]["text"] for s in frames.jupyter("stream")]
    assert texts == [f"{i}\n" for i in range(2000)]
    assert session.fanout.outbox.take_dropped() == 0


# ------------------------------------------------------ liveness and exits


async def test_stalled_heartbeat_goes_offline_on_time_and_comes_back_with_a_new_kernel(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("stall-heartbeat-after 10")
    frames = Frames(session)
    await session.start()
    began = trio.current_time()
    event = await frames.wait_for(is_status_event("offline"))
    # The last echoed beat is the one before 10 s; the next times out.
    offline_after = trio.current_time() - began
    assert 10 <= offline_after <= 10 + HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT
    assert event["status"]["reason"] == "lost heartbeat"
    assert session.process_id is not None
    assert not frames.events("exited")


async def test_kernel_exit_after_start_is_a_warning_and_an_exited_event(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor.session")
    session = make_session()
    frames = Frames(session)
    await session.start()
    pid = session.process_id
    await session.send_from_client(execute_request("exit 7"))
    await frames.wait_for(lambda f: f["kind"] == "kernel" and "exited" in f)
    assert frames.events("exited") == [7]
    assert session.status is SessionStatus.EXITED
    (death,) = [r for r in caplog.records if "died while busy" in r.getMessage()]
    assert death.levelno == logging.WARNING
    assert f"kernel process {pid} died while busy (exit status: 7)" in death.getMessage()


# ------------------------------------------------------------- idle timeout


async def test_idle_shutdown_waits_for_a_long_execution_then_one_idle_period(
    autojump_clock: MockClock, make_session: Callable[..., KernelSession], registry: SessionRegistry
) -> None:
    """Hours of virtual time: a 2 h execution keeps a 1 h idle timeout at bay."""
    hour = 3600.0
    fired: list[float] = []
    watcher = IdleWatcher(hour, registry.is_active, lambda: fired.append(trio.current_time()))
    registry.on_activity = watcher.nudge
    session = make_session()
    frames = Frames(session)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await session.start()
        began = trio.current_time()
        request = execute_request(f"sleep {2 * hour:g}")
        await session.send_from_client(request)
        await frames.wait_for(is_idle(msg_id(request)))
        idle_at = trio.current_time()
        assert idle_at - began == pytest.approx(2 * hour, abs=0.1)
        assert not fired, "the server shut down while a session was busy"
        await trio.sleep(2 * hour)
    assert fired == [pytest.approx(idle_at + hour, abs=0.1)]


# ------------------------------------------------------------------- adopt


async def test_an_adopted_kernel_that_goes_away_ends_its_session(
    autojump_clock: MockClock,
    make_session: Callable[..., KernelSession],
    backend: MemoryKernelBackend,
    tmp_path: Path,
) -> None:
    network = backend.transport.network
    ports = {f"{name}_port": network.pick_port() for name in CHANNELS}
    info = ConnectionInfo(**ports, key="adopted-key")
    path = tmp_path / "someone-elses-kernel.json"
    path.write_bytes(encode_connection_file(info))
    kernel = backend.start_kernel(str(path), Behaviour())
    session = make_session()
    frames = Frames(session)

    kernel_info = await session.adopt(info)
    assert kernel_info["implementation"] == "fake"
    assert session.status is SessionStatus.IDLE
    request = execute_request("adopted")
    await session.send_from_client(request)
    await frames.wait_for(is_idle(msg_id(request)))

    kernel.exit(0)  # its owner stops it: its sockets go away
    await frames.wait_for(lambda f: f["kind"] == "kernel" and "exited" in f)
    assert session.status is SessionStatus.EXITED
    assert [s["content"]["text"] for s in frames.jupyter("stream")] == ["adopted"]


@attrs.define
class RecordedEndpoints:
    """A registry's ClientEndpoints that records which sessions' endpoints were closed."""

    closed: list[str] = attrs.field(factory=list)

    def close(self, session_id: str) -> None:
        self.closed.append(session_id)


async def test_every_way_a_session_ends_closes_its_endpoints(
    autojump_clock: MockClock,
    registry: SessionRegistry,
    make_session: Callable[..., KernelSession],
) -> None:
    endpoints = registry.endpoints = RecordedEndpoints()
    killed, stopped, deleted, idle = (make_session() for _ in range(4))
    for session in (killed, stopped):
        await session.start()
    await registry.kill(killed)
    await registry.shutdown(stopped)
    registry.delete(deleted.session_id)
    assert endpoints.closed == [killed.session_id, stopped.session_id, deleted.session_id]
    with pytest.raises(SessionStateError):
        await registry.kill(idle)  # never started: nothing ended, nothing closed
    assert idle.session_id not in endpoints.closed
    await idle.start()
    await registry.shutdown_all()
    assert endpoints.closed == [
        killed.session_id,
        stopped.session_id,
        deleted.session_id,
        idle.session_id,
    ]


async def test_a_forgotten_session_does_not_close_its_successors_endpoints(
    autojump_clock: MockClock,
    registry: SessionRegistry,
    make_session: Callable[..., KernelSession],
) -> None:
    endpoints = registry.endpoints = RecordedEndpoints()
    old = make_session()
    registry.delete(old.session_id)
    new = registry.create(old.spec)  # the same id, another session
    await registry.shutdown(old)  # a stale handle (embedding keeps them)
    assert endpoints.closed == [old.session_id]
    registry.delete(new.session_id)
    assert endpoints.closed == [old.session_id, new.session_id]
