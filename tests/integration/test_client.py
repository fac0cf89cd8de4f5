"""``kallichore.client`` end to end: real server process, real ipykernel, both transports.

The library is exercised the way an application would use it (``open_client``
from the server's connection file, ``open_channel``), and the CLI as a
subprocess. One kernel per transport is shared by the channel tests (started
synchronously by a module fixture, killed at teardown); tests that change a
kernel's lifecycle start their own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio

from kallichore.client import (
    ExecutionDroppedError,
    KallichoreClient,
    KallichoreClientError,
    KernelEvent,
    Message,
    find_kernelspec,
    open_client,
)
from kallichore.client import _channel as channel_module
from kallichore.client._models import SessionStatus
from kallichore.protocol.models import ServerConfiguration
from tests.support.bodies import session_body
from tests.support.channel_server import ChannelServer
from tests.support.paths import REPO_ROOT, with_repo_on_path

pytestmark = pytest.mark.integration

#: Bound on one CLI invocation.
CLI_TIMEOUT = 60.0  # seconds


@pytest.fixture(scope="module", params=["tcp", "socket"])
def server(request: pytest.FixtureRequest, marker: str) -> Iterator[ChannelServer]:
    srv = ChannelServer(request.param, marker).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def shared_session(server: ChannelServer) -> Iterator[str]:
    """One running ipykernel for the channel tests on this server."""
    sid = f"cl-{uuid.uuid4().hex[:8]}"
    status, body = server.request("PUT", "/sessions", session_body(sid))
    assert status == 200, body
    status, body = server.request("POST", f"/sessions/{sid}/start")
    assert status == 200, body
    try:
        yield sid
    finally:
        server.request("POST", f"/sessions/{sid}/kill")


def _client(server: ChannelServer) -> Any:
    return open_client(connection_file=server.connection_file)


async def _new_python(client: KallichoreClient, sid: str) -> None:
    await client.new_session(find_kernelspec("python3").new_session(sid))
    await client.start_session(sid)


async def _wait_exited(client: KallichoreClient, sid: str) -> None:
    """Wait (at most 10 s) until the session reports ``exited``."""
    for _ in range(100):
        if (await client.get_session(sid)).status is SessionStatus.EXITED:
            return
        await trio.sleep(0.1)


# ------------------------------------------------------------------ REST


async def test_every_rest_operation(server: ChannelServer) -> None:
    async with _client(server) as client:
        status = await client.server_status()
        assert status.process_id == server.proc.pid  # type: ignore[union-attr]
        await client.client_heartbeat()
        await client.set_server_configuration(ServerConfiguration(resource_sample_interval_ms=500))
        assert (await client.get_server_configuration()).resource_sample_interval_ms == 500

        sid = f"rest-{uuid.uuid4().hex[:8]}"
        assert await client.new_session(find_kernelspec("python3").new_session(sid)) == sid
        assert (await client.get_session(sid)).kernel_info == {}
        info = await client.start_session(sid)
        assert info["implementation"] == "ipython"
        listed = await client.list_sessions()
        assert sid in [s.session_id for s in listed.sessions]
        assert listed.total == len(listed.sessions)
        conn = await client.connection_info(sid)
        assert conn.shell_port > 0
        if server.transport == "socket":
            assert (await client.channels_upgrade(sid)).endswith(".sock")
        await client.interrupt_session(sid)
        await client.restart_session(sid)
        session = await client.get_session(sid)
        assert session.process_id is not None
        await client.kill_session(sid)
        await _wait_exited(client, sid)
        await client.delete_session(sid)
        with pytest.raises(KallichoreClientError) as adopt:
            await client.adopt_session(f"missing-{sid}", conn)
        assert adopt.value.status == 404


async def test_404_error_fields(server: ChannelServer) -> None:
    async with _client(server) as client:
        with pytest.raises(KallichoreClientError) as info:
            await client.get_session("no-such-session")
    assert info.value.status == 404
    assert "404" in str(info.value) or "not found" in str(info.value).lower()


async def test_startup_failure_error_fields(server: ChannelServer) -> None:
    sid = f"fail-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
    async with _client(server) as client:
        await client.new_session(attrs.evolve(find_kernelspec().new_session(sid), argv=argv))
        with pytest.raises(KallichoreClientError) as info:
            await client.start_session(sid)
    err = info.value
    assert err.status == 500
    assert err.code
    assert err.message
    assert err.exit_code == 3
    assert err.output is not None
    assert "boom" in err.output


# --------------------------------------------------------------- channel


async def test_execute_outputs_in_order_and_result(
    server: ChannelServer, shared_session: str
) -> None:
    seen: list[str] = []

    async def on_output(msg: Message) -> None:
        seen.append(msg.msg_type)

    async with _client(server) as client, client.open_channel(shared_session) as channel:
        result = await channel.execute(
            "print('a', flush=True)\nfrom IPython.display import display\n"
            "display('shown')\nprint('b', flush=True)\n40 + 2",
            on_output=on_output,
        )
        assert result.ok
        assert result.status == "ok"
        assert isinstance(result.execution_count, int)
        assert [m.msg_type for m in result.outputs] == seen
        assert seen == ["stream", "display_data", "stream", "execute_result"]
        assert result.stdout == "a\nb\n"
        assert result.outputs[-1].content["data"]["text/plain"] == "42"

        failed = await channel.execute("1/0")
        assert failed.status == "error"
        assert failed.error is not None
        assert failed.error.ename == "ZeroDivisionError"
        assert [m.msg_type for m in failed.outputs] == ["error"]

        assert (await channel.kernel_info())["implementation"] == "ipython"
        assert "import" in (await channel.complete("impor"))["matches"]
        assert (await channel.inspect("print"))["status"] == "ok"


async def test_stdin_goes_to_the_input_handler(server: ChannelServer, shared_session: str) -> None:
    prompts: list[str] = []

    def on_input(request: Any) -> str:
        prompts.append(request.prompt)
        return "forty-two"

    async with _client(server) as client, client.open_channel(shared_session) as channel:
        result = await channel.execute("print('got', input('value? '))", on_input=on_input)
    assert prompts == ["value? "]
    assert result.stdout == "got forty-two\n"


COMM_TARGET = """
import comm

