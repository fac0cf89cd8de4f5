"""KernelSession, through SessionRegistry, against the fake kernel (tier 4: real processes).

Every session runs ``python -m kallichore.testing.fake_kernel`` as its kernel,
so startup, ZeroMQ, heartbeats, the shutdown ladder and the execution queue are
exercised end to end without an HTTP server. Real clock throughout (no
autojump with real processes); each test runs under conftest's
``trio.fail_after``.

Frames the session produces for its client are read straight from
``session.fanout.outbox`` (see :class:`tests.support.session_frames.Frames`). The
``leftovers`` fixture kills any fake kernel a test leaves behind -- and fails
the test, since the session should never leave one -- and removes the
per-session files in the temp dir.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import trio

import kallichore
from kallichore.api.presenters import active_session_json
from kallichore.errors import SessionStateError, StartupError
from kallichore.server.priority import RequestPriority
from kallichore.session.state import SessionStatus
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.registry import SessionRegistry
from kallichore.supervisor.session import (
    SHUTDOWN_POLITE_GRACE,
    SHUTDOWN_TERM_GRACE,
    KernelSession,
    SessionSpec,
)
from kallichore.testing.fake_kernel import fake_kernel_argv
from tests.support.session_frames import (
    Frames,
    execute_request,
    is_idle,
    is_jupyter,
    is_output,
    is_status_event,
    msg_id,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

#: The fake kernel imports kallichore; the package need not be installed.
REPO_ROOT = str(Path(kallichore.__file__).resolve().parent.parent)

#: The environment action that lets the fake kernel import kallichore.
PYTHONPATH = (
    "replace",
    "PYTHONPATH",
    os.pathsep.join(filter(None, (REPO_ROOT, os.environ.get("PYTHONPATH")))),
)


# ----------------------------------------------------------------- fixtures


def _fake_kernels(session_ids: list[str]) -> list[psutil.Process]:
    """Live processes whose command line names one of these sessions' files."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if "kallichore.testing.fake_kernel" in cmdline and any(s in cmdline for s in session_ids):
            found.append(proc)
    return found


@pytest.fixture
def leftovers() -> Iterator[list[str]]:
    """Session ids created by the test; their kernels must be gone at teardown.

    Sync, so its teardown runs after pytest-trio has torn down every async
    fixture (the registry's nursery, hence every session's shutdown).
    """
    session_ids: list[str] = []
    yield session_ids
    leaked = _fake_kernels(session_ids)
    for proc in leaked:
        proc.kill()
    stray = [
        name
        for session_id in session_ids
        for name in (f"connection_{session_id}.json", f"registration_{session_id}.json")
        if Path(tempfile.gettempdir(), name).exists()
    ]
    assert not leaked, f"fake kernels left running: {[p.pid for p in leaked]}"
    assert not stray, f"kernel files written to the shared temp dir: {stray}"


@pytest.fixture
async def registry(nursery: trio.Nursery, leftovers: list[str]) -> SessionRegistry:
    # As the server wires it: the pumps wait for requests in flight.
    registry = SessionRegistry(priority=RequestPriority())
    await nursery.start(registry.run)
    return registry


@pytest.fixture
def make_session(
    registry: SessionRegistry, leftovers: list[str], tmp_path: Path
) -> Callable[..., KernelSession]:
    """``make_session(*behaviours, welcome=, protocol_version=, ...)`` -> a new session."""

    def make(
        *behaviours: str,
        welcome: bool = False,
        protocol_version: str = "5.3",
        connection_timeout: float = 10.0,
        interrupt_mode: str = "message",
        env: tuple[tuple[str, str, str], ...] = (),
    ) -> KernelSession:
        session_id = f"fake-{uuid.uuid4().hex[:12]}"
        leftovers.append(session_id)
        spec = SessionSpec(
            session_id=session_id,
            argv=tuple(
                fake_kernel_argv(
                    *behaviours,
                    welcome=welcome,
                    registration_file=protocol_version == "5.5",
                )
            ),
            display_name="Fake",
            language="fake",
            username="tester",
            input_prompt=">>> ",
            continuation_prompt="... ",
            session_mode="console",
            working_directory=str(tmp_path),
            env=(PYTHONPATH, *env),
            interrupt_mode=interrupt_mode,
            connection_timeout=connection_timeout,
            protocol_version=protocol_version,
        )
        return registry.create(spec)

    return make


