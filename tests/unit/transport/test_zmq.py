"""TrioZmqSocket and the kernel-socket helpers, over real ZeroMQ on localhost.

Rules for this module: real ``tcp://127.0.0.1`` with OS-picked ports, a fresh
ZeroMQ context per test (destroyed at teardown), the real clock (never
``autojump_clock`` with real I/O); the suite's ``fail_after`` turns a lost
wake-up into a failure instead of a hang.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import pytest
import trio
import trio.testing
import zmq

from kallichore.transport.base import FrameSocket
from kallichore.transport.zmq import (
    CHANNELS,
    HEARTBEAT_PAYLOAD,
    KernelSockets,
    TransportClosedError,
    TransportError,
    TrioZmqSocket,
    ZmqTransport,
    heartbeat_once,
    open_kernel_sockets,
    open_registration_socket,
    wait_stdin_connected,
)

LOCALHOST = "tcp://127.0.0.1"

SocketFactory = Callable[..., TrioZmqSocket]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def make_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[SocketFactory]:
    """``make_socket(zmq.DEALER, IDENTITY=b"x")``: a wrapped socket, LINGER=0."""
    made: list[TrioZmqSocket] = []

    def make(socket_type: int, **options: int | bytes) -> TrioZmqSocket:
        raw = ctx.socket(socket_type)
        raw.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            raw.setsockopt(getattr(zmq, name), value)
        sock = TrioZmqSocket(raw)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def bind(sock: TrioZmqSocket) -> str:
    """Bind ``sock`` to a random localhost port; return the endpoint."""
    port = sock.raw.bind_to_random_port(LOCALHOST)
    return f"{LOCALHOST}:{port}"


def connected_pair(
    make_socket: SocketFactory,
    bound_type: int,
    connecting_type: int,
    bound_options: dict[str, int | bytes] | None = None,
    connecting_options: dict[str, int | bytes] | None = None,
) -> tuple[TrioZmqSocket, TrioZmqSocket]:
    bound = make_socket(bound_type, **(bound_options or {}))
    connecting = make_socket(connecting_type, **(connecting_options or {}))
    connecting.raw.connect(bind(bound))
    return bound, connecting


async def echo_router(router: TrioZmqSocket, count: int) -> None:
    """Echo ``count`` messages back to whichever peer sent them."""
    for _ in range(count):
        await router.send_multipart(await router.receive_multipart())


# -- basics --------------------------------------------------------------------


async def test_satisfies_frame_socket_protocol(make_socket: SocketFactory) -> None:
    assert isinstance(make_socket(zmq.DEALER), FrameSocket)


async def test_dealer_router_round_trip(make_socket: SocketFactory) -> None:
    router, dealer = connected_pair(
        make_socket, zmq.ROUTER, zmq.DEALER, connecting_options={"IDENTITY": b"session-1"}
    )
    request = [b"session-1", b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"{}", b"\x00" * 70_000]
    await dealer.send_multipart(request)
    identity, *received = await router.receive_multipart()
    assert identity == b"session-1"
    assert received == request
    await router.send_multipart([identity, b"reply", b""])
    assert await dealer.receive_multipart() == [b"reply", b""]


async def test_repr_shows_type_endpoint_and_closed(make_socket: SocketFactory) -> None:
    sock = make_socket(zmq.ROUTER)
    assert repr(sock) == "<TrioZmqSocket ROUTER unconnected>"
    endpoint = bind(sock)
    assert repr(sock) == f"<TrioZmqSocket ROUTER {endpoint}>"
    sock.close()
    assert repr(sock) == "<TrioZmqSocket ROUTER closed>"


async def test_receive_always_checkpoints(make_socket: SocketFactory) -> None:
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    await push.send_multipart([b"ready"])
    assert pull.raw.poll(5000) == zmq.POLLIN  # queued before we ask for it
    with trio.testing.assert_checkpoints():
        assert await pull.receive_multipart() == [b"ready"]
    with trio.testing.assert_checkpoints():
        await push.send_multipart([b"x"])


# -- batches -------------------------------------------------------------------


async def test_receive_batch_takes_what_is_queued_up_to_the_limit(
    make_socket: SocketFactory,
) -> None:
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    for i in range(10):
        await push.send_multipart([b"m", str(i).encode()])
    assert pull.raw.poll(5000) == zmq.POLLIN
    await trio.sleep(0.05)  # all ten queued
    with trio.testing.assert_checkpoints():
        first = await pull.receive_batch(4)
    assert first == [[b"m", str(i).encode()] for i in range(4)]
    rest = await pull.receive_batch(100)
    assert rest == [[b"m", str(i).encode()] for i in range(4, 10)]


async def test_receive_batch_waits_for_the_first_message(
    make_socket: SocketFactory, nursery: trio.Nursery
) -> None:
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    got: list[list[list[bytes]]] = []
    done = trio.Event()

    async def receive() -> None:
        got.append(await pull.receive_batch(8))
        done.set()

    nursery.start_soon(receive)
    await trio.sleep(0.05)
    assert not got
    await push.send_multipart([b"late"])
    with trio.fail_after(5):
        await done.wait()
    assert got == [[[b"late"]]]


async def test_receive_batch_is_exclusive_and_cancellable(make_socket: SocketFactory) -> None:
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    with pytest.raises(ValueError, match="max_messages"):
        await pull.receive_batch(0)
    with trio.CancelScope() as scope:
        scope.cancel()
        await pull.receive_batch(8)
    await push.send_multipart([b"kept"])
    assert await pull.receive_batch(8) == [[b"kept"]]


# -- edge-triggering and lost wake-ups -----------------------------------------


@pytest.mark.parametrize(
    ("sender_type", "receiver_type"),
    [(zmq.PUSH, zmq.PULL), (zmq.ROUTER, zmq.DEALER)],
    ids=["push-pull", "router-dealer"],
)
async def test_many_messages_arrive_in_order(
    make_socket: SocketFactory, sender_type: int, receiver_type: int
) -> None:
    count = 10_000
    # A ROUTER silently drops messages for a peer past the high-water mark
    # unless told to report it; with ROUTER_MANDATORY it says EAGAIN and our
    # send waits for POLLOUT, which is the backpressure under test.
    options = {"ROUTER_MANDATORY": 1} if sender_type == zmq.ROUTER else {}
    sender = make_socket(sender_type, **options)
    receiver = make_socket(receiver_type, IDENTITY=b"peer")
    receiver.raw.connect(bind(sender))
    prefix: list[bytes] = []
    if sender_type == zmq.ROUTER:
        # A ROUTER only knows the peer once it has said something.
        await receiver.send_multipart([b"hello"])
        prefix = [(await sender.receive_multipart())[0]]
    received: list[int] = []

    async def receive_all() -> None:
        for _ in range(count):
            frames = await receiver.receive_multipart()
            received.append(int(frames[0]))
            assert frames[1] == b"payload"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        for i in range(count):
            await sender.send_multipart([*prefix, str(i).encode(), b"payload"])
    assert received == list(range(count))


async def test_send_does_not_swallow_a_pending_receivers_wakeup(
    make_socket: SocketFactory,
) -> None:
    """The lost-wake-up case: a send consumes the FD edge a receiver sleeps on.

    A reply is allowed to land while the event loop is blocked (so the receiver
    cannot run); the next send on the same DEALER then processes libzmq's
    command queue, which clears the FD although a message is waiting. Unless
    the sender wakes the receiver, the receiver sleeps forever.
    """
    router, dealer = connected_pair(make_socket, zmq.ROUTER, zmq.DEALER)
    rounds = 10
    replies_in, replies_out = trio.open_memory_channel[list[bytes]](rounds)

    async def receiver() -> None:
        for _ in range(rounds):
            replies_in.send_nowait(await dealer.receive_multipart())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(rounds):
            await dealer.send_multipart([b"request", str(i).encode()])
            identity, *request = await router.receive_multipart()
            await router.send_multipart([identity, b"reply", request[1]])
            # Block the whole event loop while the reply travels, so the
            # receiver cannot react to the FD before the next send clears it.
            time.sleep(0.02)  # noqa: ASYNC251 -- deliberately blocking
            await dealer.send_multipart([b"unrelated"])
            await router.receive_multipart()
            with trio.fail_after(5):
                assert await replies_out.receive() == [b"reply", str(i).encode()]


async def test_concurrent_send_and_receive_on_one_socket_under_load(
    make_socket: SocketFactory,
) -> None:
    """A receiver and a high-water-mark-blocked sender wait on one socket's FD."""
    router, dealer = connected_pair(
        make_socket,
        zmq.ROUTER,
        zmq.DEALER,
        # ROUTER_MANDATORY: a full ROUTER blocks instead of dropping replies.
        bound_options={"RCVHWM": 1, "SNDHWM": 1, "ROUTER_MANDATORY": 1},
        connecting_options={"SNDHWM": 1, "RCVHWM": 1},
    )
    count = 3_000
    replies: list[bytes] = []

    async def receive_all() -> None:
        for _ in range(count):
            replies.append((await dealer.receive_multipart())[0])

    async def send_all() -> None:
        for i in range(count):
            await dealer.send_multipart([str(i).encode()])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        nursery.start_soon(send_all)
        # Let both block (sender on POLLOUT, receiver on POLLIN) before the
        # peer starts draining.
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(echo_router, router, count)
    assert replies == [str(i).encode() for i in range(count)]