def _target(c, open_msg):
    c.send({'opened': open_msg['content']['data']})
    @c.on_msg
    def _echo(msg):
        c.send(msg['content']['data'], buffers=[bytes(b)[::-1] for b in msg['buffers']])

comm.get_comm_manager().register_target('kc_client_echo', _target)
"""


async def test_comm_from_client_with_buffers(server: ChannelServer, shared_session: str) -> None:
    async with _client(server) as client, client.open_channel(shared_session) as channel:
        assert (await channel.execute(COMM_TARGET)).ok
        send, receive = trio.open_memory_channel[Message](10)
        comm = await channel.comm_open("kc_client_echo", {"hello": 1}, on_message=send.send)
        with trio.fail_after(10):
            opened = await receive.receive()
        assert opened.content["data"] == {"opened": {"hello": 1}}
        payload = bytes(range(256))
        await comm.send({"x": 1}, buffers=[payload, b"\x00\xff"])
        with trio.fail_after(10):
            echo = await receive.receive()
        assert echo.content["comm_id"] == comm.comm_id
        assert echo.content["data"] == {"x": 1}
        assert echo.buffers == [payload[::-1], b"\xff\x00"]
        await comm.close()
        assert comm.comm_id not in channel.comms


async def test_kernel_events_reach_subscribers(server: ChannelServer, shared_session: str) -> None:
    async with _client(server) as client, client.open_channel(shared_session) as channel:
        with channel.subscribe_events() as events:
            await channel.execute("pass")
            states: list[str] = []
            with trio.fail_after(10):
                # Frames queued before we attached may come first; wait for
                # a busy followed by an idle.
                while "busy" not in states or states[-1] != "idle":
                    event: KernelEvent = await events.receive()
                    if event.name == "status":
                        states.append(event.value["status"])
    assert states[states.index("busy") :][-1] == "idle"


async def test_channel_opened_after_a_restart_is_not_failed_by_the_old_exit(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events queued while no client was attached include the old kernel's
    ``exited``; they predate the channel's first request and must not fail it."""
    # A channel on a session without a kernel must not wait for a reply that
    # cannot come: with this bound, waiting would hang the test (fail_after).
    monkeypatch.setattr(channel_module, "BACKLOG_TIMEOUT", 3600.0)
    sid = f"rs-{uuid.uuid4().hex[:8]}"
    async with _client(server) as client:
        await _new_python(client, sid)
        try:
            await client.restart_session(sid)
            async with client.open_channel(sid) as channel:
                result = await channel.execute("print('after restart')")
                assert result.stdout == "after restart\n"
            await client.kill_session(sid)
            await _wait_exited(client, sid)
            async with client.open_channel(sid):
                pass
            await client.start_session(sid)
            async with client.open_channel(sid) as channel:
                result = await channel.execute("print('after kill and start')")
                assert result.stdout == "after kill and start\n"
        finally:
            await client.kill_session(sid)