# -------------------------------------------------------------------- start


@pytest.mark.parametrize("welcome", [False, True], ids=["no-welcome", "welcome"])
async def test_start_returns_kernel_info_and_goes_idle(
    make_session: Callable[..., KernelSession], welcome: bool
) -> None:
    session = make_session(welcome=welcome)
    info = await session.start()

    assert info["status"] == "ok"
    assert info["implementation"] == "fake"
    assert info["language_info"] == {
        "name": "fake",
        "version": "1.0",
        "mimetype": "text/plain",
        "file_extension": ".txt",
    }
    assert info["help_links"] == []
    assert session.kernel_info == info
    assert session.status is SessionStatus.IDLE
    assert active_session_json(session, trio.current_time())["status"] == "idle"
    assert psutil.pid_exists(session.process_id or -1)

    await session.shutdown()
    assert active_session_json(session, trio.current_time())["status"] == "exited"
    assert session.exit_code == 0


@pytest.mark.parametrize("welcome", [False, True], ids=["no-welcome", "welcome"])
async def test_startup_kernel_info_status_is_swallowed_but_output_is_kept(
    make_session: Callable[..., KernelSession], welcome: bool
) -> None:
    session = make_session(welcome=welcome)
    frames = Frames(session)
    await session.start()
    # The kernel's startup line on stdout reaches the client...
    await frames.wait_for(is_output("listening on"))
    # ...and once a later request has gone idle, every iopub message sent
    # before it has been processed (one PUB socket is FIFO).
    request = execute_request("hello")
    await session.send_from_client(request)
    await frames.wait_for(is_idle(msg_id(request)))

    statuses = frames.jupyter("status")
    assert [
        (s["parent_header"]["msg_type"], s["content"]["execution_state"]) for s in statuses
    ] == [
        ("execute_request", "busy"),
        ("execute_request", "idle"),
    ]
    assert not frames.jupyter("kernel_info_reply")
    assert not frames.jupyter("iopub_welcome")
    assert [e["status"] for e in frames.events("status")] == ["starting", "idle", "busy", "idle"]
    assert frames.events("status")[1]["reason"] == "kernel started"
    assert [s["content"]["text"] for s in frames.jupyter("stream")] == ["hello"]


async def test_jep66_registration_handshake(make_session: Callable[..., KernelSession]) -> None:
    session = make_session(protocol_version="5.5")
    frames = Frames(session)
    info = await session.start()

    assert info["implementation"] == "fake"
    assert session.status is SessionStatus.IDLE
    # The file holds the session key: a private directory, mode 0600.
    files_dir = session._files_dir
    assert stat.S_IMODE(os.stat(files_dir).st_mode) == 0o700
    registration = trio.Path(files_dir, f"registration_{session.session_id}.json")
    assert orjson.loads(await registration.read_bytes())["registration_port"] > 0
    assert stat.S_IMODE((await registration.stat()).st_mode) == 0o600
    frames.drain()
    [completed] = frames.events("handshakeCompleted")
    assert completed[0] == session.session_id
    assert session.connection_info is not None
    assert completed[1] == session.connection_info.to_json_dict()


# ---------------------------------------------------------- failures to start


