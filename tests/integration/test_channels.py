"""The channel WebSocket, end to end: real server process, real ipykernel.

Every test runs on both transports: a TCP server (WebSocket upgrade of
``GET /sessions/{id}/channels``, client: trio-websocket) and a Unix-socket
server (the same GET returns a per-session socket path; client:
trio-websocket over ``trio.open_unix_socket``, or wsproto driven by hand for
the raw and slow-handshake cases).

A client that is done sends an *empty text frame* and then reads until the
server closes: that is the lossless way to leave (see ``channels/bridge.py``),
and the reconnect test counts on it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from tests.support.bodies import session_body
from tests.support.channel_server import TOKEN, ChannelServer
from tests.support.kernel_server import (
    KernelDroppedOutputWarning,
)

pytestmark = pytest.mark.integration

#: Bound on waiting for one expected frame.
FRAME_TIMEOUT = 15.0  # seconds


@pytest.fixture(scope="module", params=["tcp", "socket"])
def server(request: pytest.FixtureRequest, marker: str) -> Iterator[ChannelServer]:
    srv = ChannelServer(request.param, marker).start()
    try:
        yield srv
    finally:
        srv.stop()


async def call(
    server: ChannelServer, method: str, path: str, body: Any = None
) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(server.request, method, path, body)


@contextlib.asynccontextmanager
async def running_session(
    server: ChannelServer, prefix: str = "ch", argv: list[str] | None = None
) -> AsyncIterator[str]:
    """A started ipykernel session, killed and deleted afterwards."""
    sid = f"{prefix}-{uuid.uuid4().hex[:10]}"
    body = session_body(sid) if argv is None else session_body(sid, argv=argv)
    status, body = await call(server, "PUT", "/sessions", body)
    assert status == 200, body
    status, body = await call(server, "POST", f"/sessions/{sid}/start")
    assert status == 200, body
    try:
        yield sid
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(20):
            await call(server, "POST", f"/sessions/{sid}/kill")
            await call(server, "DELETE", f"/sessions/{sid}")


@pytest.fixture
async def session_id(server: ChannelServer) -> AsyncIterator[str]:
    async with running_session(server) as sid:
        yield sid


#: An ipykernel that records what its IOPub socket drops (see counting_kernel.py).
COUNTING_KERNEL = [
    sys.executable,
    "-m",
    "tests.support.counting_kernel",
    "-f",
    "{connection_file}",
]


@pytest.fixture
async def counting_session_id(server: ChannelServer) -> AsyncIterator[str]:
    async with running_session(server, "cnt", COUNTING_KERNEL) as sid:
        yield sid


# --------------------------------------------------------------------- client

# Every client stream a test opened, closed after the test even if it failed.
_OPEN_STREAMS: list[trio.SocketStream] = []


@pytest.fixture(autouse=True)
def close_client_streams() -> Iterator[None]:
    # Synchronous (pytest-trio does not run async autouse fixtures), so the
    # sockets are closed without trio.
    try:
        yield
    finally:
        while _OPEN_STREAMS:
            fd = _OPEN_STREAMS.pop().socket.detach()  # (outside trio: no notify_closing)
            if fd >= 0:
                os.close(fd)


class Client:
    """A channel client: JSON frames in and out, every wait bounded."""

    def __init__(self, ws: Any, stream: trio.abc.Stream) -> None:
        self.ws = ws
        # Ours to close: trio-websocket leaves the stream open when the
        # server closes first.
        self.stream = stream

    async def send(self, msg: dict[str, Any]) -> None:
        await self.send_text(json.dumps(msg))

    async def send_text(self, text: str) -> None:
        await self.ws.send_message(text)

    async def recv(self, limit: float = FRAME_TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(limit):
            text = await self.ws.get_message()
        assert isinstance(text, str), text
        result: dict[str, Any] = json.loads(text)
        return result

    async def until(
        self, done: Callable[[dict[str, Any]], bool], limit: float = FRAME_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Frames received up to and including the first for which ``done`` holds."""
        seen: list[dict[str, Any]] = []
        try:
            with trio.fail_after(limit):
                while True:
                    frame = await self.recv(limit)
                    seen.append(frame)
                    if done(frame):
                        return seen
        except trio.TooSlowError:
            raise AssertionError(
                f"no expected frame within {limit:g} s; got {len(seen)} frames, "
                f"the last ones: {seen[-3:]!r}"
            ) from None

    async def leave(self, limit: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
        """Say goodbye (empty frame); return what arrives until the server closes."""
        await self.send_text("")
        seen = await self.drain(limit)
        await self.aclose()
        return seen

    async def drain(self, limit: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
        seen = []
        with trio.fail_after(limit):
            while True:
                try:
                    seen.append(json.loads(await self.ws.get_message()))
                except trio_websocket.ConnectionClosed:
                    return seen

    async def aclose(self) -> None:
        with trio.move_on_after(5):
            await self.ws.aclose()
        await self.stream.aclose()


async def connect(server: ChannelServer, sid: str, nursery: trio.Nursery) -> Client:
    """A trio-websocket client: TCP upgrade, or HTTP upgrade on the session's socket."""
    stream: trio.SocketStream
    if server.transport == "tcp":
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        resource = f"/sessions/{sid}/channels"
    else:
        stream = await trio.open_unix_socket(await channel_path(server, sid))
        resource = f"/api/channels/{sid}"
    headers = [(b"Authorization", f"Bearer {TOKEN}".encode())]
    try:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, "localhost", resource, extra_headers=headers
        )
    except BaseException:
        await stream.aclose()
        raise
    _OPEN_STREAMS.append(stream)
    return Client(ws, stream)


async def channel_path(server: ChannelServer, sid: str) -> str:
    status, body = await call(server, "GET", f"/sessions/{sid}/channels")
    assert status == 200, body
    path = json.loads(body)
    assert isinstance(path, str)
    return path


class RawClient(Client):
    """wsproto by hand over a Unix stream, optionally without the HTTP upgrade."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection | Connection) -> None:
        super().__init__(None, stream)
        self.conn = ws
        self.inbox: list[str] = []
        self.parts: list[str] = []
        self.pings: list[bytes] = []
        self.closed = False

    @classmethod
    async def open(cls, path: str, *, upgrade: bool, pause: float = 0.0) -> RawClient:
        stream = await trio.open_unix_socket(path)
        _OPEN_STREAMS.append(stream)
        if not upgrade:
            # wsproto's bare Connection: frames only, no handshake.
            return cls(stream, Connection(ConnectionType.CLIENT))
        ws = WSConnection(ConnectionType.CLIENT)
        request = ws.send(Request(host="localhost", target="/api/channels/x"))
        await stream.send_all(request[:4])
        await trio.sleep(pause)
        await stream.send_all(request[4:])
        return await cls.accepted(stream, ws)

    @classmethod
    async def accepted(cls, stream: trio.SocketStream, ws: WSConnection) -> RawClient:
        """The client once the server accepted the upgrade ``ws`` has sent."""
        client = cls(stream, ws)
        with trio.fail_after(FRAME_TIMEOUT):
            while True:
                data = await stream.receive_some()
                assert data, "closed during the handshake"
                ws.receive_data(data)
                events = list(ws.events())
                if any(isinstance(e, AcceptConnection) for e in events):
                    client._absorb(events)
                    return client

    def _absorb(self, events: list[Any]) -> list[bytes]:
        replies = []
        for event in events:
            if isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    self.inbox.append("".join(self.parts))
                    self.parts.clear()
            elif isinstance(event, Ping):
                self.pings.append(bytes(event.payload))
                # A ping and the server's Close can arrive in one read; wsproto
                # has taken in the Close by then, and a pong is no longer due.
                if self.conn.state is ConnectionState.OPEN:
                    replies.append(self.conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = True
                with contextlib.suppress(Exception):
                    replies.append(self.conn.send(event.response()))
        return replies

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(TextMessage(data=text)))

    async def _next_text(self) -> str:
        while not self.inbox:
            if self.closed:
                raise trio_websocket.ConnectionClosed(None)
            data = await self.stream.receive_some()
            if not data:
                self.closed = True
                continue
            self.conn.receive_data(data)
            for reply in self._absorb(list(self.conn.events())):
                with contextlib.suppress(trio.BrokenResourceError):
                    await self.stream.send_all(reply)
        return self.inbox.pop(0)

    async def recv(self, limit: float = FRAME_TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(limit):
            result: dict[str, Any] = json.loads(await self._next_text())
            return result

    async def drain(self, limit: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
        seen = []
        with trio.fail_after(limit):
            while True:
                try:
                    seen.append(json.loads(await self._next_text()))
                except trio_websocket.ConnectionClosed:
                    return seen

    async def aclose(self) -> None:
        await self.stream.aclose()


# ------------------------------------------------------------------- messages


def jmsg(
    msg_type: str,
    content: dict[str, Any],
    *,
    channel: str = "shell",
    parent: dict[str, Any] | None = None,
    buffers: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex[:10],
            "msg_type": msg_type,
            "session": "client",
            "username": "tester",
            "date": "2026-01-01T00:00:00.000Z",
            "version": "5.3",
        },
        "parent_header": parent,
        "channel": channel,
        "content": content,
        "metadata": {},
        "buffers": [base64.b64encode(b).decode() for b in buffers or []],
    }


def execute(code: str, *, allow_stdin: bool = False) -> dict[str, Any]:
    return jmsg(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        },
    )


def msg_id(msg: dict[str, Any]) -> str:
    value: str = msg["header"]["msg_id"]
    return value


def is_idle_for(parent_id: str) -> Callable[[dict[str, Any]], bool]:
    def check(frame: dict[str, Any]) -> bool:
        return (
            frame.get("kind") == "jupyter"
            and frame["header"]["msg_type"] == "status"
            and frame["content"]["execution_state"] == "idle"
            and (frame.get("parent_header") or {}).get("msg_id") == parent_id
        )

    return check


def of_type(frames: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("kind") == "jupyter" and f["header"]["msg_type"] == msg_type]


def stdout_of(frames: list[dict[str, Any]], parent_id: str | None = None) -> str:
    return "".join(
        f["content"]["text"]
        for f in of_type(frames, "stream")
        if f["content"]["name"] == "stdout"
        and (parent_id is None or (f.get("parent_header") or {}).get("msg_id") == parent_id)
    )


async def reply_to(
    client: Client, frames: list[dict[str, Any]], request: dict[str, Any]
) -> dict[str, Any]:
    """The ``execute_reply`` to ``request``: among ``frames``, or the next one to come."""

    def is_reply(f: dict[str, Any]) -> bool:
        return (
            f.get("kind") == "jupyter"
            and f["header"]["msg_type"] == "execute_reply"
            and f["parent_header"]["msg_id"] == msg_id(request)
        )

    found = [f for f in frames if is_reply(f)]
    if not found:
        found = (await client.until(is_reply))[-1:]
    return found[0]


def printed_at_least(n: int) -> Callable[[dict[str, Any]], bool]:
    def check(frame: dict[str, Any]) -> bool:
        numbers = stdout_of([frame]).split()
        return bool(numbers) and int(numbers[-1]) >= n

    return check


def _sequence_number(msg_id: str) -> int:
    """The kernel's message counter in a jupyter_client ``msg_id`` (``{session}_{pid}_{n}``)."""
    return int(msg_id.rsplit("_", 1)[1])


async def assert_kernel_output_arrived(
    client: Client, frames: list[dict[str, Any]], request: dict[str, Any], expected: list[str]
) -> None:
    """Assert that every stdout message the counting kernel sent reached us, in order.

    The kernel's IOPub socket may drop messages at its send high-water mark
    (see ``docs/channels.md``); the counting kernel records each one. So the
    received messages and the recorded ones, put in the kernel's own order
    (its message counter), must make up the whole output -- a message that
    left the kernel and went missing after it fails the test -- and the
    received ones must have arrived in that order. Drops at the kernel are
    reported as a warning.
    """
    assert not [f for f in frames if "outputDropped" in f]
    received = [
        (_sequence_number(f["header"]["msg_id"]), f["content"]["text"])
        for f in of_type(frames, "stream")
        if f["content"]["name"] == "stdout"
        and (f.get("parent_header") or {}).get("msg_id") == msg_id(request)
    ]
    arrival = [number for number, _ in received]
    assert arrival == sorted(set(arrival)), "stream messages out of order or repeated"
    report = stdout_of(
        await run(
            client,
            "import ipykernel.iostream as m, json\n"
            "print(json.dumps([m.IOPubThread.kc_dropped, m.IOPubThread.kc_stalls]))",
        )
    )
    dropped, stalls = json.loads(report)
    refused = [
        (_sequence_number(i), text)
        for i, kind, parent, name, text in dropped
        if kind == "stream" and name == "stdout" and parent == msg_id(request)
    ]
    assert not set(arrival) & {number for number, _ in refused}
    text = "".join(t for _, t in sorted(received + refused))
    assert text.split() == expected, "output lost between the kernel's socket and the client"
    if dropped:
        warnings.warn(
            f"the kernel's IOPub socket dropped {len(dropped)} messages at its send "
            f"high-water mark (TCP queues and I/O thread states, first bursts: {stalls[:5]})",
            KernelDroppedOutputWarning,
            stacklevel=2,
        )


async def run(client: Client, code: str, limit: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
    request = execute(code)
    await client.send(request)
    return await client.until(is_idle_for(msg_id(request)), limit)


# ---------------------------------------------------------------------- tests


async def test_execute_round_trip(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    request = execute("print('hello')")
    await client.send(request)
    frames = await client.until(is_idle_for(msg_id(request)))
    streams = of_type(frames, "stream")
    assert streams, frames
    assert streams[0]["kind"] == "jupyter"
    assert streams[0]["channel"] == "iopub"
    assert set(streams[0]["header"]) == {"msg_id", "msg_type"}
    assert stdout_of(frames) == "hello\n"
    busy = [f for f in frames if f.get("kind") == "kernel" and "status" in f]
    assert busy, frames
    reply = await reply_to(client, frames, request)
    assert reply["channel"] == "shell"
    assert reply["content"]["status"] == "ok"
    assert reply["parent_header"]["msg_id"] == msg_id(request)
    await client.leave()


async def test_stdin_input_request_and_reply(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    request = execute("print('got', input('x?'))", allow_stdin=True)
    await client.send(request)
    frames = await client.until(
        lambda f: f.get("kind") == "jupyter" and f["header"]["msg_type"] == "input_request"
    )
    ask = frames[-1]
    assert ask["channel"] == "stdin"
    assert ask["content"]["prompt"] == "x?"
    await client.send(jmsg("input_reply", {"value": "abc"}, channel="stdin", parent=ask["header"]))
    frames = await client.until(is_idle_for(msg_id(request)))
    assert "got abc\n" in stdout_of(frames)
    await client.leave()


async def test_interrupt_during_a_long_execute(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    request = execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    await client.send(request)
    await client.until(lambda f: f.get("kind") == "jupyter" and stdout_of([f]) == "sleeping\n")
    await client.send(jmsg("interrupt_request", {}, channel="control"))
    frames = await client.until(is_idle_for(msg_id(request)))
    reply = await reply_to(client, frames, request)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    await client.leave()


COMM_TARGET = """
import comm

def _target(c, open_msg):
    @c.on_msg
    def _echo(msg):
        c.send(msg['content']['data'], buffers=[bytes(b) for b in msg['buffers']])

comm.get_comm_manager().register_target('kc_echo', _target)
print('registered')
"""


async def test_comm_buffers_round_trip_byte_for_byte(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    assert "registered\n" in stdout_of(await run(client, COMM_TARGET))
    comm_id = uuid.uuid4().hex
    await client.send(jmsg("comm_open", {"comm_id": comm_id, "target_name": "kc_echo", "data": {}}))
    payloads = [bytes(range(256)) * 64, b"", b"\x00\xff\x80 binary \x7f"]
    await client.send(jmsg("comm_msg", {"comm_id": comm_id, "data": {"x": 1}}, buffers=payloads))
    frames = await client.until(
        lambda f: (
            f.get("kind") == "jupyter"
            and f["header"]["msg_type"] == "comm_msg"
            and f["content"]["comm_id"] == comm_id
        )
    )
    echo = frames[-1]
    assert echo["content"]["data"] == {"x": 1}
    assert [base64.b64decode(b) for b in echo["buffers"]] == payloads
    await client.leave()


async def test_execution_queue_is_fifo_with_queued_events(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    requests = [
        execute("import time; time.sleep(0.5); print('a')"),
        execute("print('b')"),
        execute("print('c')"),
    ]
    for request in requests:
        await client.send(request)
    frames = await client.until(is_idle_for(msg_id(requests[-1])), 30)
    queued = [f["executionQueued"] for f in frames if "executionQueued" in f]
    assert queued == [msg_id(requests[1]), msg_id(requests[2])]
    assert stdout_of(frames) == "a\nb\nc\n"
    await client.leave()


LOOP_2000 = "import time\nfor i in range(2000):\n    print(i, flush=True)\n    time.sleep(0.001)"


async def test_disconnect_mid_output_and_reconnect_loses_nothing(
    server: ChannelServer, counting_session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, counting_session_id, nursery)
    request = execute(LOOP_2000)
    await client.send(request)
    first = await client.until(printed_at_least(200))
    first += await client.leave()
    assert not any(is_idle_for(msg_id(request))(f) for f in first), "disconnected too late"
    second_client = await connect(server, counting_session_id, nursery)
    second = await second_client.until(is_idle_for(msg_id(request)), 30)
    expected = [str(i) for i in range(2000)]
    await assert_kernel_output_arrived(second_client, first + second, request, expected)
    await second_client.leave()


async def test_kernel_sigkilled_mid_output_ends_the_stream_cleanly(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    """What arrived before the SIGKILL is a gap-free prefix, then ``exited: -9``."""
    client = await connect(server, session_id, nursery)
    request = execute(
        "import time\nfor i in range(100000):\n    print(i, flush=True)\n    time.sleep(0.001)"
    )
    await client.send(request)
    frames = await client.until(printed_at_least(200))
    details = await trio.to_thread.run_sync(server.session, session_id)
    os.kill(details["process_id"], signal.SIGKILL)
    frames += await client.until(lambda f: "exited" in f, 30)
    assert frames[-1] == {"kind": "kernel", "exited": -9}
    numbers = stdout_of(frames, msg_id(request)).split()
    assert len(numbers) >= 200
    assert numbers == [str(i) for i in range(len(numbers))]
    assert (await trio.to_thread.run_sync(server.session, session_id))["status"] == "exited"
    await client.leave()


async def test_takeover_tells_the_first_client_and_closes_it(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    first = await connect(server, session_id, nursery)
    await run(first, "x = 1")
    second = await connect(server, session_id, nursery)
    goodbye = await first.drain()
    await first.aclose()
    assert goodbye[-1] == {
        "kind": "kernel",
        "clientDisconnected": "Another client is connecting to this session.",
    }
    assert "2\n" in stdout_of(await run(second, "print(x + 1)"))
    await second.leave()


async def test_connected_follows_attach_and_detach(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    async def connected() -> tuple[bool, str | None]:
        details = await trio.to_thread.run_sync(server.session, session_id)
        return details["connected"], details.get("socket_path")

    assert (await connected())[0] is False
    client = await connect(server, session_id, nursery)
    await run(client, "pass")
    is_connected, socket_path = await connected()
    assert is_connected is True
    if server.transport == "socket":
        assert socket_path == await channel_path(server, session_id)
    else:
        assert socket_path is None
    await client.leave()
    for _ in range(200):  # bounded poll: 10 s
        if not (await connected())[0]:
            break
        await trio.sleep(0.05)
    assert await connected() == (False, None)


# ipykernel sends one message per flushed print, waiting for each: on two
# busy cores that is as slow as 300 lines a second.
@pytest.mark.time_limit(150)
async def test_twenty_thousand_prints_arrive_in_order(
    server: ChannelServer, counting_session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, counting_session_id, nursery)
    request = execute("for i in range(20000):\n    print(i, flush=True)")
    await client.send(request)
    frames = await client.until(is_idle_for(msg_id(request)), 120)
    expected = [str(i) for i in range(20000)]
    await assert_kernel_output_arrived(client, frames, request, expected)
    await client.leave()


async def test_unparsable_frames_are_dropped_and_the_connection_stays(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    await client.send_text("{not json")
    await client.send_text('{"header": {}}')
    assert "ok\n" in stdout_of(await run(client, "print('ok')"))
    await client.leave()


# ------------------------------------------------------- Unix socket specifics

# Transport-specific tests pick one value of the module's ``server`` fixture.
SOCKET_ONLY = pytest.mark.parametrize("server", ["socket"], indirect=True)
TCP_ONLY = pytest.mark.parametrize("server", ["tcp"], indirect=True)


@SOCKET_ONLY
async def test_raw_socket_without_http_upgrade(server: ChannelServer, session_id: str) -> None:
    path = await channel_path(server, session_id)
    assert await channel_path(server, session_id) == path, "same session, same socket"
    assert len(os.fsencode(path)) <= 104
    assert os.stat(path).st_mode & 0o777 == 0o600
    client = await RawClient.open(path, upgrade=False)
    assert "raw\n" in stdout_of(await run(client, "print('raw')"))
    # The first ping goes out at once, its payload an 8-byte counter.
    assert client.pings[:1] == [(1).to_bytes(8, "big")]
    await client.leave()
    await client.aclose()


@SOCKET_ONLY
async def test_slow_http_upgrade_on_the_channel_socket(
    server: ChannelServer, session_id: str
) -> None:
    path = await channel_path(server, session_id)
    client = await RawClient.open(path, upgrade=True, pause=0.5)
    assert "slow\n" in stdout_of(await run(client, "print('slow')"))
    await client.leave()
    await client.aclose()


@SOCKET_ONLY
async def test_channel_socket_is_removed_on_kill(server: ChannelServer, session_id: str) -> None:
    path = await channel_path(server, session_id)
    assert await trio.Path(path).exists()
    status, _ = await call(server, "POST", f"/sessions/{session_id}/kill")
    assert status == 200
    assert not await trio.Path(path).exists()


# ---------------------------------------------------------------- TCP specifics


@TCP_ONLY
async def test_unknown_session_is_400_and_does_not_kick_the_client(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    client = await connect(server, session_id, nursery)
    await run(client, "pass")
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }

    def attempt(sid: str, **extra: str) -> tuple[int, bytes]:
        return server.request("GET", f"/sessions/{sid}/channels", headers={**upgrade, **extra})

    status, body = await trio.to_thread.run_sync(attempt, "no-such-session")
    assert status == 400
    assert json.loads(body) == {
        "code": "KS-1",
        "message": "Session no-such-session not found",
        "details": "Establishing a websocket connection requires a valid session ID",
    }
    # Without the token: 401 before anything else.
    status, body = await trio.to_thread.run_sync(lambda: attempt(session_id, Authorization=""))
    assert status == 401
    assert json.loads(body)["code"] == "401"
    # A plain GET is a clean 400.
    status, body = await call(server, "GET", f"/sessions/{session_id}/channels")
    assert status == 400
    assert json.loads(body)["code"] == "400"
    # The connected client noticed none of this.
    assert "still\n" in stdout_of(await run(client, "print('still')"))
    assert (await trio.to_thread.run_sync(server.session, session_id))["connected"] is True
    await client.leave()


# Small enough that a few thousand lines overflow it.
SMALL_BUFFER = 64 * 1024  # bytes


@pytest.fixture(scope="module")
def small_buffer_server(marker: str) -> Iterator[ChannelServer]:
    srv = ChannelServer("tcp", marker, ("--client-buffer-size", str(SMALL_BUFFER))).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.time_limit(60)
async def test_overflow_while_away_is_reported_and_status_is_never_dropped(
    small_buffer_server: ChannelServer, nursery: trio.Nursery
) -> None:
    """Output past the bound is shed oldest-first; the client is told how much.

    Status messages and replies are never shed, so the returning client
    still sees the execution finish; what output it does get is the newest,
    in order, each line once.
    """
    server = small_buffer_server
    sid = f"ovf-{uuid.uuid4().hex[:8]}"
    status, body = await call(server, "PUT", "/sessions", session_body(sid))
    assert status == 200, body
    status, body = await call(server, "POST", f"/sessions/{sid}/start")
    assert status == 200, body
    try:
        client = await connect(server, sid, nursery)
        request = execute("for i in range(5000):\n    print(f'{i:05d}' + 'x' * 60, flush=True)")
        await client.send(request)
        await client.leave()  # gone before the output is produced
        for _ in range(600):  # bounded poll: 30 s for the kernel to finish
            details = await trio.to_thread.run_sync(server.session, sid)
            if details["status"] == "idle" and not details["execution_queue"].get("active"):
                break
            await trio.sleep(0.05)
        back = await connect(server, sid, nursery)
        frames = await back.until(is_idle_for(msg_id(request)), 30)
        dropped = [f["outputDropped"] for f in frames if "outputDropped" in f]
        assert len(dropped) == 1
        assert dropped[0] > 0
        assert frames.index(next(f for f in frames if "outputDropped" in f)) == 0
        lines = stdout_of(frames, msg_id(request)).split()
        numbers = [int(line[:5]) for line in lines]
        assert numbers == sorted(set(numbers)), "in order, each at most once"
        assert numbers[-1] == 4999, "the newest output survives"
        # ipykernel 7 sends the reply from its shell thread and the idle from
        # its iopub thread, so the reply may come after the idle.
        await reply_to(back, frames, request)
        await back.leave()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(20):
            await call(server, "POST", f"/sessions/{sid}/kill")


async def test_resource_usage_is_sampled_while_a_client_is_attached(
    server: ChannelServer, session_id: str, nursery: trio.Nursery
) -> None:
    """The default 1 s sampling reports the kernel's tree to the attached client."""
    details = await trio.to_thread.run_sync(server.session, session_id)
    assert "resource_usage" not in details, "nobody attached yet: nothing sampled"
    client = await connect(server, session_id, nursery)
    frames = await client.until(lambda f: "resourceUsage" in f, 10)
    usage = frames[-1]["resourceUsage"]
    assert set(usage) == {
        "cpu_percent",
        "memory_bytes",
        "thread_count",
        "sampling_period_ms",
        "timestamp",
    }
    assert usage["memory_bytes"] > 10_000_000, "an ipykernel's RSS"
    assert usage["thread_count"] >= 1
    assert usage["sampling_period_ms"] == 1000
    assert usage["timestamp"] > 1_700_000_000_000
    assert 0 <= usage["cpu_percent"] < 150, "an idle kernel"
    details = await trio.to_thread.run_sync(server.session, session_id)
    assert details["resource_usage"]["memory_bytes"] > 0
    await client.leave()


# ----------------------------------------------------- TCP: served beside hypercorn


@pytest.fixture(scope="module")
def tcp_server(marker: str) -> Iterator[ChannelServer]:
    srv = ChannelServer("tcp", marker).start()
    try:
        yield srv
    finally:
        srv.stop()


async def open_raw_tcp(server: ChannelServer, sid: str, *, prelude: bytes = b"") -> RawClient:
    """wsproto by hand over TCP; ``prelude`` is sent first on the same connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    _OPEN_STREAMS.append(stream)
    if prelude:
        await stream.send_all(prelude)
        head = b""
        with trio.fail_after(FRAME_TIMEOUT):
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some()
                assert chunk, "closed after the first request"
                head += chunk
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host="localhost",
        target=f"/sessions/{sid}/channels",
        extra_headers=[(b"Authorization", f"Bearer {TOKEN}".encode())],
    )
    await stream.send_all(ws.send(request))
    return await RawClient.accepted(stream, ws)


async def test_tcp_channel_pings_carry_a_counter(tcp_server: ChannelServer) -> None:
    """Like Kallichore (and our Unix sockets): a ping at once, payload an 8-byte counter."""
    sid = f"ping-{uuid.uuid4().hex[:8]}"
    status, body = await call(tcp_server, "PUT", "/sessions", session_body(sid))
    assert status == 200, body
    try:
        client = await open_raw_tcp(tcp_server, sid)
        with trio.fail_after(FRAME_TIMEOUT):
            while not client.pings:
                data = await client.stream.receive_some()
                assert data
                client.conn.receive_data(data)
                for reply in client._absorb(list(client.conn.events())):
                    await client.stream.send_all(reply)
        assert client.pings[0] == (1).to_bytes(8, "big")
        details = await trio.to_thread.run_sync(tcp_server.session, sid)
        assert details["connected"] is True
        await client.aclose()
    finally:
        await call(tcp_server, "DELETE", f"/sessions/{sid}")


async def test_tcp_upgrade_after_a_request_on_the_same_connection(
    tcp_server: ChannelServer,
) -> None:
    """An upgrade on a kept-alive connection is served too (by the app's route)."""
    async with running_session(tcp_server, "keep") as sid:
        prelude = b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n"
        client = await open_raw_tcp(tcp_server, sid, prelude=prelude)
        request = execute("print('kept alive')")
        await client.send(request)
        frames = await client.until(is_idle_for(msg_id(request)))
        assert "kept alive\n" in stdout_of(frames)
        await client.leave()


async def test_shutdown_closes_tcp_channels(marker: str) -> None:
    """A server asked to stop closes its channel WebSockets and exits 0."""
    srv = ChannelServer("tcp", marker).start()
    try:
        sid = f"bye-{uuid.uuid4().hex[:8]}"
        status, body = await call(srv, "PUT", "/sessions", session_body(sid))
        assert status == 200, body
        client = await open_raw_tcp(srv, sid)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        await client.drain()  # ends at the server's Close frame
        assert client.closed
        assert await trio.to_thread.run_sync(lambda: srv.proc.wait(20)) == 0  # type: ignore[union-attr]
    finally:
        srv.stop()