async def test_concurrent_senders_do_not_interleave(make_socket: SocketFactory) -> None:
    router, dealer = connected_pair(
        make_socket,
        zmq.ROUTER,
        zmq.DEALER,
        bound_options={"RCVHWM": 2},
        connecting_options={"SNDHWM": 2},
    )
    senders, per_sender = 8, 200

    async def send_all(sender: int) -> None:
        for seq in range(per_sender):
            tag = f"{sender}:{seq}".encode()
            await dealer.send_multipart([b"head-" + tag, b"middle-" + tag, b"tail-" + tag])

    seen: dict[int, list[int]] = {sender: [] for sender in range(senders)}
    async with trio.open_nursery() as nursery:
        for sender in range(senders):
            nursery.start_soon(send_all, sender)
        await trio.testing.wait_all_tasks_blocked()  # senders pile up on the HWM
        for _ in range(senders * per_sender):
            _identity, head, middle, tail = await router.receive_multipart()
            tag = head.removeprefix(b"head-")
            assert (middle, tail) == (b"middle-" + tag, b"tail-" + tag)
            sender, seq = map(int, tag.split(b":"))
            seen[sender].append(seq)
    assert all(seqs == list(range(per_sender)) for seqs in seen.values())


async def test_second_receiver_is_refused(make_socket: SocketFactory) -> None:
    _router, dealer = connected_pair(make_socket, zmq.ROUTER, zmq.DEALER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dealer.receive_multipart)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await dealer.receive_multipart()
        nursery.cancel_scope.cancel()


