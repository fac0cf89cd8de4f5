"""Taps on a channel's traffic: every item to every subscriber, never blocking the reader."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["SUBSCRIBER_BUFFER", "Subscribers"]

logger = logging.getLogger(__name__)

#: Per-subscriber buffer; a subscriber that falls further behind loses items.
SUBSCRIBER_BUFFER = 4096  # items

T = TypeVar("T")


@attrs.define(eq=False)
class Subscribers(Generic[T]):
    """The subscribers to one kind of item (kernel events, Jupyter messages).

    Each subscriber has a bounded memory channel; :meth:`publish` never
    waits, so a slow subscriber loses items (with a warning) instead of
    holding up the channel's reader.
    """

    _session_id: str = attrs.field(alias="session_id")
    _sends: set[trio.MemorySendChannel[T]] = attrs.field(factory=set, repr=False)
    # Set by close(): later subscribers get a receive channel that has ended.
    _closed: bool = attrs.field(default=False, repr=False)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[T]]:
        """Receive every item published while in the block."""
        send, receive = trio.open_memory_channel[T](SUBSCRIBER_BUFFER)
        if self._closed:
            send.close()
        else:
            self._sends.add(send)
        try:
            yield receive
        finally:
            self._sends.discard(send)
            send.close()
            receive.close()

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber that has room for it."""
        for send in list(self._sends):
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                logger.warning("channel %s: a slow subscriber missed an item", self._session_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sends.discard(send)

    def close(self) -> None:
        """End every subscriber's receive channel, now and for later subscribers."""
        self._closed = True
        for send in list(self._sends):
            send.close()
        self._sends.clear()
