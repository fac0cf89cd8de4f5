"""In-memory kernel sockets: the transport seam without ZeroMQ, pure trio.

For tests that run a supervisor against a fake kernel under trio's autojump
clock (:class:`trio.testing.MockClock`): nothing here does I/O, uses a thread
or reads the wall clock, so virtual time jumps whenever every task waits, and
the same test does the same thing on every run.

Theory of operation
-------------------

A :class:`MemoryNetwork` is a namespace of endpoint strings
(``tcp://127.0.0.1:5555``, compared as written). A fake kernel *binds*
sockets there; the supervisor's :class:`MemoryTransport` *connects* to them.
As in ZeroMQ, the order does not matter: a socket may connect before anything
is bound. Its messages wait in the socket until a binder appears (then they
are handed over in order), and it reconnects by itself when a binder goes
away and another binds the same endpoint.

Each socket behaves as the ZeroMQ type of the same name, as far as a kernel
session can tell:

* ``DEALER`` → ``ROUTER``: the router receives ``[identity, *frames]`` and
  routes a reply by its first frame; a reply to an unknown identity is
  dropped (ZeroMQ's default).
* ``PUB`` → ``SUB``: every connected subscriber gets every message (always
  subscribed to everything). A message published while no subscriber is
  connected is lost (ZeroMQ's "slow joiner"). A ``PUB`` may be given a
  high-water mark: a subscriber already holding that many unread messages
  misses the message (counted in :attr:`MemorySocket.dropped`), as a real
  kernel's ``PUB`` drops for a slow subscriber. Without one (the default,
  what :func:`~kallichore.transport.zmq.open_kernel_sockets` asks of ZeroMQ
  with ``RCVHWM = 0``) nothing is ever dropped.
* ``REQ`` (relaxed, correlated, as the heartbeat socket) → ``ROUTER`` or
  ``REP``: each request carries ``[request_id, b""]`` in front; a reply whose
  id is not the latest request's is discarded, and a request may follow an
  unanswered one.
* ``REP``: receives a request without its envelope, and its next send goes to
  whoever sent that request, envelope restored.

Sends towards a bound socket (``DEALER``, ``REQ``) wait while
``send_hwm`` of their messages are still unread on the other side (or
waiting for a binder), so a sender never drops; sends from a bound socket
(``ROUTER``, ``PUB``, ``REP``) never wait.

Closing a bound socket (the kernel dies) disconnects its peers: messages it
had not read are lost, peers see :meth:`MemorySocket.wait_disconnected`
return, and whatever peers had already received stays readable.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from kallichore.transport.base import (
    CHANNELS,
    FrameSocket,
    KernelConnection,
    KernelTransport,
    TransportClosedError,
    TransportError,
)

__all__ = [
    "DEFAULT_SEND_HWM",
    "FIRST_PORT",
    "MemoryKernelConnection",
    "MemoryNetwork",
    "MemorySocket",
    "MemoryTransport",
    "SocketKind",
]

#: Unread messages a connecting socket may have in flight before a send waits.
DEFAULT_SEND_HWM = 1000  # messages
#: First port :meth:`MemoryNetwork.pick_port` hands out.
FIRST_PORT = 40000


class SocketKind(enum.Enum):
    """The ZeroMQ socket types the Jupyter protocol uses."""

    DEALER = "DEALER"
    ROUTER = "ROUTER"
    PUB = "PUB"
    SUB = "SUB"
    REQ = "REQ"
    REP = "REP"


# Kinds that bind (the kernel's side, and the registration socket).
_BINDERS = frozenset({SocketKind.ROUTER, SocketKind.PUB, SocketKind.REP})


@attrs.define(eq=False)
class _Entry:
    """A message waiting in an inbox, and the socket that sent it."""

    sender: MemorySocket | None
    frames: list[bytes]


@attrs.define(eq=False, repr=False)
class MemorySocket:
    """One in-memory socket; satisfies :class:`~kallichore.transport.base.FrameSocket`.

    Made by :meth:`MemoryNetwork.bind` or :meth:`MemoryNetwork.connect`. The
    concurrency contract is the seam's: one receiving task, any number of
    senders (served in FIFO order).
    """

    kind: SocketKind
    endpoint: str
    _network: MemoryNetwork = attrs.field(alias="network")
    #: Routing identity (a connecting socket's, as a ROUTER peer sees it).
    identity: bytes = b""
    #: DEALER/REQ: unread messages in flight before a send waits.
    #: PUB: unread messages a subscriber may hold before it misses one
    #: (``None``: never drop).
    send_hwm: int | None = DEFAULT_SEND_HWM
    #: Messages a PUB could not hand to a subscriber over its high-water mark.
    dropped: int = attrs.field(default=0, init=False)
    _inbox: deque[_Entry] = attrs.field(factory=deque, init=False)
    # Receivers wait here for the inbox to fill (or the socket to close).
    _readable: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    # The sender holding _send_lock waits here for room (or the close).
    _writable: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, init=False)
    _receiving: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    # Our messages not yet read by the peer (or still in _pending).
    _in_flight: int = attrs.field(default=0, init=False)
    # A connecting socket's messages sent while no binder was there.
    _pending: deque[list[bytes]] = attrs.field(factory=deque, init=False)
    # A connecting socket's binder, while linked.
    _peer: MemorySocket | None = attrs.field(default=None, init=False)
    # A binding socket's connected peers, in connection order.
    _peers: list[MemorySocket] = attrs.field(factory=list, init=False)
    # Set on the first link to a binder / when a link is lost after that.
    _connected: trio.Event = attrs.field(factory=trio.Event, init=False)
    _disconnected: trio.Event = attrs.field(factory=trio.Event, init=False)
    # REQ: ids of requests; the reply to the latest one is the only one wanted.
    _request_ids: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _expected: bytes | None = attrs.field(default=None, init=False)
    # REP: who sent the request being answered, and its envelope.
    _reply_to: tuple[MemorySocket | None, list[bytes]] | None = attrs.field(
        default=None, init=False
    )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("linked" if self.is_linked() else "unlinked")
        return f"<MemorySocket {self.kind.value} {self.endpoint} {state}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def is_linked(self) -> bool:
        """Whether a connecting socket has a binder now (or a binder has peers)."""
        return self._peer is not None or bool(self._peers)

    # ------------------------------------------------------------- sending

    async def send_multipart(self, frames: Sequence[bytes]) -> None:
        """Send one multipart message; wait while ``send_hwm`` messages are in flight.

        **Cancellation:** safe: if cancelled, nothing was sent.

        **Errors:** :class:`TransportClosedError` when closed (also while
        waiting); :class:`TransportError` for a ``SUB``, which cannot send,
        and for a ``REP`` with no request to answer.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        message = list(frames)
        waited = False
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case: no scheduler pass on the way in
        except trio.WouldBlock:
            waited = True
            await lock.acquire()
        try:
            while not self._has_room():
                waited = True
                await self._writable.park()
                self._check_open()
            self._check_open()
            self._send_now(message)
        finally:
            lock.release()
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _has_room(self) -> bool:
        if self.kind not in (SocketKind.DEALER, SocketKind.REQ) or self.send_hwm is None:
            return True
        return self._in_flight < self.send_hwm

    def _send_now(self, frames: list[bytes]) -> None:
        kind = self.kind
        if kind is SocketKind.REQ:
            request_id = str(next(self._request_ids)).encode()
            self._expected = request_id
            frames = [request_id, b"", *frames]
        if kind in (SocketKind.DEALER, SocketKind.REQ):
            self._in_flight += 1
            if self._peer is None:
                self._pending.append(frames)
            else:
                self._peer._accept(self, frames)
        elif kind is SocketKind.ROUTER:
            self._route(frames)
        elif kind is SocketKind.PUB:
            self._publish(frames)
        elif kind is SocketKind.REP:
            self._reply(frames)
        else:
            raise TransportError(f"a {kind.value} socket cannot send")

    def _route(self, frames: list[bytes]) -> None:
        if not frames:
            return
        for peer in reversed(self._peers):  # the latest connection wins
            if peer.identity == frames[0]:
                peer._deliver(None, frames[1:])
                return

    def _publish(self, frames: list[bytes]) -> None:
        for peer in self._peers:
            if self.send_hwm is not None and len(peer._inbox) >= self.send_hwm:
                self.dropped += 1
            else:
                peer._deliver(None, list(frames))

    def _reply(self, frames: list[bytes]) -> None:
        if self._reply_to is None:
            raise TransportError("a REP socket must receive a request before it replies")
        requester, envelope = self._reply_to
        self._reply_to = None
        if requester is not None and requester._peer is self:
            requester._deliver(None, [*envelope, *frames])

    def _accept(self, sender: MemorySocket, frames: list[bytes]) -> None:
        """A binder takes a message from a connected peer."""
        if self.kind is SocketKind.ROUTER:
            frames = [sender.identity, *frames]
        self._deliver(sender, frames)

    def _deliver(self, sender: MemorySocket | None, frames: list[bytes]) -> None:
        self._inbox.append(_Entry(sender, frames))
        self._readable.unpark_all()

    # ----------------------------------------------------------- receiving

    async def receive_multipart(self) -> list[bytes]:
        """Wait for the next message and return its frames.

        **Cancellation:** safe: if cancelled, no message was consumed.

        **Errors:** :class:`TransportClosedError` when closed (also while
        waiting); :class:`trio.BusyResourceError` if another task receives.
        """
        (frames,) = await self.receive_batch(1)
        return frames

    async def receive_batch(self, max_messages: int) -> list[list[bytes]]:
        """Wait for at least one message; return up to ``max_messages`` queued ones.

        Same cancellation guarantee and errors as :meth:`receive_multipart`.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                self._check_open()
                batch = self._take(max_messages)
                if batch:
                    break
                waited = True
                await self._readable.park()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return batch
        finally:
            self._receiving = False

    def _take(self, max_messages: int) -> list[list[bytes]]:
        batch: list[list[bytes]] = []
        while self._inbox and len(batch) < max_messages:
            entry = self._inbox.popleft()
            sender = entry.sender
            if sender is not None:
                sender._in_flight -= 1
                sender._writable.unpark_all()
            frames = self._unwrap(entry)
            if frames is not None:
                batch.append(frames)
        return batch

    def _unwrap(self, entry: _Entry) -> list[bytes] | None:
        """The frames a receiver of this kind sees (``None``: discarded)."""
        frames = entry.frames
        if self.kind is SocketKind.REQ:
            if len(frames) < 2 or frames[0] != self._expected or frames[1]:
                return None  # a late reply to an abandoned request
            self._expected = None
            return frames[2:]
        if self.kind is SocketKind.REP:
            try:
                split = frames.index(b"") + 1
            except ValueError:
                split = 0
            self._reply_to = (entry.sender, frames[:split])
            return frames[split:]
        return frames

    async def wait_readable(self) -> None:
        """Wait until a message is queued; take it with :meth:`receive_now`.

        **Cancellation:** safe: consumes nothing.

        **Errors:** :class:`TransportClosedError` when closed (also while waiting).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            self._check_open()
            if self._inbox:
                break
            waited = True
            await self._readable.park()
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def receive_now(self) -> list[bytes] | None:
        """The next queued message, or ``None``; never waits nor checkpoints.

        **Errors:** :class:`TransportClosedError` when closed.
        """
        self._check_open()
        batch = self._take(1)
        return batch[0] if batch else None

    # ----------------------------------------------------- links and close

    async def wait_connected(self) -> None:
        """Wait until a connecting socket has been linked to a binder once."""
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        """Wait until a connecting socket lost a binder it was linked to."""
        await self._disconnected.wait()

    def close(self) -> None:
        """Close now (idempotent); blocked tasks get :class:`TransportClosedError`.

        A binder's unread messages are lost and its peers are disconnected; a
        connecting socket's unsent messages are discarded (``LINGER = 0``).
        """
        if self._closed:
            return
        self._closed = True
        self._network._forget(self)
        if self._peer is not None:
            self._peer._peers.remove(self)
            self._peer = None
        for peer in self._peers:
            peer._unlink()
        self._peers.clear()
        for entry in self._inbox:
            if entry.sender is not None:
                entry.sender._in_flight -= 1
                entry.sender._writable.unpark_all()
        self._inbox.clear()
        self._pending.clear()
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _link(self, binder: MemorySocket) -> None:
        """Connect to ``binder``, handing over what waited for it."""
        self._peer = binder
        binder._peers.append(self)
        while self._pending:
            binder._accept(self, self._pending.popleft())
        self._connected.set()

    def _unlink(self) -> None:
        """Our binder closed: messages in flight are lost; reconnect when one binds."""
        self._peer = None
        self._disconnected.set()
        self._network._wait_for_binder(self)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self.kind.value} socket {self.endpoint} is closed")