# -- cancellation and closing --------------------------------------------------


async def test_cancelled_receive_loses_no_message(make_socket: SocketFactory) -> None:
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    with trio.move_on_after(0.05) as scope:
        await pull.receive_multipart()
    assert scope.cancelled_caught
    await push.send_multipart([b"first"])
    await push.send_multipart([b"second"])
    assert pull.raw.poll(5000) == zmq.POLLIN
    # A receive cancelled before it starts consumes nothing either.
    with trio.CancelScope() as scope:
        scope.cancel()
        await pull.receive_multipart()
    assert await pull.receive_multipart() == [b"first"]
    assert await pull.receive_multipart() == [b"second"]


async def test_close_wakes_a_waiting_receiver(make_socket: SocketFactory) -> None:
    _router, dealer = connected_pair(make_socket, zmq.ROUTER, zmq.DEALER)
    outcome: list[BaseException] = []

    async def receive() -> None:
        with pytest.raises(TransportClosedError) as info:
            await dealer.receive_multipart()
        outcome.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        dealer.close()
    assert len(outcome) == 1
    assert trio.current_time() - started < 1.0
    dealer.close()  # idempotent
    assert dealer.closed
    with pytest.raises(TransportClosedError):
        await dealer.receive_multipart()
    with pytest.raises(TransportClosedError):
        await dealer.send_multipart([b"x"])


async def test_close_wakes_a_blocked_sender_and_receiver(make_socket: SocketFactory) -> None:
    """One task is the FD watcher, the other parked: both must wake."""
    dealer = make_socket(zmq.DEALER, SNDHWM=1)
    dealer.raw.connect(f"{LOCALHOST}:1")  # nobody listens: sends queue up
    await dealer.send_multipart([b"fills the queue"])
    failures: list[str] = []

    async def expect_closed(name: str, fn: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(TransportClosedError):
            await fn()
        failures.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expect_closed, "receiver", dealer.receive_multipart)
        nursery.start_soon(expect_closed, "sender", lambda: dealer.send_multipart([b"blocked"]))
        await trio.testing.wait_all_tasks_blocked()
        dealer.close()
    assert sorted(failures) == ["receiver", "sender"]


