"""The embedding API and the pytest plugin's fixtures, used as a client project would.

Every test here takes its server, supervisor and kernel argv from
``kallichore.pytest_plugin`` (loaded through the ``pytest11`` entry point when
kallichore is installed, or ``-p kallichore.pytest_plugin``), so passing
tests prove the fixtures too. Kernels are the fake kernel (real processes,
real ZeroMQ) except in the one ipykernel test; real clock throughout.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import kallichore
from kallichore.config import ServerConfig, Transport
from kallichore.embed import Session, SessionChannel, Supervisor, open_supervisor
from kallichore.errors import SessionNotFoundError, SessionSpecError, SessionStateError
from kallichore.protocol.envelope import client_message, execute_content
from kallichore.server import Server, ServerAddress, serve
from kallichore.session.state import SessionStatus
from tests.support.paths import REPO_ROOT
from tests.support.server_process import UnixHTTPConnection

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
]

#: Bound on waiting for one expected frame.
FRAME_TIMEOUT = 10.0  # seconds
#: Bound on one HTTP exchange.
HTTP_TIMEOUT = 10.0  # seconds

Frame = dict[str, Any]
ArgvFactory = Callable[..., list[str]]


# ------------------------------------------------------------------ helpers


def execute_request(code: str, *, msg_id: str | None = None) -> dict[str, Any]:
    """A client frame carrying an ``execute_request``."""
    return client_message("execute_request", execute_content(code), msg_id=msg_id)


async def run_code(channel: SessionChannel, code: str) -> tuple[str, Frame]:
    """Execute ``code``; return its stream output and its ``execute_reply`` content."""
    request = execute_request(code)
    msg_id = request["header"]["msg_id"]
    await channel.send(request)
    text: list[str] = []
    reply: Frame | None = None
    idle = False
    with trio.fail_after(FRAME_TIMEOUT):
        async for frame in channel:
            if frame["kind"] != "jupyter" or (frame["parent_header"] or {}).get("msg_id") != msg_id:
                continue
            msg_type = frame["header"]["msg_type"]
            if msg_type == "stream":
                text.append(frame["content"]["text"])
            elif msg_type == "execute_reply":
                reply = frame["content"]
            elif msg_type == "status" and frame["content"]["execution_state"] == "idle":
                idle = True
            if reply is not None and idle:
                return "".join(text), reply
    raise AssertionError("the channel ended before the execution finished")


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def http_get(address: ServerAddress, path: str) -> tuple[int, Any]:
    if address.transport == "tcp":
        assert address.port is not None
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", address.port, timeout=HTTP_TIMEOUT
        )
    else:
        assert address.socket_path is not None
        conn = UnixHTTPConnection(address.socket_path, HTTP_TIMEOUT)
    headers = {"Authorization": f"Bearer {address.token}"} if address.token else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


async def aget(address: ServerAddress, path: str) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(http_get, address, path)


def jupyter(frame: Frame, msg_type: str, parent: str | None = None) -> bool:
    """Whether ``frame`` is a Jupyter message of this type (and parent, if given)."""
    return (
        frame.get("kind") == "jupyter"
        and frame["header"]["msg_type"] == msg_type
        and (parent is None or (frame["parent_header"] or {}).get("msg_id") == parent)
    )


def existing(paths: list[str | None]) -> list[str]:
    return [p for p in paths if p is not None and os.path.exists(p)]


def read_json(path: str) -> Any:
    return json.loads(Path(path).read_text())


def connection_file_of(pid: int) -> str:
    """The ``-f`` argument a kernel process was started with."""
    cmdline = psutil.Process(pid).cmdline()
    return cmdline[cmdline.index("-f") + 1]


# ----------------------------------------------------------- package surface


def test_import_kallichore_is_cheap_and_lazy() -> None:
    code = (
        "import sys, kallichore\n"
        "heavy = {'trio', 'quart', 'hypercorn', 'zmq'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "import kallichore.pytest_plugin\n"
        "heavy = {'trio', 'quart', 'hypercorn', 'zmq', 'psutil'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from kallichore import open_supervisor, serve, ServerConfig\n"
        "assert 'quart' not in sys.modules and 'hypercorn' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


def test_lazy_exports_are_the_real_objects() -> None:
    assert kallichore.open_supervisor is open_supervisor
    assert kallichore.Supervisor is Supervisor
    assert kallichore.serve is serve
    assert kallichore.Server is Server
    assert kallichore.ServerAddress is ServerAddress
    assert kallichore.ServerConfig is ServerConfig
    assert kallichore.Transport is Transport
    assert set(kallichore.__all__) <= set(dir(kallichore))
    with pytest.raises(AttributeError):
        _ = kallichore.no_such_name  # type: ignore[attr-defined]


# ------------------------------------------------------------ open_supervisor


async def test_supervisor_session_lifecycle_with_fake_kernel(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory, tmp_path: Any
) -> None:
    sup = kallichore_supervisor
    session = sup.create_session(
        argv=fake_kernel_argv(), working_directory=tmp_path, env={"KC_EMBED_TEST": "1"}
    )
    assert session.session_id.startswith("session-")
    assert sup.get(session.session_id) == session
    assert sup.sessions == [session]
    assert session.spec.env == (("replace", "KC_EMBED_TEST", "1"),)

    info = await session.start()
    assert info["implementation"] == "fake"
    assert session.status is SessionStatus.IDLE
    first_pid = session.process_id
    assert first_pid is not None
    with pytest.raises(SessionStateError):
        sup.delete(session.session_id)

    async with session.attach() as channel:
        assert session.connected
        text, reply = await run_code(channel, "hello from the channel")
        assert text == "hello from the channel"
        assert reply["status"] == "ok"

        # Interrupt a long execution: the fake kernel answers KeyboardInterrupt.
        request = execute_request("sleep 30")
        await channel.send(request)
        with trio.fail_after(FRAME_TIMEOUT):
            async for frame in channel:
                if frame.get("status", {}).get("status") == "busy":
                    break
        await session.interrupt()
        with trio.fail_after(FRAME_TIMEOUT):
            async for frame in channel:
                if jupyter(frame, "execute_reply"):
                    assert frame["parent_header"]["msg_id"] == request["header"]["msg_id"]
                    assert frame["content"]["status"] == "error"
                    assert frame["content"]["ename"] == "KeyboardInterrupt"
                    break
    assert not session.connected

    await session.restart(env=[("replace", "KC_EMBED_TEST", "2")])
    assert session.status is SessionStatus.IDLE
    second_pid = session.process_id
    assert second_pid is not None
    assert second_pid != first_pid
    assert not pids_alive([first_pid])
    assert psutil.Process(second_pid).environ()["KC_EMBED_TEST"] == "2"

    # The restarted kernel serves a new client.
    async with session.attach() as channel:
        text, _ = await run_code(channel, "after restart")
        assert text == "after restart"

    await session.kill()
    assert session.status is SessionStatus.EXITED
    assert session.process_id is None
    assert not pids_alive([second_pid])
    sup.delete(session.session_id)
    assert sup.sessions == []
    with pytest.raises(SessionNotFoundError):
        sup.get(session.session_id)


async def test_channel_takeover_and_requeue(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = kallichore_supervisor.create_session(argv=fake_kernel_argv(), session_id="takeover")
    await session.start()
    async with session.attach() as first:
        await first.send(execute_request("one"))
        async with session.attach() as second:
            assert first.taken_over
            with pytest.raises(trio.EndOfChannel):
                await first.receive()
            with pytest.raises(trio.ClosedResourceError):
                await first.send(execute_request("lost"))
            text, _ = await run_code(second, "two")
            assert text == "two"
            # Take one frame of a flood (the channel takes a whole batch from
            # the outbox) and leave: the rest goes back, in order.
            flood = execute_request("flood 5")
            flood_id = flood["header"]["msg_id"]
            await second.send(flood)
            with trio.fail_after(FRAME_TIMEOUT):
                frames = [await second.receive()]
    async with session.attach() as third:
        with trio.fail_after(FRAME_TIMEOUT):
            async for frame in third:
                frames.append(frame)
                if jupyter(frame, "status", flood_id) and (
                    frame["content"]["execution_state"] == "idle"
                ):
                    break
    lines = [f["content"]["text"] for f in frames if jupyter(f, "stream", flood_id)]
    assert lines == [f"{n}\n" for n in range(5)]
    ids = [f["header"]["msg_id"] for f in frames if f["kind"] == "jupyter"]
    assert len(ids) == len(set(ids)), "a frame was delivered twice"


async def test_the_supervisor_fixture_refuses_what_rest_refuses(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    """The fixture's supervisor validates like ``PUT /sessions`` (kallichore/session/spec.py)."""
    for bad in ("../x", ""):
        with pytest.raises(SessionSpecError, match="session_id must not"):
            kallichore_supervisor.create_session(argv=fake_kernel_argv(), session_id=bad)
    assert kallichore_supervisor.sessions == []


