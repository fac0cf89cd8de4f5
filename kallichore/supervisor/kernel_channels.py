"""A connected kernel's channels: the readers of its sockets, and sending to it.

One :class:`KernelChannels` per kernel run (see
:mod:`kallichore.supervisor.incarnation`), made once the run's sockets are
open. Its tasks, in the run's nursery::

    KernelChannels._read_iopub                     status tracking, forwarding
    KernelChannels._read_replies (shell/control/stdin)
                                                   (the iopub reader also forwards
                                                   queued shell replies before an idle)
    KernelChannels.monitor_heartbeat               offline / back online (/ gone)

What the channels do to their session goes through :class:`ChannelHost`.
Messages of requests the run sent itself (``kernel_info_request``, an
interrupt of its own) are answered here and never reach the client.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import orjson
import trio

from kallichore.errors import RemoteProtocolError, SessionStateError
from kallichore.session.spec import StartupEnvironment
from kallichore.session.state import SessionStatus
from kallichore.supervisor.dropped_messages import DroppedMessageLog
from kallichore.supervisor.liveness import AdoptedKernelProbe, monitor_heartbeat
from kallichore.supervisor.pumps import PumpGate
from kallichore.transport.base import KernelConnection, TransportError
from kallichore.wire.codec import Deserializer, ReplayWindow, Signer, serialize
from kallichore.wire.message import WireMessage, new_header, short_msg_id

__all__ = ["CHANNELS_TO_KERNEL", "ChannelHost", "KernelChannels", "LaunchSpec", "wire_header"]

#: How long to wait for an iopub message before asking for kernel_info again
#: to prove the iopub subscription (kernels without a JEP 65 welcome).
IOPUB_CONFIRM_INTERVAL = 0.25  # seconds
#: Most iopub messages taken from ZeroMQ per scheduler trip.
IOPUB_BATCH = 64  # messages
#: The same, when other tasks are waiting to run.
IOPUB_BATCH_SHARED = 3  # messages
#: Longest run of iopub processing between two scheduler passes.
IOPUB_SLICE = 0.001  # seconds

#: Most replies handled per wake-up of a reply reader.
REPLY_BATCH = 64  # messages

#: The channels a client (or the session) sends requests on.
CHANNELS_TO_KERNEL = ("shell", "control", "stdin")
# iopub message types that are output (may be dropped under overflow).
_DROPPABLE_IOPUB = frozenset(
    {
        "stream",
        "display_data",
        "update_display_data",
        "execute_result",
        "execute_input",
        "clear_output",
    }
)


class LaunchSpec(Protocol):
    """The parts of a session's spec a kernel run reads."""

    @property
    def session_id(self) -> str: ...
    @property
    def argv(self) -> tuple[str, ...]: ...
    @property
    def username(self) -> str: ...
    @property
    def startup_environment(self) -> StartupEnvironment: ...
    @property
    def startup_environment_arg(self) -> str | None: ...
    @property
    def connection_timeout(self) -> float: ...
    @property
    def protocol_version(self) -> str: ...


class ChannelHost(Protocol):
    """What a kernel's channels report to their session."""

    @property
    def status(self) -> SessionStatus: ...
    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def set_status(self, status: SessionStatus, reason: str | None, *, wake: bool = True) -> None:
        """Apply a status change and tell the client."""

    def forward(
        self, channel: str, msg: WireMessage, *, droppable: bool = False, wake: bool = True
    ) -> None:
        """A kernel message for the client (and for whoever watches its request)."""

    def wake_client(self) -> None:
        """Hand what was queued without a wake-up to the client now."""

    async def kernel_idle(self, parent_msg_type: str | None) -> None:
        """The kernel went idle (after the client heard it): follow-up work."""


def wire_header(spec: LaunchSpec, msg_type: str, msg_id: str) -> dict[str, Any]:
    """A header for a message from this session to its kernel."""
    return new_header(
        msg_type,
        session=spec.session_id,
        username=spec.username,
        version=spec.protocol_version,
        msg_id=msg_id,
    )