async def test_zmq_errors_are_mapped(make_socket: SocketFactory) -> None:
    req = make_socket(zmq.REQ)
    req.raw.connect(f"{LOCALHOST}:1")
    with pytest.raises(TransportError) as info:
        await req.receive_multipart()  # EFSM: no request outstanding
    assert not isinstance(info.value, TransportClosedError)
    assert isinstance(info.value.__cause__, zmq.ZMQError)


async def test_context_termination_is_closed_error(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    sock = TrioZmqSocket(ctx.socket(zmq.PULL))
    sock.raw.setsockopt(zmq.LINGER, 0)
    bind(sock)
    async with trio.open_nursery() as nursery:
        # term() blocks until every socket is closed, hence the finally.
        nursery.start_soon(partial(trio.to_thread.run_sync, ctx.term, abandon_on_cancel=True))
        try:
            with pytest.raises(TransportClosedError):
                await sock.receive_multipart()
        finally:
            sock.close()


# -- kernel sockets -------------------------------------------------------------


def fake_kernel(
    make_socket: SocketFactory,
) -> tuple[dict[str, TrioZmqSocket], dict[str, str]]:
    """A kernel's side of the five channels, bound to random ports."""
    kernel = {
        "shell": make_socket(zmq.ROUTER),
        "control": make_socket(zmq.ROUTER),
        "stdin": make_socket(zmq.ROUTER),
        # XPUB (as ipykernel uses) lets the test see the subscription arrive.
        "iopub": make_socket(zmq.XPUB),
        "hb": make_socket(zmq.REP),
    }
    endpoints = {name: bind(sock) for name, sock in kernel.items()}
    return kernel, endpoints


async def test_open_kernel_sockets_against_fake_kernel(
    make_socket: SocketFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    kernel, endpoints = fake_kernel(make_socket)
    async with open_kernel_sockets(endpoints, identity=b"session-7", context=ctx) as sockets:
        for name in ("shell", "control", "stdin"):
            ours = getattr(sockets, name)
            assert ours.raw.getsockopt(zmq.TYPE) == zmq.DEALER
            await ours.send_multipart([name.encode()])
            identity, payload = await kernel[name].receive_multipart()
            assert (identity, payload) == (b"session-7", name.encode())
            await kernel[name].send_multipart([identity, b"reply-" + payload])
            assert await ours.receive_multipart() == [b"reply-" + name.encode()]

        # The subscription reaching the XPUB confirms the SUB is connected;
        # the very next publication must arrive.
        assert await kernel["iopub"].receive_multipart() == [b"\x01"]
        await kernel["iopub"].send_multipart([b"status", b"busy"])
        assert await sockets.iopub.receive_multipart() == [b"status", b"busy"]
        assert sockets.iopub.raw.getsockopt(zmq.RCVHWM) == 0

        for sock in sockets:
            assert sock.raw.getsockopt(zmq.LINGER) == 0
        assert sockets.hb.raw.getsockopt(zmq.TYPE) == zmq.REQ
    assert all(sock.closed for sock in sockets)


async def echo_once(rep: TrioZmqSocket) -> None:
    await rep.send_multipart(await rep.receive_multipart())


async def test_transport_watches_for_the_kernel_going_away(
    make_socket: SocketFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """``watch_disconnect``: ZeroMQ's disconnect event on hb is the kernel leaving."""
    transport = ZmqTransport(context=ctx)
    kernel, endpoints = fake_kernel(make_socket)
    async with transport.open_kernel_connection(
        endpoints, identity=b"s", watch_disconnect=True
    ) as sockets:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_once, kernel["hb"])
            with trio.fail_after(5):
                await heartbeat_once(sockets.hb)  # connected: the echo came back
        with trio.move_on_after(0.2) as still_there:
            await sockets.wait_disconnected()
        assert still_there.cancelled_caught
        kernel["hb"].close()
        with trio.fail_after(5):
            await sockets.wait_disconnected()
        assert sockets.hb_monitor is not None
    assert sockets.hb_monitor.closed


#: A flood larger than every buffer between a kernel's IOPub socket and ours
#: except our own receive queue: the kernel's queue (1000 messages) plus the
#: TCP buffers (tens of MB at most with Linux autotuning).
FLOOD_MESSAGES = 50_000  # messages
FLOOD_PAYLOAD = b"x" * 1024
#: How long the kernel side may wait to hand over one message.
FLOOD_SEND_TIMEOUT = 5000  # milliseconds


async def test_iopub_takes_a_flood_while_nobody_reads_it(
    make_socket: SocketFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Our IOPub socket never pushes back on the kernel, even while our event loop does not read.

    A kernel's PUB socket drops what its queue for us cannot hold; ours
    takes everything the moment it arrives, on libzmq's I/O thread, into an
    unbounded queue (docs/channels.md). Here the kernel side blocks instead
    of dropping (``XPUB_NODROP``), with a send timeout: a receive side that
    stopped taking messages would make it time out.
    """
    kernel, endpoints = fake_kernel(make_socket)
    publisher = kernel["iopub"].raw
    async with open_kernel_sockets(endpoints, identity=b"s", context=ctx) as sockets:
        assert await kernel["iopub"].receive_multipart() == [b"\x01"]
        publisher.setsockopt(zmq.XPUB_NODROP, 1)
        publisher.setsockopt(zmq.SNDTIMEO, FLOOD_SEND_TIMEOUT)

        def flood() -> None:
            for i in range(FLOOD_MESSAGES):
                publisher.send_multipart([b"%d" % i, FLOOD_PAYLOAD])

        # The event loop waits for the thread: nothing reads our socket meanwhile.
        await trio.to_thread.run_sync(flood)
        received = 0
        while received < FLOOD_MESSAGES:
            for number, payload in await sockets.iopub.receive_batch(1000):
                assert (number, payload) == (b"%d" % received, FLOOD_PAYLOAD)
                received += 1


async def test_open_kernel_sockets_closes_on_cancellation(
    make_socket: SocketFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    _kernel, endpoints = fake_kernel(make_socket)
    opened: list[KernelSockets] = []
    with trio.move_on_after(0.05):
        async with open_kernel_sockets(endpoints, identity=b"s", context=ctx) as sockets:
            opened.append(sockets)
            await sockets.shell.receive_multipart()  # never answered
    assert all(sock.closed for sock in opened[0])


async def test_open_kernel_sockets_rejects_bad_endpoints(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    endpoints = {name: f"{LOCALHOST}:{5000 + i}" for i, name in enumerate(CHANNELS)}
    with pytest.raises(ValueError, match="hb"):
        async with open_kernel_sockets(
            {k: v for k, v in endpoints.items() if k != "hb"}, identity=b"s", context=ctx
        ):
            pass  # pragma: no cover
    with pytest.raises(TransportError):
        async with open_kernel_sockets(
            {**endpoints, "iopub": "nonsense://"}, identity=b"s", context=ctx
        ):
            pass  # pragma: no cover


# -- heartbeat ------------------------------------------------------------------


async def test_heartbeat_round_trip(make_socket: SocketFactory) -> None:
    rep = make_socket(zmq.REP)
    hb = make_socket(zmq.REQ, REQ_RELAXED=1, REQ_CORRELATE=1)
    hb.raw.connect(bind(rep))

    async def echo_once() -> None:
        frames = await rep.receive_multipart()
        assert frames == [HEARTBEAT_PAYLOAD]
        await rep.send_multipart(frames)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_once)
        await heartbeat_once(hb)


async def test_heartbeat_after_a_missed_beat(
    make_socket: SocketFactory,
    ctx: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ping that is never answered, then one answered: the second succeeds.

    The kernel side is a ROUTER echo (ipykernel's heartbeat is a ROUTER
    device), which lets it drop the first ping outright.
    """
    caplog.set_level(logging.DEBUG, logger="kallichore.transport.zmq")
    kernel, endpoints = fake_kernel(make_socket)
    kernel["hb"].close()
    kernel["hb"] = make_socket(zmq.ROUTER)
    endpoints["hb"] = bind(kernel["hb"])
    async with open_kernel_sockets(endpoints, identity=b"s", context=ctx) as sockets:
        with trio.move_on_after(0.2) as missed:
            await heartbeat_once(sockets.hb, b"one")
        assert missed.cancelled_caught
        assert (await kernel["hb"].receive_multipart())[-1] == b"one"  # dropped

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_router, kernel["hb"], 1)
            await heartbeat_once(sockets.hb, b"two")
    assert "differs" not in caplog.text


async def test_late_reply_to_a_missed_beat_is_discarded(make_socket: SocketFactory) -> None:
    """REQ_CORRELATE: the echo of an abandoned ping never answers the next one."""
    rep = make_socket(zmq.REP)
    hb = make_socket(zmq.REQ, REQ_RELAXED=1, REQ_CORRELATE=1)
    hb.raw.connect(bind(rep))
    with trio.move_on_after(0.1):
        await heartbeat_once(hb, b"one")
    assert await rep.receive_multipart() == [b"one"]
    await rep.send_multipart([b"one"])  # too late
    await hb.send_multipart([b"two"])
    assert await rep.receive_multipart() == [b"two"]
    await rep.send_multipart([b"two"])
    assert await hb.receive_multipart() == [b"two"]


# -- JEP 66 registration socket -------------------------------------------------


@pytest.mark.parametrize("use_default_context", [False, True])
async def test_registration_socket(
    make_socket: SocketFactory,
    ctx: zmq.Context[zmq.Socket[bytes]],
    use_default_context: bool,
) -> None:
    kernel = make_socket(zmq.REQ)
    context = None if use_default_context else ctx
    async with open_registration_socket(context=context) as (registration, port):
        assert registration.raw.getsockopt(zmq.TYPE) == zmq.REP
        assert 0 < port < 65536
        kernel.raw.connect(f"{LOCALHOST}:{port}")
        await kernel.send_multipart([b"<IDS|MSG>", b"", b"handshake_request"])
        assert await registration.receive_multipart() == [
            b"<IDS|MSG>",
            b"",
            b"handshake_request",
        ]
        await registration.send_multipart([b"handshake_reply"])
    # Closed immediately after replying, yet the reply is delivered.
    assert registration.closed
    assert await kernel.receive_multipart() == [b"handshake_reply"]


async def test_wait_stdin_connected_proves_the_kernel_can_reach_us_on_stdin() -> None:
    """A ROUTER drops messages for peers not yet connected; start must wait.

    The kernel's stdin ROUTER binds late (as a slow kernel does). Until our
    DEALER's handshake completes, an ``input_request`` sent to our identity
    would be lost; once ``wait_stdin_connected`` returns it must arrive.
    """
    ctx = zmq.Context.instance()
    ports = {}
    kernel = {}
    for name, kind in (
        ("shell", zmq.ROUTER),
        ("control", zmq.ROUTER),
        ("iopub", zmq.PUB),
        ("hb", zmq.ROUTER),
    ):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        ports[name] = sock.bind_to_random_port("tcp://127.0.0.1")
        kernel[name] = sock
    # The port the kernel will bind later: held, bound but not listening, so
    # connections to it are refused and no other process on a busy machine
    # can take it in the meantime (a freed port could be).
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))
    ports["stdin"] = reserved.getsockname()[1]
    endpoints = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        async with open_kernel_sockets(endpoints, identity=b"session-x") as sockets:
            with trio.move_on_after(0.3) as early:
                await wait_stdin_connected(sockets)
            assert early.cancelled_caught, "nothing to connect to yet"
            reserved.close()
            stdin = ctx.socket(zmq.ROUTER)
            stdin.setsockopt(zmq.LINGER, 0)
            stdin.bind(endpoints["stdin"])
            kernel["stdin"] = stdin
            with trio.fail_after(5):
                await wait_stdin_connected(sockets)
            assert sockets.stdin_monitor is None
            stdin.send_multipart([b"session-x", b"input_request"])
            with trio.fail_after(5):
                assert await sockets.stdin.receive_multipart() == [b"input_request"]
    finally:
        reserved.close()
        for sock in kernel.values():
            sock.close(linger=0)


