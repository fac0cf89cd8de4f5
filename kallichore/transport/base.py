"""The seam between a kernel session and whatever carries its frames.

A session never touches ZeroMQ directly: it sends and receives *multipart
messages* (lists of byte frames, exactly what goes on a ZeroMQ socket) through
a :class:`FrameSocket`. :mod:`kallichore.transport.zmq` provides the real one
(pyzmq bridged into trio); an in-memory fake can stand in for tests, as
httpcore's ``_backends/mock.py`` stands in for its network backends.

Contract every implementation keeps:

* frames are sent and received as whole multipart messages, never interleaved;
* ``send_multipart`` and ``receive_multipart`` always checkpoint, and if they
  raise :class:`trio.Cancelled` the message was not sent / not consumed;
* once ``close()`` has been called, both raise the implementation's "closed"
  error (for ZeroMQ, :class:`kallichore.transport.zmq.TransportClosedError`),
  including in a task that was already blocked in ``receive_multipart``;
* at most one task receives at a time; any number of tasks may send.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["FrameSocket"]


@runtime_checkable
class FrameSocket(Protocol):
    """One bidirectional channel of multipart messages (one kernel socket)."""

    async def send_multipart(self, frames: Sequence[bytes]) -> None:
        """Send one multipart message; wait while the peer cannot take it.

        **Cancellation:** if cancelled, nothing was sent.
        """
        ...

    async def receive_multipart(self) -> list[bytes]:
        """Wait for and return the next multipart message.

        **Cancellation:** if cancelled, no message was consumed.
        """
        ...

    def close(self) -> None:
        """Close the channel (idempotent); wakes a blocked receiver."""
        ...