@attrs.define(eq=False)
class MemoryNetwork:
    """A namespace of in-memory endpoints, shared by a supervisor and its fake kernels."""

    _bound: dict[str, MemorySocket] = attrs.field(factory=dict, init=False)
    # Connecting sockets whose endpoint has no binder (yet, or any more).
    _waiting: dict[str, list[MemorySocket]] = attrs.field(factory=dict, init=False)
    _ports: Iterator[int] = attrs.field(factory=lambda: itertools.count(FIRST_PORT), init=False)

    def pick_port(self) -> int:
        """A port no endpoint of this network has used yet."""
        return next(self._ports)

    def is_bound(self, endpoint: str) -> bool:
        """Whether a socket is bound at ``endpoint``."""
        return endpoint in self._bound

    def bind(self, kind: SocketKind, endpoint: str, *, send_hwm: int | None = None) -> MemorySocket:
        """Bind a ``ROUTER``, ``PUB`` or ``REP`` at ``endpoint``; waiting peers connect now.

        **Errors:** :class:`TransportError` when ``endpoint`` is taken
        ("Address already in use") or ``kind`` does not bind.
        """
        if kind not in _BINDERS:
            raise TransportError(f"a {kind.value} socket connects; it does not bind")
        if endpoint in self._bound:
            raise TransportError(f"Address already in use: {endpoint}")
        sock = MemorySocket(kind, endpoint, network=self, send_hwm=send_hwm)
        self._bound[endpoint] = sock
        for peer in self._waiting.pop(endpoint, []):
            peer._link(sock)
        return sock

    def connect(
        self,
        kind: SocketKind,
        endpoint: str,
        *,
        identity: bytes = b"",
        send_hwm: int | None = DEFAULT_SEND_HWM,
    ) -> MemorySocket:
        """Connect a ``DEALER``, ``SUB`` or ``REQ`` to ``endpoint``, bound or not (yet).

        **Errors:** :class:`TransportError` if ``kind`` binds.
        """
        if kind in _BINDERS:
            raise TransportError(f"a {kind.value} socket binds; it does not connect")
        sock = MemorySocket(kind, endpoint, network=self, identity=identity, send_hwm=send_hwm)
        binder = self._bound.get(endpoint)
        if binder is None:
            self._wait_for_binder(sock)
        else:
            sock._link(binder)
        return sock

    def _wait_for_binder(self, sock: MemorySocket) -> None:
        self._waiting.setdefault(sock.endpoint, []).append(sock)

    def _forget(self, sock: MemorySocket) -> None:
        if self._bound.get(sock.endpoint) is sock:
            del self._bound[sock.endpoint]
        waiting = self._waiting.get(sock.endpoint)
        if waiting is not None and sock in waiting:
            waiting.remove(sock)
            if not waiting:
                del self._waiting[sock.endpoint]