# -- taking messages without holding them across a checkpoint -----------------


async def test_receive_now_takes_what_is_queued_while_another_task_waits(
    make_socket: SocketFactory, nursery: trio.Nursery
) -> None:
    """A reader parked in wait_readable() and a task draining with receive_now()
    share one socket: every message is taken once, in order, and the reader
    wakes for the next one."""
    push, pull = connected_pair(make_socket, zmq.PULL, zmq.PUSH)[::-1]
    assert pull.receive_now() is None
    woken = trio.Event()

    async def reader() -> None:
        await pull.wait_readable()
        woken.set()

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    push.raw.send_multipart([b"one"])
    push.raw.send_multipart([b"two"])
    with trio.fail_after(5):
        await woken.wait()
    taken = []
    while (frames := pull.receive_now()) is not None:
        taken.append(frames)
    while len(taken) < 2:  # the second may still be on its way through ZeroMQ
        with trio.fail_after(5):
            await pull.wait_readable()
        frames = pull.receive_now()
        if frames is not None:
            taken.append(frames)
    assert taken == [[b"one"], [b"two"]]
    assert pull.receive_now() is None
    pull.close()
    with pytest.raises(TransportClosedError):
        pull.receive_now()
    with pytest.raises(TransportClosedError):
        await pull.wait_readable()