async def test_leaving_open_supervisor_stops_every_kernel(fake_kernel_argv: ArgvFactory) -> None:
    async with open_supervisor() as sup:
        sessions = [sup.create_session(argv=fake_kernel_argv()) for _ in range(2)]
        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(session.start)
        pids = [s.process_id for s in sessions]
        files = [connection_file_of(pid) for pid in pids if pid is not None]
        assert len(files) == 2
    assert not pids_alive([pid for pid in pids if pid is not None])
    assert not existing(files)
    assert all(s.status is SessionStatus.EXITED for s in sessions)


async def test_two_supervisors_do_not_interfere(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    async with open_supervisor() as other:
        # The same session id in both: separate registries, separate everything.
        mine = kallichore_supervisor.create_session(argv=fake_kernel_argv(), session_id="same")
        theirs = other.create_session(argv=fake_kernel_argv(), session_id="same")
        await mine.start()
        await theirs.start()
        assert mine.process_id != theirs.process_id
        assert mine.process_id is not None
        assert theirs.process_id is not None
        my_file = connection_file_of(mine.process_id)
        their_file = connection_file_of(theirs.process_id)
        assert os.path.dirname(my_file) != os.path.dirname(their_file)
        my_ports, their_ports = read_json(my_file), read_json(their_file)
        ports = ("shell_port", "iopub_port", "control_port", "stdin_port", "hb_port")
        assert not {my_ports[p] for p in ports} & {their_ports[p] for p in ports}
        their_pid = theirs.process_id
    # Closing one supervisor stopped its kernel only.
    assert not pids_alive([their_pid])
    assert mine.status is SessionStatus.IDLE
    async with mine.attach() as channel:
        text, _ = await run_code(channel, "still here")
    assert text == "still here"


# ---------------------------------------------------------------------- serve


@pytest.mark.parametrize("kallichore_transport", ["tcp", "socket"])
async def test_kallichore_server_answers_status(
    kallichore_server: ServerAddress, kallichore_transport: str
) -> None:
    assert kallichore_server.transport == kallichore_transport
    if kallichore_transport == "socket":
        assert kallichore_server.socket_path is not None
        assert existing([kallichore_server.socket_path])
    else:
        assert kallichore_server.base_url == f"http://127.0.0.1:{kallichore_server.port}"
    status, body = await aget(kallichore_server, "/status")
    assert status == 200
    assert body["sessions"] == 0
    assert body["server_id"] == kallichore_server.server_id
    assert body["process_id"] == os.getpid()


async def test_cancelling_serve_stops_its_kernels(
    kallichore_server_config: ServerConfig, fake_kernel_argv: ArgvFactory
) -> None:
    server = Server(kallichore_server_config)
    sup = Supervisor.of_server(server)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(partial(serve, kallichore_server_config, server=server))
            sessions = [sup.create_session(argv=fake_kernel_argv()) for _ in range(2)]
            for session in sessions:
                await session.start()
            # The in-process sessions are the server's: REST sees them.
            status, listing = await aget(address, "/sessions")
            assert status == 200
            assert {s["session_id"] for s in listing["sessions"]} == {
                s.session_id for s in sessions
            }
            pids = [s.process_id for s in sessions]
            assert None not in pids
            scope.cancel()
    assert not pids_alive([p for p in pids if p is not None])
    assert not existing([address.socket_path])


@pytest.mark.parametrize("kallichore_transport", ["socket"])
async def test_ending_a_session_in_process_closes_its_channel_socket(
    kallichore_server_config: ServerConfig, fake_kernel_argv: ArgvFactory
) -> None:
    server = Server(kallichore_server_config)
    sup = Supervisor.of_server(server)

    async def channel_socket(session: Session) -> str:
        status, path = await aget(address, f"/sessions/{session.session_id}/channels")
        assert status == 200
        assert existing([path]) == [path]
        return str(path)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve, kallichore_server_config, server=server))
        killed, stopped = (sup.create_session(argv=fake_kernel_argv()) for _ in range(2))
        for session in (killed, stopped):
            await session.start()

        path = await channel_socket(killed)
        await killed.kill()
        assert not existing([path]), "Session.kill closes it, as POST .../kill does"

        path = await channel_socket(killed)  # a client asks again for the exited session
        sup.delete(killed.session_id)
        assert not existing([path]), "Supervisor.delete closes it, as DELETE does"

        path = await channel_socket(stopped)
        await stopped.shutdown()
        assert not existing([path]), "Session.shutdown closes it"
        nursery.cancel_scope.cancel()