@attrs.define(eq=False)
class MemoryKernelConnection:
    """A kernel's five in-memory sockets; satisfies :class:`~kallichore.transport.base.KernelConnection`."""

    shell: MemorySocket
    control: MemorySocket
    stdin: MemorySocket
    iopub: MemorySocket
    hb: MemorySocket
    watch_disconnect: bool = False

    def dealer(self, channel: str) -> MemorySocket:
        """The DEALER of ``channel`` (``shell``, ``control`` or ``stdin``).

        **Errors:** ``ValueError`` for any other channel.
        """
        if channel in ("shell", "control", "stdin"):
            sock: MemorySocket = getattr(self, channel)
            return sock
        raise ValueError(f"no kernel socket to send on for channel {channel!r}")

    async def wait_stdin_connected(self) -> None:
        """Wait until the kernel has bound its stdin endpoint (our DEALER is linked)."""
        await self.stdin.wait_connected()

    async def wait_disconnected(self) -> None:
        """Wait until the kernel's heartbeat endpoint went away after being reached.

        **Errors:** ``RuntimeError`` unless opened with ``watch_disconnect=True``.
        """
        if not self.watch_disconnect:
            raise RuntimeError("this kernel connection was opened without watch_disconnect")
        await self.hb.wait_disconnected()

    def close(self) -> None:
        """Close all five sockets (idempotent)."""
        for channel in CHANNELS:
            getattr(self, channel).close()


