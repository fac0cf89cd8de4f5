"""Client fan-out: the session's frames on their way to its one attached client.

Everything a session produces for its client (Jupyter messages, kernel
events) is put here as an encoded frame. The frames wait in a bounded
:class:`~kallichore.session.outbox.Outbox` until the attached client takes
them; while none is attached they wait for the next one. One client at a
time: a newer one takes over and the older one is told to go.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import orjson
import trio

from kallichore.session.outbox import Outbox

__all__ = ["ClientAttachment", "ClientFanout", "ImmediateWriter"]


class ImmediateWriter(Protocol):
    """A client connection that can take frames without waiting, when it is idle."""

    def write_now(self, frames: list[bytes]) -> int:
        """Write the first of ``frames`` if that needs no waiting; how many were committed.

        Committed frames are written, or will be before anything else.
        """
        ...

    def needs_flush(self) -> bool:
        """Whether committed bytes are still unwritten (the delivery task must run)."""
        ...


@attrs.define(eq=False)
class ClientAttachment:
    """One attached client connection (see :meth:`ClientFanout.attach`)."""

    socket_path: str | None = None
    #: Set when a newer client took over; the connection must close.
    kicked: bool = False
    #: While the client's delivery task is idle: writes frames synchronously
    #: (see :class:`ImmediateWriter`), so new frames need no task switch.
    immediate: ImmediateWriter | None = None


@attrs.define(eq=False)
class ClientFanout:
    """The outbox and the one client attached to it."""

    outbox: Outbox = attrs.field(factory=Outbox)
    #: Woken whenever the outbox gains a frame.
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

    def put(self, frame: bytes, *, droppable: bool, wake: bool = True) -> None:
        """Queue a frame; with ``wake=False`` it goes out at the next :meth:`wake`."""
        self.outbox.put(frame, droppable=droppable)
        if wake:
            self.wake()

    def wake(self) -> None:
        """Hand new frames to the client; wake whoever waits on :attr:`outbox_changed`.

        When the client's delivery task is idle, the frames are written right
        here (one task switch less per message, which is most of the cost of a
        trickle of output), and the task is woken only if something is left.
        """
        client = self._client
        writer = client.immediate if client is not None else None
        if writer is not None and client is not None:
            if len(self.outbox):
                frames = self.take_frames(client)
                written = writer.write_now(frames)
                if written < len(frames):
                    self.requeue(frames[written:])
            # Nothing left for the delivery task (the frames went out just
            # now, or earlier in the same batch): let it sleep on.
            if not len(self.outbox) and not writer.needs_flush():
                return
        self._notify()

    def _notify(self) -> None:
        self.outbox_changed.set()
        self.outbox_changed = trio.Event()

    def attach(self, *, socket_path: str | None = None) -> tuple[ClientAttachment, bool]:
        """Make a new client the one client; returns it and whether it took over.

        The previous attachment (if any) is marked kicked: its delivery loop
        sends it ``clientDisconnected`` and closes it.
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
        """Whether ``attachment`` is still the client."""
        return self._client is attachment

    async def next_frames(self, attachment: ClientAttachment, *, limit: int = 256) -> list[bytes]:
        """Wait for frames for this client, then :meth:`take_frames`.

        Checkpoints before it takes anything and not after, so a cancelled
        call loses nothing. Returns ``[]`` only once the attachment has been
        kicked.
        """
        while True:
            if attachment.kicked or self._client is not attachment:
                await trio.lowlevel.checkpoint()
                return []
            if len(self.outbox):
                await trio.lowlevel.checkpoint()
                frames = self.take_frames(attachment, limit=limit)
                if frames or attachment.kicked or self._client is not attachment:
                    return frames
                continue
            await self.outbox_changed.wait()

    def take_frames(self, attachment: ClientAttachment, *, limit: int = 256) -> list[bytes]:
        """Take up to ``limit`` frames for this client, without waiting.

        Returns an empty list once the attachment has been kicked (the caller
        then says goodbye and closes), and also when there is nothing to
        take (wait on :attr:`outbox_changed` first). Frames taken here are no
        longer in the outbox: a caller that fails to deliver them should
        :meth:`requeue`. If output was dropped while nobody read it, the
        first frame is an ``outputDropped`` event with the count.
        """
        if attachment.kicked or self._client is not attachment:
            return []
        frames: list[bytes] = []
        dropped = self.outbox.take_dropped()
        if dropped:
            frames.append(orjson.dumps({"kind": "kernel", "outputDropped": dropped}))
        while len(frames) < limit and (frame := self.outbox.pop()) is not None:
            frames.append(frame)
        return frames

    def requeue(self, frames: list[bytes]) -> None:
        """Put back frames a client could not take, ahead of everything else."""
        for frame in reversed(frames):
            self.outbox.push_front(frame)
