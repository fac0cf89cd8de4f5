"""Client fan-out: the session's frames on their way to its one attached client.

Everything a session produces for its client (Jupyter messages, kernel
events) is put here as an encoded frame. The frames wait in a bounded
:class:`~kallichore.session.outbox.Outbox` until the attached client takes
them; while none is attached they wait for the next one. One client at a
time: a newer one takes over and the older one is told to go.

The fan-out is the only writer to a client connection. A carrier (the
channel bridge, :mod:`kallichore.channels.bridge`) hands its connection to
:meth:`ClientFanout.deliver` and gets it back when delivery ends; in
between, every frame reaches the connection from here, in outbox order:

* while the delivery task waits for frames, new frames are written straight
  through from :meth:`ClientFanout.wake` (on the producer's task) if the
  connection takes them without waiting -- a trickle of output then costs
  no task switch at all;
* everything else (a full socket buffer, a flood, a flush) is written by
  the delivery task, which the same :meth:`~ClientFanout.wake` wakes.

Both paths take frames from the outbox in order and commit them to the
connection before anything else can run, so the order the frames were put
in is the order the client reads them. Frames taken but not written (the
connection failed, the client asked to close, or a cancellation came during
a write) go back to the front of the outbox, so the next client gets them.
The session never waits for the client: the outbox is bounded and its
overflow policy (drop the oldest output, report ``outputDropped``) lives in
:mod:`kallichore.session.outbox`.

An in-process client (:class:`kallichore.embed.SessionChannel`) reads
instead with :meth:`ClientFanout.next_frames`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

import attrs
import orjson
import trio

from kallichore.session.outbox import Outbox
from kallichore.supervisor.pumps import OpenGate, PumpGate

__all__ = [
    "TAKEOVER_NOTICE",
    "ChannelClosedError",
    "ClientAttachment",
    "ClientConnection",
    "ClientFanout",
]

#: What a client that was taken over receives before its connection closes.
TAKEOVER_NOTICE = orjson.dumps(
    {"kind": "kernel", "clientDisconnected": "Another client is connecting to this session."}
)


class ChannelClosedError(Exception):
    """The connection can no longer carry frames (peer gone, or closing)."""


class ClientConnection(Protocol):
    """What the fan-out writes to: one client's connection, whatever carries it."""

    async def send_frames(self, frames: Sequence[bytes]) -> int:
        """Send the first of ``frames`` (at least one) as text messages.

        Returns how many were committed: written, or certain to be written
        before anything else. Raises :class:`ChannelClosedError` having
        committed none of them; if cancelled, none was committed either.
        """

    async def flush(self) -> None:
        """Finish writing what :meth:`send_frames` committed.

        Raises :class:`ChannelClosedError`; safe to cancel (the rest is
        written before anything else).
        """

    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` can ever write."""

    def write_now(self, frames: Sequence[bytes]) -> int:
        """Like :meth:`send_frames`, synchronously: 0 if it would have to wait.

        Never raises: a failed connection is left for :meth:`send_frames`
        to report.
        """

    def needs_flush(self) -> bool:
        """Whether committed bytes are still unwritten."""


@attrs.define(eq=False)
class ClientAttachment:
    """One attached client (see :meth:`ClientFanout.attach`)."""

    socket_path: str | None = None
    #: Set when a newer client took over; the connection must close.
    kicked: bool = False
    # The connection being delivered to (ClientFanout.deliver), if any.
    _conn: ClientConnection | None = attrs.field(default=None, init=False)
    # Set while delivery waits for frames: new frames may be written straight through.
    _idle: bool = attrs.field(default=False, init=False)
    # Set by stop_delivery(): delivery ends at the next frame boundary.
    _stopping: bool = attrs.field(default=False, init=False)
    # Scope around delivery's wait for frames (never around a write), while waiting.
    _wait_scope: trio.CancelScope | None = attrs.field(default=None, init=False)

    def stop_delivery(self) -> None:
        """Make :meth:`ClientFanout.deliver` return at the next frame boundary.

        For a client that ended its side: frames already committed are
        written, everything else stays queued for the next client.
        """
        self._stopping = True
        self._idle = False  # nothing more straight through
        if self._wait_scope is not None:
            self._wait_scope.cancel()


@attrs.define(eq=False)
class ClientFanout:
    """The outbox, the one client attached to it, and every write to that client."""

    outbox: Outbox = attrs.field(factory=Outbox)
    #: Delivery steps aside while the server handles a request.
    gate: PumpGate = attrs.field(factory=OpenGate)
    #: Woken whenever the outbox gains a frame (or the client changes).
    outbox_changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    # The attached client, if any (one at a time; a newer one takes over).
    _client: ClientAttachment | None = attrs.field(default=None, init=False)

    @property
    def connected(self) -> bool:
        """Whether a client is attached."""
        return self._client is not None

    @property
    def socket_path(self) -> str | None:
        """The channel socket the attached client came through, if any."""
        return self._client.socket_path if self._client is not None else None

    # ---------------------------------------------------------------- producers

    def put(self, frame: bytes, *, droppable: bool, wake: bool = True) -> None:
        """Queue a frame; with ``wake=False`` it goes out at the next :meth:`wake`."""
        self.outbox.put(frame, droppable=droppable)
        if wake:
            self.wake()

    def wake(self) -> None:
        """Hand queued frames to the client.

        If the client's delivery task is waiting, the frames are written
        right here when the connection takes them without waiting, and the
        task is woken only if something is left.
        """
        client = self._client
        conn = client._conn if client is not None and client._idle else None
        if conn is not None and client is not None:
            if len(self.outbox):
                frames = self._take(client)
                written = conn.write_now(frames)
                if written < len(frames):
                    self.requeue(frames[written:])
            # Nothing left for the delivery task (the frames went out just
            # now, or earlier in the same batch): let it sleep on.
            if not len(self.outbox) and not conn.needs_flush():
                return
        self._notify()

    def _notify(self) -> None:
        self.outbox_changed.set()
        self.outbox_changed = trio.Event()

    # ---------------------------------------------------------------- clients

    def attach(self, *, socket_path: str | None = None) -> tuple[ClientAttachment, bool]:
        """Make a new client the one client; returns it and whether it took over.

        The previous attachment (if any) is marked kicked: its delivery
        sends it ``clientDisconnected`` and returns.
        """
        previous = self._client
        if previous is not None:
            previous.kicked = True  # woken below by outbox_changed
        attachment = ClientAttachment(socket_path=socket_path)
        self._client = attachment
        self._notify()
        return attachment, previous is not None

    def detach(self, attachment: ClientAttachment) -> bool:
        """A client connection ended; returns whether it was the current client."""
        if self._client is attachment:
            self._client = None
            return True
        return False

    def is_current_client(self, attachment: ClientAttachment) -> bool:
        """Whether ``attachment`` is still the client (not taken over, not detached)."""
        return self._client is attachment and not attachment.kicked

    def requeue(self, frames: Sequence[bytes]) -> None:
        """Put back frames a client could not take, ahead of everything else."""
        for frame in reversed(frames):
            self.outbox.push_front(frame)

    def _take(self, attachment: ClientAttachment, limit: int = 256) -> list[bytes]:
        """Up to ``limit`` frames for this client (``[]`` once it was taken over).

        If output was dropped while nobody read it, the first frame is an
        ``outputDropped`` event with the count.
        """
        if not self.is_current_client(attachment):
            return []
        frames: list[bytes] = []
        dropped = self.outbox.take_dropped()
        if dropped:
            frames.append(orjson.dumps({"kind": "kernel", "outputDropped": dropped}))
        while len(frames) < limit and (frame := self.outbox.pop()) is not None:
            frames.append(frame)
        return frames

    # ---------------------------------------------------- in-process readers

    async def next_frames(self, attachment: ClientAttachment, *, limit: int = 256) -> list[bytes]:
        """Wait for frames for this client and take them (an in-process reader).

        Checkpoints before it takes anything and not after, so a cancelled
        call loses nothing. Returns ``[]`` only once the attachment has been
        taken over. Frames the reader cannot hand on go back with
        :meth:`requeue`.
        """
        while True:
            if not self.is_current_client(attachment):
                await trio.lowlevel.checkpoint()
                return []
            if len(self.outbox):
                await trio.lowlevel.checkpoint()
                frames = self._take(attachment, limit)
                if frames or not self.is_current_client(attachment):
                    return frames
                continue
            await self.outbox_changed.wait()

    # --------------------------------------------------------------- delivery

    async def deliver(
        self,
        attachment: ClientAttachment,
        conn: ClientConnection,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """Write this client's frames to ``conn`` until delivery ends.

        Returns when the client was taken over (after sending it
        :data:`TAKEOVER_NOTICE`), when ``conn`` fails, or at the frame
        boundary after :meth:`ClientAttachment.stop_delivery`.

        **Cancellation:** safe at any point; frames taken from the outbox and
        not written are requeued first.
        """
        attachment._conn = conn
        try:
            await self._deliver(attachment, conn, log)
        finally:
            attachment._conn = None
            attachment._idle = False

    async def _deliver(
        self,
        attachment: ClientAttachment,
        conn: ClientConnection,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        while not attachment._stopping:
            waited = await self._wait_for_work(attachment, conn)
            if not waited:
                # Under a flood the outbox is never empty: one scheduler pass
                # per batch keeps the loop fair (and cancellable) there.
                await trio.lowlevel.checkpoint()
            if attachment._stopping:
                return
            await self.gate.wait_turn()
            if conn.needs_flush() and not len(self.outbox) and not attachment.kicked:
                try:
                    await conn.flush()
                except ChannelClosedError as exc:
                    log.info("client connection failed: %s", exc)
                    return
                continue
            # No checkpoint from here until the frames are handed to the
            # connection: a cancellation cannot strike between the two.
            frames = self._take(attachment)
            if not frames:
                if self.is_current_client(attachment):
                    continue  # written meanwhile, straight through
                log.info("client taken over by a newer one")
                with contextlib.suppress(ChannelClosedError):
                    await conn.send_frames([TAKEOVER_NOTICE])
                return
            if not await self._write(attachment, conn, frames, log):
                return

    async def _wait_for_work(self, attachment: ClientAttachment, conn: ClientConnection) -> bool:
        """Wait until there is something to write or to flush; whether it waited."""
        waited = False
        with trio.CancelScope() as attachment._wait_scope:
            while not (
                len(self.outbox) or not self.is_current_client(attachment) or conn.needs_flush()
            ):
                waited = True
                # While we sleep, wake() writes new frames straight through.
                attachment._idle = conn.can_write_now and not attachment._stopping
                try:
                    await self.outbox_changed.wait()
                finally:
                    attachment._idle = False
        attachment._wait_scope = None
        return waited

    async def _write(
        self,
        attachment: ClientAttachment,
        conn: ClientConnection,
        frames: list[bytes],
        log: logging.LoggerAdapter[logging.Logger],
    ) -> bool:
        """Write ``frames``, requeueing what was not committed; whether to go on."""
        sent = 0
        try:
            while sent < len(frames) and not attachment._stopping:
                sent += await conn.send_frames(frames[sent:])
            await conn.flush()
        except ChannelClosedError as exc:
            log.info("client connection failed: %s", exc)
            self.requeue(frames[sent:])
            return False
        except BaseException:
            self.requeue(frames[sent:])
            raise
        if sent < len(frames):
            self.requeue(frames[sent:])
        return True
