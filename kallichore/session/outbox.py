"""The per-session buffer of frames on their way to the client, bounded.

Everything a session produces for its client (Jupyter messages, kernel
events) goes through one :class:`Outbox`, already encoded as the text frame
the client will receive. While a client is attached it drains the outbox as
fast as it can write; while none is, frames wait here and are delivered in
order, exactly once, to the next client (Kallichore's to-client queue).

Unlike Kallichore's, this buffer is bounded by bytes. When a new frame would
push it past ``limit_bytes``, the *oldest droppable* frames are discarded
until it fits. Only output is droppable (iopub streams, display data...);
status messages, replies, stdin requests and kernel events are never
dropped, so a client always learns that the kernel went idle or exited. The
number of dropped frames is remembered, and :meth:`Outbox.take_dropped`
hands it to the delivery side once, so the next client can be told.

Pure: no trio. Waking a waiting reader is the owner's job.
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["DEFAULT_OUTBOX_LIMIT", "Outbox"]

#: Default bound on buffered frames per session.
DEFAULT_OUTBOX_LIMIT = 64 * 1024 * 1024  # bytes


@attrs.define(eq=False)
class _Entry:
    data: bytes
    droppable: bool
    alive: bool = True


@attrs.define(eq=False)
class Outbox:
    """A FIFO of encoded frames, bounded by total size (see module docstring)."""

    limit_bytes: int = DEFAULT_OUTBOX_LIMIT
    # Every entry in order; dropped ones stay (alive=False) until popped.
    _entries: deque[_Entry] = attrs.field(factory=deque, init=False)
    # The droppable entries still alive, oldest first.
    _droppable: deque[_Entry] = attrs.field(factory=deque, init=False)
    # Bytes held by alive entries.
    _size: int = attrs.field(default=0, init=False)
    # Frames dropped since the last take_dropped().
    _dropped: int = attrs.field(default=0, init=False)
    # Alive entries.
    _count: int = attrs.field(default=0, init=False)

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes currently buffered."""
        return self._size

    def put(self, data: bytes, *, droppable: bool = False) -> None:
        """Append a frame, dropping the oldest output if over the limit."""
        entry = _Entry(data, droppable)
        self._entries.append(entry)
        self._size += len(data)
        self._count += 1
        if droppable:
            self._droppable.append(entry)
        while self._size > self.limit_bytes and self._droppable:
            victim = self._droppable.popleft()
            if victim.alive:
                victim.alive = False
                self._size -= len(victim.data)
                victim.data = b""  # the dead entry stays queued; its bytes need not
                self._count -= 1
                self._dropped += 1

    def pop(self) -> bytes | None:
        """The oldest frame, or ``None`` when empty."""
        while self._entries:
            entry = self._entries.popleft()
            if entry.alive:
                entry.alive = False
                if entry.droppable:
                    # Both queues are FIFO: the oldest alive droppable is this one.
                    self._droppable.popleft()
                self._size -= len(entry.data)
                self._count -= 1
                return entry.data
        return None

    def push_front(self, data: bytes) -> None:
        """Put back a frame that could not be delivered (it goes first)."""
        self._entries.appendleft(_Entry(data, droppable=False))
        self._size += len(data)
        self._count += 1

    def take_dropped(self) -> int:
        """How many frames were dropped since the last call (then reset)."""
        dropped, self._dropped = self._dropped, 0
        return dropped

    def clear(self) -> None:
        """Forget everything buffered."""
        self._entries.clear()
        self._droppable.clear()
        self._size = 0
        self._count = 0
