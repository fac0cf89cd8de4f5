"""kallichore.transport.memory: the in-memory sockets keep the seam's contract.

The same promises tests/unit/transport/test_zmq.py checks of ZeroMQ (order,
whole messages, cancellation, close, exclusive receive, heartbeat
correlation), plus the ZeroMQ behaviours a session depends on (connecting
before the kernel binds, slow joiners, high-water marks, disconnection).
Pure trio: every timed test runs under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from kallichore.transport.base import (
    CHANNELS,
    FrameSocket,
    TransportClosedError,
    TransportError,
    heartbeat_once,
)
from kallichore.transport.memory import (
    MemoryNetwork,
    MemorySocket,
    MemoryTransport,
    SocketKind,
)

ENDPOINT = "tcp://127.0.0.1:5555"


def _pair(net: MemoryNetwork, identity: bytes = b"me") -> tuple[MemorySocket, MemorySocket]:
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    dealer = net.connect(SocketKind.DEALER, ENDPOINT, identity=identity)
    return dealer, router


def _endpoints(first_port: int) -> dict[str, str]:
    return {name: f"tcp://127.0.0.1:{first_port + i}" for i, name in enumerate(CHANNELS)}


async def test_satisfies_frame_socket_protocol() -> None:
    dealer, _ = _pair(MemoryNetwork())
    assert isinstance(dealer, FrameSocket)


async def test_dealer_router_round_trip_routes_by_identity() -> None:
    net = MemoryNetwork()
    dealer, router = _pair(net, b"alice")
    other = net.connect(SocketKind.DEALER, ENDPOINT, identity=b"bob")
    await dealer.send_multipart([b"a", b"b"])
    assert await router.receive_multipart() == [b"alice", b"a", b"b"]
    await router.send_multipart([b"alice", b"reply"])
    await router.send_multipart([b"nobody", b"dropped"])
    assert await dealer.receive_multipart() == [b"reply"]
    assert other.receive_now() is None
    assert dealer.receive_now() is None


async def test_messages_sent_before_the_kernel_binds_arrive_in_order() -> None:
    net = MemoryNetwork()
    dealer = net.connect(SocketKind.DEALER, ENDPOINT, identity=b"me")
    for i in range(3):
        await dealer.send_multipart([str(i).encode()])
    assert not dealer.is_linked()
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    assert await router.receive_batch(10) == [[b"me", b"0"], [b"me", b"1"], [b"me", b"2"]]


async def test_receive_always_checkpoints_and_batches_up_to_the_limit() -> None:
    dealer, router = _pair(MemoryNetwork())
    for i in range(5):
        await dealer.send_multipart([str(i).encode()])
    with trio.testing.assert_checkpoints():
        first = await router.receive_batch(3)
    assert [m[1] for m in first] == [b"0", b"1", b"2"]
    with trio.testing.assert_checkpoints():
        assert (await router.receive_multipart())[1] == b"3"
    assert [m[1] for m in await router.receive_batch(3)] == [b"4"]
    with pytest.raises(ValueError, match="max_messages"):
        await router.receive_batch(0)


async def test_cancelled_receive_loses_nothing_and_a_second_receiver_is_refused() -> None:
    dealer, router = _pair(MemoryNetwork())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.receive_multipart)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await router.receive_multipart()
        nursery.cancel_scope.cancel()
    await dealer.send_multipart([b"kept"])
    with trio.CancelScope() as scope:
        scope.cancel()
        await router.receive_multipart()
    assert await router.receive_multipart() == [b"me", b"kept"]


async def test_sender_waits_at_the_high_water_mark_and_never_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    dealer = net.connect(SocketKind.DEALER, ENDPOINT, identity=b"me", send_hwm=2)
    await dealer.send_multipart([b"0"])
    await dealer.send_multipart([b"1"])
    with trio.move_on_after(5) as scope:
        await dealer.send_multipart([b"cancelled"])
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dealer.send_multipart, [b"2"])
        await trio.testing.wait_all_tasks_blocked()
        assert (await router.receive_multipart())[1] == b"0"
    assert [m[1] for m in await router.receive_batch(10)] == [b"1", b"2"]


async def test_concurrent_senders_keep_fifo_order_at_the_high_water_mark() -> None:
    net = MemoryNetwork()
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    dealer = net.connect(SocketKind.DEALER, ENDPOINT, identity=b"me", send_hwm=1)
    await dealer.send_multipart([b"first"])
    async with trio.open_nursery() as nursery:
        for name in (b"a", b"b", b"c"):
            nursery.start_soon(dealer.send_multipart, [name])
            await trio.testing.wait_all_tasks_blocked()
        received = [(await router.receive_multipart())[1] for _ in range(4)]
    assert received == [b"first", b"a", b"b", b"c"]


async def test_pub_reaches_connected_subscribers_only_and_drops_over_its_mark() -> None:
    net = MemoryNetwork()
    pub = net.bind(SocketKind.PUB, ENDPOINT, send_hwm=2)
    await pub.send_multipart([b"before anyone listens"])
    sub = net.connect(SocketKind.SUB, ENDPOINT)
    for i in range(3):
        await pub.send_multipart([str(i).encode()])
    assert await sub.receive_batch(10) == [[b"0"], [b"1"]]
    assert pub.dropped == 1


async def test_unbounded_pub_keeps_a_flood_nobody_reads() -> None:
    net = MemoryNetwork()
    pub = net.bind(SocketKind.PUB, ENDPOINT)
    sub = net.connect(SocketKind.SUB, ENDPOINT)
    for i in range(5000):
        await pub.send_multipart([str(i).encode()])
    got = [m[0] for m in await sub.receive_batch(10_000)]
    assert got == [str(i).encode() for i in range(5000)]
    assert pub.dropped == 0


async def test_heartbeat_discards_a_late_reply_to_a_missed_beat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    hb = net.connect(SocketKind.REQ, ENDPOINT, identity=b"me")
    with trio.move_on_after(1) as missed:
        await heartbeat_once(hb, b"ping-1")
    assert missed.cancelled_caught
    late = await router.receive_multipart()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat_once, hb, b"ping-2")
        current = await router.receive_multipart()
        await router.send_multipart(late)  # the abandoned ping's echo
        await trio.testing.wait_all_tasks_blocked()
        assert hb.receive_now() is None  # discarded on arrival
        await router.send_multipart(current)
    assert late[-1] == b"ping-1"
    assert current[-1] == b"ping-2"


async def test_rep_answers_whoever_asked() -> None:
    net = MemoryNetwork()
    rep = net.bind(SocketKind.REP, ENDPOINT)
    req = net.connect(SocketKind.REQ, ENDPOINT)
    with pytest.raises(TransportError, match="before it replies"):
        await rep.send_multipart([b"unasked"])
    await req.send_multipart([b"question"])
    assert await rep.receive_multipart() == [b"question"]
    await rep.send_multipart([b"answer"])
    rep.close()
    assert await req.receive_multipart() == [b"answer"]


async def test_close_wakes_blocked_tasks_with_the_closed_error() -> None:
    net = MemoryNetwork()
    router = net.bind(SocketKind.ROUTER, ENDPOINT)
    dealer = net.connect(SocketKind.DEALER, ENDPOINT, send_hwm=1)
    await dealer.send_multipart([b"fills the mark"])
    closed: list[str] = []

    async def expect_closed(name: str, operation: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(TransportClosedError):
            await operation()
        closed.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expect_closed, "receive", dealer.receive_multipart)
        nursery.start_soon(expect_closed, "send", partial(dealer.send_multipart, [b"blocked"]))
        await trio.testing.wait_all_tasks_blocked()
        dealer.close()
        dealer.close()
    assert sorted(closed) == ["receive", "send"]
    assert (await router.receive_multipart())[1] == b"fills the mark"
    with pytest.raises(TransportClosedError):
        await dealer.send_multipart([b"after close"])
    with pytest.raises(TransportError, match="cannot send"):
        await net.connect(SocketKind.SUB, ENDPOINT).send_multipart([b"x"])


async def test_a_kernel_going_away_disconnects_and_a_new_one_reconnects() -> None:
    net = MemoryNetwork()
    dealer, router = _pair(net)
    await dealer.send_multipart([b"unread, lost"])
    await router.send_multipart([b"me", b"received, kept"])
    router.close()
    await dealer.wait_disconnected()
    assert await dealer.receive_multipart() == [b"received, kept"]
    await dealer.send_multipart([b"waits for the next kernel"])
    assert not net.is_bound(ENDPOINT)
    again = net.bind(SocketKind.ROUTER, ENDPOINT)
    assert await again.receive_multipart() == [b"me", b"waits for the next kernel"]
    with pytest.raises(TransportError, match="already in use"):
        net.bind(SocketKind.ROUTER, ENDPOINT)


async def test_open_kernel_connection_talks_to_a_bound_kernel() -> None:
    transport = MemoryTransport()
    net = transport.network
    endpoints = _endpoints(net.pick_port())
    with pytest.raises(ValueError, match="missing endpoints"):
        async with transport.open_kernel_connection({}, identity=b"s"):
            pass  # pragma: no cover
    async with transport.open_kernel_connection(
        endpoints, identity=b"session", watch_disconnect=True
    ) as connection:
        kernel = {
            name: net.bind(SocketKind.PUB if name == "iopub" else SocketKind.ROUTER, endpoint)
            for name, endpoint in endpoints.items()
        }
        await connection.wait_stdin_connected()
        await connection.dealer("control").send_multipart([b"request"])
        assert await kernel["control"].receive_multipart() == [b"session", b"request"]
        await kernel["iopub"].send_multipart([b"status"])
        assert await connection.iopub.receive_multipart() == [b"status"]
        with pytest.raises(ValueError, match="iopub"):
            connection.dealer("iopub")
        kernel["hb"].close()
        await connection.wait_disconnected()
    assert connection.shell.closed
    assert connection.hb.closed


async def test_wait_disconnected_needs_watching() -> None:
    transport = MemoryTransport()
    endpoints = _endpoints(transport.network.pick_port())
    async with transport.open_kernel_connection(endpoints, identity=b"s") as connection:
        with pytest.raises(RuntimeError, match="watch_disconnect"):
            await connection.wait_disconnected()


async def test_registration_socket_gets_the_request_and_the_reply_outlives_it() -> None:
    transport = MemoryTransport()
    async with transport.open_registration() as (sock, port):
        kernel = transport.network.connect(SocketKind.REQ, f"tcp://127.0.0.1:{port}")
        await kernel.send_multipart([b"handshake_request"])
        assert await sock.receive_multipart() == [b"handshake_request"]
        await sock.send_multipart([b"handshake_reply"])
    assert sock.closed
    assert await kernel.receive_multipart() == [b"handshake_reply"]


async def test_wait_readable_consumes_nothing_and_receive_now_never_waits() -> None:
    dealer, router = _pair(MemoryNetwork())
    assert dealer.receive_now() is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dealer.wait_readable)
        await trio.testing.wait_all_tasks_blocked()
        await router.send_multipart([b"me", b"first"])
        await router.send_multipart([b"me", b"second"])
    with trio.testing.assert_checkpoints():
        await dealer.wait_readable()  # still there: nothing was taken
    with trio.testing.assert_no_checkpoints():
        assert dealer.receive_now() == [b"first"]
        assert dealer.receive_now() == [b"second"]
        assert dealer.receive_now() is None
    with trio.CancelScope() as scope:
        scope.cancel()
        await dealer.wait_readable()
    dealer.close()
    with pytest.raises(TransportClosedError):
        dealer.receive_now()
    with pytest.raises(TransportClosedError):
        await dealer.wait_readable()