async def test_no_kernel_info_times_out_with_ks7_and_kills_the_kernel(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("no-kernel-info", connection_timeout=2)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    # The session's 2 s bound ended the wait, not the 10 s default.
    assert trio.current_time() - began < 8.0
    assert caught.value.code.value == "KS-7"
    assert caught.value.exit_code == 130
    assert "listening on" in (caught.value.output or "")
    assert session.status is SessionStatus.EXITED
    assert session.process_id is None
    assert not _fake_kernels([session.session_id])


async def test_bad_signature_replies_are_dropped_and_start_times_out(
    make_session: Callable[..., KernelSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kallichore.supervisor.session")
    session = make_session("bad-signature", connection_timeout=2)
    frames = Frames(session)
    with pytest.raises(StartupError) as caught:
        await session.start()

    assert caught.value.code.value == "KS-7"
    assert any(
        "dropped" in r.getMessage() and "bad signature" in r.getMessage() for r in caplog.records
    )
    frames.drain()
    assert not frames.jupyter()
    assert not _fake_kernels([session.session_id])


async def test_unsigned_kernel_messages_are_dropped_by_default(
    make_session: Callable[..., KernelSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kallichore.supervisor.session")
    session = make_session("unsigned", connection_timeout=2)
    with pytest.raises(StartupError) as caught:
        await session.start()

    assert caught.value.code.value == "KS-7"
    drops = [r.getMessage() for r in caplog.records if "unsigned message" in r.getMessage()]
    assert drops, "the drop is not in the log"
    assert "--allow-unsigned-kernel-messages" in drops[0]
    # Summarised, not one line per message (kernel_info is retried every 0.25 s).
    assert len(drops) <= 2, drops
    assert not _fake_kernels([session.session_id])


async def test_unsigned_kernel_messages_are_accepted_when_allowed(
    registry: SessionRegistry, make_session: Callable[..., KernelSession]
) -> None:
    registry.kernel_policy = KernelPolicy(allow_unsigned_messages=True)
    session = make_session("unsigned")
    frames = Frames(session)
    await session.start()
    request = execute_request("hello")
    await session.send_from_client(request)
    await frames.wait_for(is_idle(msg_id(request)))
    assert [s["content"]["text"] for s in frames.jupyter("stream")] == ["hello"]
    await session.shutdown()


async def test_exit_on_start_reports_ks8_with_exit_code_and_output(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("exit-on-start 3", connection_timeout=30)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    # Reported when the kernel exits, long before the 30 s connection timeout.
    assert trio.current_time() - began < 15.0

    error = caught.value
    assert error.code.value == "KS-8"
    assert error.exit_code == 3
    assert "exiting with status 3 before binding" in (error.output or "")
    assert "simulated startup failure" in (error.output or "")
    assert session.status is SessionStatus.EXITED


@pytest.mark.parametrize(
    ("protocol_version", "code"),
    [("5.3", "KS-7"), ("5.5", "KS-17")],
    ids=["connection-file", "jep66"],
)
async def test_a_kernel_that_never_binds_times_out_in_the_right_phase(
    make_session: Callable[..., KernelSession], protocol_version: str, code: str
) -> None:
    session = make_session("slow-start 10", protocol_version=protocol_version, connection_timeout=1)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    # The 1 s bound ended the wait, well before the kernel would bind (10 s).
    assert trio.current_time() - began < 8.0
    assert caught.value.code.value == code
    assert session.status is SessionStatus.EXITED
    assert not _fake_kernels([session.session_id])


async def test_kernel_crashing_during_jep66_handshake_is_ks14(
    make_session: Callable[..., KernelSession],
) -> None:
    """Spec 3.5.2 / 3.8: exit during the handshake -> KS-14, with exit code and output.

    The kernel signs its handshake_request with a wrong key; the session
    answers with an error frame and the fake kernel exits 1.
    """
    session = make_session("bad-signature", protocol_version="5.5", connection_timeout=10)
    began = trio.current_time()
    with pytest.raises(StartupError) as caught:
        await session.start()
    assert trio.current_time() - began < 3.0  # not the 10 s timeout
    assert caught.value.exit_code == 1
    assert "handshake refused" in (caught.value.output or "")
    assert caught.value.code.value == "KS-14"
    assert caught.value.message == "The kernel exited before a connection could be established"


async def test_signal_death_during_start_reports_the_signal(
    make_session: Callable[..., KernelSession],
) -> None:
    """KS-8 names the signal; ``exit_code`` is minus the signal number.

    Kallichore reports -1 for every signal death; we keep the signal number
    (the convention documented in docs/sessions.md).
    """
    session = make_session("slow-start 10")

    async def kill_it() -> None:
        for _ in range(500):
            if found := _fake_kernels([session.session_id]):
                found[0].kill()
                return
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_it)
        with pytest.raises(StartupError) as caught:
            await session.start()
    assert caught.value.code.value == "KS-8"
    assert session.status is SessionStatus.EXITED
    assert caught.value.exit_code == -9
    assert caught.value.message == "The process exited abnormally (signal: 9 (SIGKILL))"


async def test_restart_whose_handshake_times_out_is_ks17(
    make_session: Callable[..., KernelSession],
) -> None:
    """A JEP 66 session's *second* start must report a handshake timeout as such.

    The timeout also bounds the first start, which a loaded machine can slow
    down by more than a second: so 5 s, and a kernel that waits far longer.
    """
    session = make_session(protocol_version="5.5", connection_timeout=5)
    await session.start()
    hang = (PYTHONPATH, ("replace", "FAKE_KERNEL_BEHAVIOUR", "slow-start 60"))
    with pytest.raises(StartupError) as caught:
        await session.restart(None, hang)
    assert caught.value.code.value == "KS-17"
    assert "Timeout waiting for handshake" in caught.value.message
    assert not _fake_kernels([session.session_id])


# ------------------------------------------------------ running and stopping


async def test_kernel_exit_after_start_is_reported(
    make_session: Callable[..., KernelSession],
) -> None:
    """Spec 3.7.2 [BUG]: an exit after start always ends in ``exited``."""
    session = make_session()
    frames = Frames(session)
    await session.start()
    await session.send_from_client(execute_request("exit 7"))
    with trio.fail_after(5):
        await frames.wait_for(lambda f: f["kind"] == "kernel" and "exited" in f)
    assert frames.events("exited") == [7]
    assert session.status is SessionStatus.EXITED
    assert session.process_id is None
    assert active_session_json(session, trio.current_time())["execution_queue"] == {
        "length": 0,
        "pending": [],
    }


async def test_a_kernel_dying_while_busy_is_a_warning_naming_the_session(
    make_session: Callable[..., KernelSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor.session")
    session = make_session()
    frames = Frames(session)
    await session.start()
    pid = session.process_id
    await session.send_from_client(execute_request("exit 7"))
    with trio.fail_after(5):
        await frames.wait_for(lambda f: f["kind"] == "kernel" and "exited" in f)
    (death,) = [r for r in caplog.records if "died while busy" in r.getMessage()]
    assert death.levelno == logging.WARNING
    assert death.getMessage() == (
        f"Session {session.session_id}: kernel process {pid} died while busy (exit status: 7)"
    )
    assert death.session_id == session.session_id  # type: ignore[attr-defined]


async def test_killing_a_busy_kernel_is_not_a_death_warning(
    make_session: Callable[..., KernelSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor")
    session = make_session()
    frames = Frames(session)
    await session.start()
    await session.send_from_client(execute_request("sleep 30"))
    with trio.fail_after(5):
        await frames.wait_for(
            lambda f: is_jupyter("status")(f) and f["content"]["execution_state"] == "busy"
        )
    assert session.status is SessionStatus.BUSY
    await session.kill()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    session_lines = [r for r in caplog.records if r.name.startswith("kallichore.supervisor")]
    assert session_lines
    for rec in session_lines:
        if getattr(rec, "session_id", None) is None:
            continue
        assert rec.getMessage().startswith(f"Session {session.session_id}: ")


async def test_flood_arrives_complete_and_in_order(
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


async def test_an_http_request_in_flight_pauses_a_flood_and_loses_nothing(
    make_session: Callable[..., KernelSession], registry: SessionRegistry
) -> None:
    priority = registry.priority
    assert isinstance(priority, RequestPriority)  # wired by the fixture
    priority.window = 60.0  # longer than the test: only end() releases
    session = make_session()
    frames = Frames(session)
    await session.start()
    request = execute_request("flood 20000")
    await session.send_from_client(request)
    await frames.wait_for(is_jupyter("stream"))
    priority.begin()
    before = len(frames.drain())
    await trio.sleep(0.3)  # the flood would be thousands of messages further on
    assert len(frames.drain()) == before, "the pump went on while a request was in flight"
    priority.end()
    await frames.wait_for(is_idle(msg_id(request)))
    texts = [s["content"]["text"] for s in frames.jupyter("stream")]
    assert texts == [f"{i}\n" for i in range(20000)]


async def test_stalled_heartbeat_goes_offline_not_exited(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session("stall-heartbeat-after 1")
    frames = Frames(session)
    await session.start()
    with trio.fail_after(8.5):
        event = await frames.wait_for(is_status_event("offline"))
    assert event["status"]["reason"] == "lost heartbeat"
    assert session.status is SessionStatus.OFFLINE
    assert session.process_id is not None
    assert not frames.events("exited")


async def test_shutdown_escalates_to_sigkill_when_the_kernel_ignores_it(
    make_session: Callable[..., KernelSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.supervisor.process")
    session = make_session("ignore-shutdown")
    await session.start()
    began = trio.current_time()
    await session.shutdown()
    elapsed = trio.current_time() - began

    assert elapsed > SHUTDOWN_POLITE_GRACE + SHUTDOWN_TERM_GRACE - 0.5
    assert elapsed < SHUTDOWN_POLITE_GRACE + SHUTDOWN_TERM_GRACE + 2
    assert any("sending SIGKILL" in r.getMessage() for r in caplog.records)
    assert session.status is SessionStatus.EXITED
    assert session.process_id is None


async def test_kill_exits_and_the_exited_event_is_last(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    frames = Frames(session)
    await session.start()
    pid = session.process_id
    await session.kill()

    assert session.status is SessionStatus.EXITED
    assert session.process_id is None
    assert not psutil.pid_exists(pid or -1)
    last = frames.drain()[-1]
    assert last["kind"] == "kernel"
    assert "exited" in last
    assert frames.events("status")[-1]["status"] == "exited"


async def test_exited_event_reports_minus_the_signal_for_a_signal_death(
    make_session: Callable[..., KernelSession],
) -> None:
    """``exited`` carries minus the signal number (Kallichore: -1; see docs/sessions.md)."""
    session = make_session()
    frames = Frames(session)
    await session.start()
    await session.kill()
    assert frames.drain()[-1] == {"kind": "kernel", "exited": -9}


@pytest.mark.parametrize("protocol_version", ["5.3", "5.5"])
async def test_restart_gives_a_new_process(
    make_session: Callable[..., KernelSession], protocol_version: str
) -> None:
    session = make_session(protocol_version=protocol_version)
    frames = Frames(session)
    await session.start()
    first = session.process_id
    await session.restart(None, None)

    second = session.process_id
    assert second is not None
    assert second != first
    assert not psutil.pid_exists(first or -1)
    assert session.status is SessionStatus.IDLE
    frames.drain()
    assert frames.events("exited") == [0]
    # (The old kernel's busy/idle around shutdown_request may come in between.)
    statuses = [e["status"] for e in frames.events("status")]
    assert statuses[:2] == ["starting", "idle"]
    assert statuses[-3:] == ["exited", "starting", "idle"]


async def test_signal_interrupt_reaches_the_kernel(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session(interrupt_mode="signal")
    frames = Frames(session)
    await session.start()
    request = execute_request("sleep 20")
    await session.send_from_client(request)
    await frames.wait_for(is_jupyter("execute_input", parent=msg_id(request)))
    began = trio.current_time()
    await session.interrupt()
    reply = await frames.wait_for(is_jupyter("execute_reply", parent=msg_id(request)))
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # The interrupt ended the sleep early (it would have lasted 20 s).
    assert trio.current_time() - began < 10.0
    assert session.process_id is not None


# ---------------------------------------------------------- execution queue


async def test_execute_requests_queue_and_run_in_order(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    frames = Frames(session)
    await session.start()
    requests = [execute_request(code) for code in ("sleep 0.3", "second", "third")]
    for request in requests:
        await session.send_from_client(request)

    frames.drain()
    assert frames.events("executionQueued") == [msg_id(r) for r in requests[1:]]
    queue = active_session_json(session, trio.current_time())["execution_queue"]
    assert msg_id(queue["active"]) == msg_id(requests[0])
    assert queue["length"] == 2
    assert [msg_id(m) for m in queue["pending"]] == [msg_id(r) for r in requests[1:]]

    await frames.wait_for(is_jupyter("status", parent=msg_id(requests[2])))
    await frames.wait_for(
        lambda f: (
            is_jupyter("status", parent=msg_id(requests[2]))(f)
            and f["content"]["execution_state"] == "idle"
        )
    )
    streams = frames.jupyter("stream")
    assert [s["content"]["text"] for s in streams] == ["sleep 0.3", "second", "third"]
    assert [s["parent_header"]["msg_id"] for s in streams] == [msg_id(r) for r in requests]
    await frames.wait_for(is_jupyter("execute_reply", parent=msg_id(requests[2])))
    counts = [r["content"]["execution_count"] for r in frames.jupyter("execute_reply")]
    assert counts == [1, 2, 3]
    assert active_session_json(session, trio.current_time())["execution_queue"] == {
        "length": 0,
        "pending": [],
    }
    assert session.status is SessionStatus.IDLE


async def test_interrupt_clears_the_queue_and_reports_dropped_ids(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session(interrupt_mode="message")
    frames = Frames(session)
    await session.start()
    requests = [execute_request(code) for code in ("sleep 20", "second", "third")]
    for request in requests:
        await session.send_from_client(request)
    await frames.wait_for(is_jupyter("execute_input", parent=msg_id(requests[0])))

    began = trio.current_time()
    await session.interrupt()
    frames.drain()
    [dropped] = frames.events("executionsDropped")
    assert dropped["msg_ids"] == [msg_id(r) for r in requests[1:]]
    assert active_session_json(session, trio.current_time())["execution_queue"] == {
        "length": 0,
        "pending": [],
    }

    # The kernel got the interrupt: the sleep ends early with KeyboardInterrupt.
    await frames.wait_for(is_jupyter("interrupt_reply"))
    reply = await frames.wait_for(is_jupyter("execute_reply", parent=msg_id(requests[0])))
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    await frames.wait_for(
        lambda f: (
            is_jupyter("status", parent=msg_id(requests[0]))(f)
            and f["content"]["execution_state"] == "idle"
        )
    )
    # The interrupt ended the sleep early (it would have lasted 20 s).
    assert trio.current_time() - began < 10.0
    # Nothing dropped was ever sent to the kernel.
    await trio.sleep(0.3)
    frames.drain()
    parents = {(f["parent_header"] or {}).get("msg_id") for f in frames.jupyter()}
    assert not parents & {msg_id(r) for r in requests[1:]}
    assert session.status is SessionStatus.IDLE


async def test_a_restarting_session_cannot_be_deleted(
    registry: SessionRegistry, make_session: Callable[..., KernelSession]
) -> None:
    """Between a restart's stop and its start the session must stay put.

    Otherwise the new kernel would run on in the registry's nursery with no
    session listing it.
    """
    session = make_session()
    await session.start()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.restart, None, None)
        # Poll every scheduling round: "exited" lasts at least one round
        # between the old kernel's cleanup and the new start.
        while session.status is not SessionStatus.EXITED:
            await trio.lowlevel.checkpoint()
        assert session.process_id is None
        with pytest.raises(SessionStateError):
            registry.delete(session.session_id)
    assert session.process_id is not None
    assert session.status is SessionStatus.IDLE
    await session.kill()
    registry.delete(session.session_id)


async def test_kernel_files_are_removed_when_the_kernel_ends(
    make_session: Callable[..., KernelSession],
) -> None:
    session = make_session()
    await session.start()
    path = trio.Path(session._files_dir, f"connection_{session.session_id}.json")
    assert await path.exists()
    await session.kill()
    assert not await path.exists()


async def test_a_queued_execute_on_a_bad_channel_is_dropped_not_fatal(
    registry: SessionRegistry, make_session: Callable[..., KernelSession]
) -> None:
    """A client frame naming a channel we cannot send on must never reach a socket.

    It used to be queued first and, when released, crash the registry's
    nursery (and with it every session and the server).
    """
    session = make_session()
    frames = Frames(session)
    await session.start()
    await session.send_from_client(execute_request("sleep 0.5"))
    for channel in ("bogus", "iopub", "hb"):
        bad = execute_request("print('never')")
        bad["channel"] = channel
        await session.send_from_client(bad)
    last = execute_request("after")
    await session.send_from_client(last)
    await frames.wait_for(is_idle(last["header"]["msg_id"]))
    texts = [f["content"]["text"] for f in frames.jupyter("stream")]
    assert "after" in texts
    assert not any("never" in t for t in texts)
    assert session.status is SessionStatus.IDLE
    assert len(registry) == 1


async def test_ports_reserved_by_connection_info_are_released_on_delete(
    registry: SessionRegistry, make_session: Callable[..., KernelSession]
) -> None:
    for _ in range(20):
        session = make_session()
        session.get_connection_info()
        registry.delete(session.session_id)
    assert len(registry.ports) == 0