async def test_two_servers_in_one_process(
    kallichore_server: ServerAddress, kallichore_server_config: ServerConfig
) -> None:
    other_config = ServerConfig(transport=Transport.TCP)
    async with trio.open_nursery() as nursery:
        other: ServerAddress = await nursery.start(serve, other_config)
        assert other.server_id != kallichore_server.server_id
        assert other.token != kallichore_server.token
        _, mine = await aget(kallichore_server, "/status")
        _, theirs = await aget(other, "/status")
        assert mine["server_id"] == kallichore_server.server_id
        assert theirs["server_id"] == other.server_id
        nursery.cancel_scope.cancel()
    # The fixture's server is untouched by the other's shutdown.
    status, _ = await aget(kallichore_server, "/status")
    assert status == 200


# ------------------------------------------------------------------- ipykernel


@pytest.mark.time_limit(60)
async def test_python_kernel_session_runs_code(python_kernel_session: Session) -> None:
    assert python_kernel_session.kernel_info["implementation"] == "ipython"
    async with python_kernel_session.attach() as channel:
        text, reply = await run_code(channel, "print(6*7)")
    assert text == "42\n"
    assert reply["status"] == "ok"


# --------------------------------------------------------------------- client


@pytest.mark.parametrize("kallichore_transport", ["tcp", "socket"])
async def test_kallichore_client_fixture(
    kallichore_client: Any, kallichore_server: ServerAddress
) -> None:
    status = await kallichore_client.server_status()
    assert status.server_id == kallichore_server.server_id
    assert status.sessions == 0