@attrs.define(eq=False)
class KernelChannels:
    """A connected kernel's sockets, their readers, and sending (see module docstring)."""

    host: ChannelHost
    spec: LaunchSpec
    sockets: KernelConnection
    #: Signs and checks this kernel's messages (an adopted one's own key).
    signer: Signer
    allow_unsigned: bool
    gate: PumpGate
    drops: DroppedMessageLog
    iopub_seen: trio.Event = attrs.field(factory=trio.Event, init=False)
    # msg_ids of requests we sent ourselves (kernel_info); their replies and
    # busy/idle are not forwarded.
    internal: set[str] = attrs.field(factory=set, init=False)
    replies: dict[str, trio.MemorySendChannel[WireMessage]] = attrs.field(factory=dict, init=False)
    send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, init=False)
    # Parent msg_id of the last reply forwarded from shell.
    last_shell_reply_to: str | None = attrs.field(default=None, init=False)
    # One deserializer per channel (each keeps its own replay window).
    _deserializers: dict[str, Deserializer] = attrs.field(factory=dict, init=False)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.host.log

    def close(self) -> None:
        """Close the sockets (wakes every reader)."""
        self.sockets.close()

    async def monitor_heartbeat(
        self, on_gone: Callable[[], None], probe: AdoptedKernelProbe | None = None
    ) -> None:
        """Follow the kernel's heartbeat (see :mod:`kallichore.supervisor.liveness`)."""
        beat = (self.drops.flush_if_due,)
        await monitor_heartbeat(
            self.sockets.hb, self.host, probe=probe, on_gone=on_gone, on_beat=beat
        )

    async def connect(self, nursery: trio.Nursery) -> dict[str, Any]:
        """Start the readers, then get kernel_info with a confirmed iopub subscription."""
        nursery.start_soon(self._read_iopub)
        for channel in CHANNELS_TO_KERNEL:
            nursery.start_soon(self._read_replies, channel)
        while True:
            reply = await self._request("shell", "kernel_info_request", {})
            if not self.iopub_seen.is_set():
                with trio.move_on_after(IOPUB_CONFIRM_INTERVAL):
                    await self.iopub_seen.wait()
            if self.iopub_seen.is_set():
                # The kernel can reach us on every channel: shell and iopub
                # are proven, stdin is proven by its handshake.
                await self.sockets.wait_stdin_connected()
                return dict(reply.content_json())

    async def _request(self, channel: str, msg_type: str, content: dict[str, Any]) -> WireMessage:
        """Send a request of our own and wait for its reply (caller bounds it)."""
        msg_id = short_msg_id()
        send, receive = trio.open_memory_channel[WireMessage](1)
        self.internal.add(msg_id)
        self.replies[msg_id] = send
        try:
            await self.send(channel, msg_type, content, msg_id=msg_id)
            return await receive.receive()
        finally:
            self.replies.pop(msg_id, None)

    # ----------------------------------------------------------- the pumps

    def _deserializer(self, channel: str) -> Deserializer:
        deserializer = self._deserializers.get(channel)
        if deserializer is None:
            deserializer = Deserializer(
                self.signer, ReplayWindow(), accept_unsigned=self.allow_unsigned
            )
            self._deserializers[channel] = deserializer
        return deserializer

    async def _read_iopub(self) -> None:
        iopub = self.sockets.iopub
        gate = self.gate
        flooded = False
        while True:
            await gate.wait_turn(busy=flooded)
            # A batch per wake-up: under a flood this is one scheduler trip
            # and one client wake-up per batch, not per message. The batch is
            # small when other tasks are waiting to run (other floods, an HTTP
            # request), so that one pass of the scheduler stays short.
            # (current_statistics() walks trio's I/O registrations: asked
            # only under a flood, when the last batch was not a trickle.)
            busy = flooded and trio.lowlevel.current_statistics().tasks_runnable > 0
            batch = await iopub.receive_batch(IOPUB_BATCH_SHARED if busy else IOPUB_BATCH)
            flooded = len(batch) >= IOPUB_BATCH_SHARED
            await self._handle_iopub_batch(batch)
            self.host.wake_client()

    async def _handle_iopub_batch(self, batch: list[list[bytes]]) -> None:
        deserializer = self._deserializer("iopub")
        gate = self.gate
        slice_end = time.perf_counter() + IOPUB_SLICE
        for frames in batch:
            if time.perf_counter() > slice_end or gate.holding():
                # A batch that takes long (a loaded machine, big messages)
                # is finished in slices, and an HTTP request that arrives
                # meanwhile goes first; nothing is dropped in between.
                self.host.wake_client()
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()
                    await gate.wait_turn()
                slice_end = time.perf_counter() + IOPUB_SLICE
            try:
                msg = deserializer.receive_frames(frames)
            except RemoteProtocolError as exc:
                self.drops.record("iopub", str(exc))
                continue
            self.iopub_seen.set()
            msg_type = msg.msg_type
            if msg_type == "status":
                await self._on_status(msg)
            elif msg_type != "iopub_welcome":
                droppable = msg_type in _DROPPABLE_IOPUB
                self.host.forward("iopub", msg, droppable=droppable, wake=False)

    async def _on_status(self, msg: WireMessage) -> None:
        if msg.parent_msg_id in self.internal:
            return
        state = _execution_state(msg)
        idle = state == "idle"
        if idle and msg.parent_msg_id != self.last_shell_reply_to:
            self._forward_queued_replies()
        # Queued without a wake-up: the event and the status message itself
        # go out together, in one write.
        if state == "busy":
            self.host.set_status(SessionStatus.BUSY, msg.parent_msg_type, wake=False)
        elif idle:
            self.host.set_status(SessionStatus.IDLE, msg.parent_msg_type, wake=False)
        self.host.forward("iopub", msg, wake=False)
        if idle:
            # The client hears "idle" before any bookkeeping
            # (reading the kernel's cwd takes ~100 us).
            self.host.wake_client()
            await self.host.kernel_idle(msg.parent_msg_type)

    def _forward_queued_replies(self) -> None:
        """Forward the shell replies already queued, before an idle status goes out.

        The kernel sends a request's reply before its idle status, and
        clients read "idle" as the end. The reply comes on another socket:
        whatever of it is queued there now is forwarded first, from here.
        The shell reader takes and forwards each message with no checkpoint
        in between, so it never holds one back, and replies keep their order.
        """
        # A closed socket is the shell reader's to report.
        with contextlib.suppress(TransportError):
            self._take_replies("shell")

    async def _read_replies(self, channel: str) -> None:
        sock = self.sockets.dealer(channel)
        while True:
            await sock.wait_readable()
            self._take_replies(channel)

    def _take_replies(self, channel: str) -> None:
        """Handle the messages queued on ``channel`` now (a bounded batch), without waiting."""
        sock = self.sockets.dealer(channel)
        deserializer = self._deserializer(channel)
        for _ in range(REPLY_BATCH):
            frames = sock.receive_now()
            if frames is None:
                return
            try:
                msg = deserializer.receive_frames(frames)
            except RemoteProtocolError as exc:
                self.drops.record(channel, str(exc))
                continue
            self._on_reply(channel, msg)

    def _on_reply(self, channel: str, msg: WireMessage) -> None:
        waiter = self.replies.get(msg.parent_msg_id or "")
        if waiter is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                waiter.send_nowait(msg)
            return
        if msg.parent_msg_id in self.internal:
            return
        self.host.forward(channel, msg)
        if channel == "shell":
            self.last_shell_reply_to = msg.parent_msg_id

    # ------------------------------------------------------- to the kernel

    def _header(self, msg_type: str, msg_id: str) -> dict[str, Any]:
        return wire_header(self.spec, msg_type, msg_id)

    async def send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | bytes,
        *,
        msg_id: str | None = None,
        parent: dict[str, Any] | None = None,
        metadata: bytes = b"{}",
        buffers: tuple[bytes, ...] = (),
    ) -> None:
        """Sign and send one message to the kernel on ``channel``."""
        msg = WireMessage(
            header=self._header(msg_type, msg_id or short_msg_id()),
            parent_header=parent or {},
            metadata=metadata,
            content=content if isinstance(content, bytes) else orjson.dumps(content),
            buffers=buffers,
        )
        sock = self.sockets.dealer(channel)
        lock = self.send_lock
        try:
            lock.acquire_nowait()  # the usual case: no scheduler pass on the way in
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await sock.send_multipart(serialize(msg, self.signer))
        finally:
            lock.release()

    async def send_client_message(self, message: dict[str, Any]) -> None:
        """Send a client's message (a Jupyter message object) to the kernel."""
        header = message["header"]
        parent = message.get("parent_header")
        if isinstance(parent, dict) and parent.get("msg_id"):
            parent_header: dict[str, Any] | None = self._header(
                str(parent.get("msg_type", "")), str(parent["msg_id"])
            )
        else:
            parent_header = None
        try:
            buffers = tuple(
                base64.b64decode(b, validate=True) for b in message.get("buffers") or ()
            )
        except (ValueError, TypeError):
            self.log.warning("dropping a client message with invalid base64 buffers")
            return
        try:
            await self.send(
                str(message.get("channel", "shell")),
                str(header["msg_type"]),
                orjson.dumps(message.get("content", {})),
                msg_id=str(header.get("msg_id") or short_msg_id()),
                parent=parent_header,
                metadata=orjson.dumps(message.get("metadata") or {}),
                buffers=buffers,
            )
        except TransportError as exc:
            # The kernel is going away; its exit is being handled elsewhere.
            self.log.warning("could not send a client message to the kernel: %s", exc)

    async def send_internal_interrupt(self) -> None:
        """An ``interrupt_request`` of our own (its reply and busy/idle are not the client's)."""
        interrupt_id = short_msg_id()
        self.internal.add(interrupt_id)
        with contextlib.suppress(TransportError, SessionStateError):
            await self.send("control", "interrupt_request", {}, msg_id=interrupt_id)


def _execution_state(msg: WireMessage) -> str | None:
    try:
        content = msg.content_json()
    except orjson.JSONDecodeError:
        return None
    state = content.get("execution_state") if isinstance(content, dict) else None
    return state if isinstance(state, str) else None