@attrs.frozen
class MemoryTransport:
    """A :class:`~kallichore.transport.base.KernelTransport` on a :class:`MemoryNetwork`."""

    network: MemoryNetwork = attrs.field(factory=MemoryNetwork)

    @contextlib.asynccontextmanager
    async def open_kernel_connection(
        self,
        endpoints: Mapping[str, str],
        *,
        identity: bytes,
        watch_disconnect: bool = False,
    ) -> AsyncIterator[MemoryKernelConnection]:
        """Connect DEALERs (shell, control, stdin), a SUB (iopub) and a REQ (hb).

        **Errors:** ``ValueError`` for a missing endpoint.
        """
        missing = [name for name in CHANNELS if name not in endpoints]
        if missing:
            raise ValueError(f"missing endpoints for kernel channels: {', '.join(missing)}")
        await trio.lowlevel.checkpoint()
        net = self.network
        connection = MemoryKernelConnection(
            shell=net.connect(SocketKind.DEALER, endpoints["shell"], identity=identity),
            control=net.connect(SocketKind.DEALER, endpoints["control"], identity=identity),
            stdin=net.connect(SocketKind.DEALER, endpoints["stdin"], identity=identity),
            iopub=net.connect(SocketKind.SUB, endpoints["iopub"]),
            hb=net.connect(SocketKind.REQ, endpoints["hb"], identity=identity),
            watch_disconnect=watch_disconnect,
        )
        try:
            yield connection
        finally:
            connection.close()

    @contextlib.asynccontextmanager
    async def open_registration(
        self, ip: str = "127.0.0.1"
    ) -> AsyncIterator[tuple[MemorySocket, int]]:
        """Bind a REP at ``tcp://{ip}:{port}`` with a fresh port; yields ``(socket, port)``."""
        await trio.lowlevel.checkpoint()
        port = self.network.pick_port()
        sock = self.network.bind(SocketKind.REP, f"tcp://{ip}:{port}")
        try:
            yield sock, port
        finally:
            sock.close()


if TYPE_CHECKING:

    def _satisfies_frame_socket(sock: MemorySocket) -> FrameSocket:
        return sock

    def _satisfies_kernel_connection(connection: MemoryKernelConnection) -> KernelConnection:
        return connection

    def _satisfies_kernel_transport(transport: MemoryTransport) -> KernelTransport:
        return transport
