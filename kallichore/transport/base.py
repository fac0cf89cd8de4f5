"""The seam between a kernel session and whatever carries its frames.

A session never touches ZeroMQ directly. It asks a :class:`KernelTransport`
for a kernel's :class:`KernelConnection` (the five sockets of the Jupyter
protocol) or for a JEP 66 registration socket, and sends and receives
*multipart messages* (lists of byte frames, exactly what goes on a ZeroMQ
socket) through each socket's :class:`FrameSocket` face. Two implementations
exist, as httpcore keeps a mock next to its network backends:

* :mod:`kallichore.transport.zmq` -- pyzmq bridged into trio, the real one;
* :mod:`kallichore.transport.memory` -- pure trio, deterministic, for tests
  that run under trio's autojump clock.

Contract every :class:`FrameSocket` keeps:

* frames are sent and received as whole multipart messages, never interleaved;
  messages from one sender arrive in the order they were sent;
* ``send_multipart``, ``receive_multipart``, ``receive_batch`` and
  ``wait_readable`` always checkpoint, and if they raise :class:`trio.Cancelled`
  the message was not sent / not consumed; ``receive_now`` never waits;
* a send to the kernel waits while the socket's high-water mark is reached; it
  never drops. Kernel output (iopub) is received without a bound, so nothing
  is lost below the session's own bounded buffers;
* once ``close()`` has been called, every operation raises
  :class:`TransportClosedError`, including in a task that was already blocked;
* at most one task receives at a time (a second gets
  :class:`trio.BusyResourceError`); any number of tasks may send.

Errors are mapped at the seam: callers see :class:`TransportError` and
:class:`TransportClosedError`, never an implementation's own exceptions.

The kernel's side of a connection connects in the background: opening a
:class:`KernelConnection` does not mean the kernel is reachable. A reply to a
request proves shell (or control) works; :meth:`KernelConnection.wait_stdin_connected`
proves the kernel can reach us on stdin, where it starts conversations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = [
    "CHANNELS",
    "HEARTBEAT_PAYLOAD",
    "FrameSocket",
    "KernelConnection",
    "KernelTransport",
    "TransportClosedError",
    "TransportError",
    "heartbeat_once",
]

logger = logging.getLogger(__name__)

#: The kernel channels a connection needs endpoints for.
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")

#: Payload of a heartbeat ping (the kernel echoes it back).
HEARTBEAT_PAYLOAD = b"kallichore-heartbeat"


class TransportError(Exception):
    """The transport reported an error on a kernel socket."""


class TransportClosedError(TransportError):
    """The socket was closed (by us, or its transport was torn down)."""


@runtime_checkable
class FrameSocket(Protocol):
    """One channel of multipart messages (one kernel socket)."""

    async def send_multipart(self, frames: Sequence[bytes]) -> None:
        """Send one multipart message; wait while the high-water mark is reached.

        **Cancellation:** if cancelled, nothing was sent.
        """
        ...

    async def receive_multipart(self) -> list[bytes]:
        """Wait for and return the next multipart message.

        **Cancellation:** if cancelled, no message was consumed.
        """
        ...

    async def receive_batch(self, max_messages: int) -> list[list[bytes]]:
        """Wait for at least one message; return up to ``max_messages`` already queued.

        One trip through the scheduler per batch instead of per message.

        **Cancellation:** if cancelled, no message was consumed.
        """
        ...

    async def wait_readable(self) -> None:
        """Wait until a message is queued; take it with :meth:`receive_now`.

        Consumes nothing, so cancelling it loses nothing.
        """
        ...

    def receive_now(self) -> list[bytes] | None:
        """The next queued message, or ``None`` if there is none; never waits.

        Never checkpoints, so a task that handles the message before its
        next checkpoint keeps messages in order with any other task taking
        from the same socket (one may wait in :meth:`wait_readable` meanwhile).
        """
        ...

    def close(self) -> None:
        """Close the channel (idempotent); wakes blocked tasks."""
        ...


class KernelConnection(Protocol):
    """The sockets of one kernel, as a session uses them.

    shell, control and stdin are DEALER-like (requests out, replies in; the
    kernel routes replies by the session's identity); iopub is SUB-like
    (everything the kernel publishes, unbounded); hb is REQ-like with relaxed
    and correlated requests (see :func:`heartbeat_once`).
    """

    @property
    def shell(self) -> FrameSocket: ...

    @property
    def control(self) -> FrameSocket: ...

    @property
    def stdin(self) -> FrameSocket: ...

    @property
    def iopub(self) -> FrameSocket: ...

    @property
    def hb(self) -> FrameSocket: ...

    def dealer(self, channel: str) -> FrameSocket:
        """The socket to send on for ``channel`` (``shell``, ``control`` or ``stdin``).

        **Errors:** ``ValueError`` for any other channel.
        """
        ...

    async def wait_stdin_connected(self) -> None:
        """Wait until the kernel can reach us on stdin (its side is connected).

        **Cancellation:** bound it with the caller's scope (the connection timeout).
        """
        ...

    async def wait_disconnected(self) -> None:
        """Wait until the kernel's heartbeat endpoint goes away after being reached.

        Only for a connection opened with ``watch_disconnect=True`` (an
        adopted kernel, which is not our child: this is how we learn it is
        gone).

        **Errors:** ``RuntimeError`` if the connection does not watch.
        """
        ...

    def close(self) -> None:
        """Close every socket (idempotent)."""
        ...


class KernelTransport(Protocol):
    """How a supervisor reaches kernels: the one factory for their sockets."""

    def open_kernel_connection(
        self,
        endpoints: Mapping[str, str],
        *,
        identity: bytes,
        watch_disconnect: bool = False,
    ) -> AbstractAsyncContextManager[KernelConnection]:
        """Connect to a kernel's five endpoints (``tcp://ip:port`` per :data:`CHANNELS`).

        Args:
            endpoints: one per channel name; extra keys are ignored.
            identity: routing identity of the DEALER-like sockets.
            watch_disconnect: make :meth:`KernelConnection.wait_disconnected` work.

        The sockets are closed when the block exits, however it exits.

        **Errors:** ``ValueError`` for a missing endpoint;
        :class:`TransportError` when the transport refuses.
        """
        ...

    def open_registration(
        self, ip: str = "127.0.0.1"
    ) -> AbstractAsyncContextManager[tuple[FrameSocket, int]]:
        """Bind a JEP 66 registration socket (REP-like) on ``ip`` at a port of its choosing.

        Yields ``(socket, port)``. The kernel sends one ``handshake_request``;
        the caller receives it, sends one reply and leaves the block; the
        reply is still delivered.

        **Errors:** :class:`TransportError` when the bind fails.
        """
        ...


async def heartbeat_once(sock: FrameSocket, payload: bytes = HEARTBEAT_PAYLOAD) -> None:
    """Send one heartbeat ping and wait for the kernel's echo.

    There is no timeout parameter: bound the call with a cancel scope
    (``with trio.move_on_after(5): ...``) and treat cancellation as a missed
    beat.

    Args:
        sock: the ``hb`` socket of a :class:`KernelConnection`.
        payload: the single frame to send.

    **Cancellation:** safe to cancel while waiting for the reply. The ``hb``
    socket may send again although the last reply never came, and a late
    reply to an abandoned ping is discarded instead of answering the next
    one: call ``heartbeat_once`` again on the same socket after a missed beat.

    **Errors:**
        TransportClosedError: the socket is (or gets) closed.
        TransportError: any other transport error.
    """
    await sock.send_multipart([payload])
    reply = await sock.receive_multipart()
    if reply != [payload]:
        logger.debug("heartbeat reply %r differs from ping %r", reply, payload)