async def test_request_to_a_session_without_a_kernel_fails_at_once(
    server: ChannelServer,
) -> None:
    """The server drops a request when the session has no kernel; waiting for
    its reply would hang, so the channel fails it (and works again after a
    start, even before the start's status events have reached it)."""
    sid = f"nk-{uuid.uuid4().hex[:8]}"
    async with _client(server) as client:
        await _new_python(client, sid)
        try:
            async with client.open_channel(sid) as channel:
                await client.kill_session(sid)
                await _wait_exited(client, sid)
                with pytest.raises(ExecutionDroppedError, match="no running kernel"):
                    await channel.execute("1")
                await client.start_session(sid)
                assert (await channel.execute("print('back')")).stdout == "back\n"
        finally:
            await client.kill_session(sid)


async def test_errors_inside_the_channel_block_are_not_wrapped(
    server: ChannelServer, shared_session: str
) -> None:
    async with _client(server) as client:
        with pytest.raises(KallichoreClientError) as refused:
            async with client.open_channel(f"missing-{uuid.uuid4().hex[:8]}"):
                pass  # pragma: no cover
        assert refused.value.status in (400, 404)

        class Mine(Exception):
            pass

        with pytest.raises(Mine):
            async with client.open_channel(shared_session):
                raise Mine


RECONNECT_CODE = """
import time
for i in range(100):
    print(i, flush=True)
time.sleep(1.5)
for i in range(100, 200):
    print(i, flush=True)
"""


async def test_reconnect_after_a_dropped_socket_loses_nothing(
    server: ChannelServer, shared_session: str
) -> None:
    async with _client(server) as client, client.open_channel(shared_session) as channel:
        dropped = False

        def on_output(msg: Message) -> None:
            nonlocal dropped
            if not dropped and "99\n" in str(msg.content.get("text", "")):
                # Kill the connection under the client, as a network failure would.
                stream = channel._websocket._stream
                assert isinstance(stream, trio.SocketStream)
                stream.socket.shutdown(socket.SHUT_RDWR)
                dropped = True

        result = await channel.execute(RECONNECT_CODE, on_output=on_output)
        assert dropped
        assert channel.reconnects >= 1
        assert result.stdout.split() == [str(i) for i in range(200)]
        # The channel still works after the reconnect.
        assert (await channel.execute("print('after')")).stdout == "after\n"


# -------------------------------------------------------------------- CLI


def _cli(server: ChannelServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    with_repo_on_path(env)
    env.pop("KALLICHORE_CONNECTION_FILE", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kallichore.client.cli",
            "--connection-file",
            server.connection_file,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )


def test_cli_happy_path_and_json(server: ChannelServer) -> None:
    sid = f"cli-{uuid.uuid4().hex[:8]}"
    started = _cli(server, "start", "--id", sid)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == sid
    try:
        listed = _cli(server, "--json", "list")
        assert listed.returncode == 0, listed.stderr
        assert sid in [s["session_id"] for s in json.loads(listed.stdout)]
        assert sid in _cli(server, "list").stdout

        run = _cli(
            server, "execute", sid, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n6*7"
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == "out\n42\n"
        assert run.stderr == "err\n"

        failed = _cli(server, "execute", sid, "1/0")
        assert failed.returncode == 1
        assert "ZeroDivisionError" in failed.stderr

        as_json = _cli(server, "--json", "execute", sid, "print('j')")
        data = json.loads(as_json.stdout)
        assert data["status"] == "ok"
        assert data["outputs"] == [
            {"msg_type": "stream", "content": {"name": "stdout", "text": "j\n"}}
        ]
        status = json.loads(_cli(server, "--json", "status").stdout)
        assert status["sessions"] >= 1
    finally:
        killed = _cli(server, "kill", sid)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.strip() == f"{sid}: killed"


def test_cli_error_is_one_line(server: ChannelServer) -> None:
    result = _cli(server, "kill", "no-such-session")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kcclient: ")
    assert "Traceback" not in result.stderr


def test_cli_execute_after_restart_and_on_an_unknown_session(server: ChannelServer) -> None:
    sid = f"clr-{uuid.uuid4().hex[:8]}"
    assert _cli(server, "start", "--id", sid).returncode == 0
    try:
        assert _cli(server, "restart", sid).returncode == 0
        run = _cli(server, "execute", sid, "print('fresh')")
        assert run.returncode == 0, run.stderr
        assert run.stdout == "fresh\n"
    finally:
        assert _cli(server, "kill", sid).returncode == 0
    missing = _cli(server, "execute", f"missing-{sid}", "1")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert f"missing-{sid}" in missing.stderr
    assert "ExceptionGroup" not in missing.stderr


def test_cli_shutdown(marker: str) -> None:
    srv = ChannelServer("tcp", marker).start()
    try:
        result = _cli(srv, "shutdown")
        assert result.returncode == 0, result.stderr
        assert srv.proc is not None
        srv.proc.wait(timeout=20)
    finally:
        srv.stop()
