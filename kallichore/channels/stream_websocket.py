"""A server-side WebSocket on a plain trio stream, for the channel bridge.

Channel WebSockets do not go through the ASGI stack: the per-session Unix
sockets (:mod:`kallichore.channels.channel_socket`) and TCP channel upgrades
(:mod:`kallichore.channels.tcp_channels`) both hand the stream, after the opening
handshake, to :class:`StreamChannelConnection`, which satisfies
:class:`~kallichore.channels.bridge.ChannelConnection`.

Why not hypercorn's WebSocket: it turns every message into an ASGI event, a
wsproto encode and its own ``send()`` system call. Under a flood of kernel
output that path was half of the server's CPU. Here a batch of frames is
one buffer and usually one system call (:meth:`StreamChannelConnection.send_frames`),
and the client's frames are read by :class:`~kallichore.protocol.ws_frames.FrameReader`
(see there for why not wsproto).

The closing handshake (RFC 6455 section 7): whoever closes first sends a
close frame and waits for the other's; a close frame received while open
is answered once delivery has stopped (:meth:`StreamChannelConnection.aclose`).
A client that breaks the protocol gets a close frame with the code that
says why (1002, 1007, 1009) and the connection is dropped without waiting.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import os
from collections.abc import Sequence

import trio

from kallichore.channels.bridge import ChannelClosedError
from kallichore.protocol.ws_frames import (
    OP_PING,
    OP_PONG,
    Close,
    FrameError,
    FrameReader,
    Message,
    Ping,
    Pong,
    close_frame,
    control_frame,
    text_frame_head,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "RECEIVE_SIZE",
    "WRITE_CHUNK",
    "StreamChannelConnection",
    "upgrade_response",
]

#: Read size.
RECEIVE_SIZE = 64 * 1024  # bytes
#: Bound on the closing handshake with a client.
CLOSE_TIMEOUT = 2.0  # seconds
#: Largest message a client may send (``--max-message-size`` by default).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bytes
#: Data frames gathered into one write (a batch stops at the first frame past it).
WRITE_CHUNK = 64 * 1024  # bytes
#: Close code of a normal closure.
NORMAL_CLOSURE = 1000

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def upgrade_response(key: bytes) -> bytes:
    """The ``101 Switching Protocols`` answer to an upgrade with ``Sec-WebSocket-Key: key``.

    No subprotocol and no extension is selected (as in Kallichore).
    """
    accept = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def _encode_batch(frames: Sequence[bytes]) -> tuple[int, bytes]:
    """The first frames (at least one, about :data:`WRITE_CHUNK` bytes) as text frames."""
    parts: list[bytes] = []
    size = count = 0
    for frame in frames:
        parts.append(text_frame_head(len(frame)))
        parts.append(frame)
        count += 1
        size += len(frame)
        if size >= WRITE_CHUNK:
            break
    return count, b"".join(parts)


class _State(enum.Enum):
    OPEN = "open"
    #: We sent a close frame and wait for the client's.
    LOCAL_CLOSING = "local closing"
    #: The client sent a close frame; ours is still to be sent.
    REMOTE_CLOSING = "remote closing"
    CLOSED = "closed"


class StreamChannelConnection:
    """A server-side WebSocket on a byte stream, for :func:`serve_channel`.

    Writes are serialised by a lock (trio-websocket's ``_send``); reading
    happens only in :meth:`receive`, which also answers pings and counts
    pongs whose payload is an 8-byte counter.

    Data frames (:meth:`send_frames`) are a two-to-ten-byte head and the
    payload (no extension is ever agreed), so a whole batch becomes one
    buffer and, usually, one ``send`` system call.

    Args:
        stream: the connection, after the opening handshake.
        initial: bytes already read past the handshake.
        max_message_bytes: the largest message the client may send; a
            larger one closes the connection with code 1009.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        initial: bytes = b"",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._stream = stream
        # Written to directly when the stream is a socket stream, so that a
        # short write tells us how much went out (SocketStream.send_all would
        # not); any other stream gets send_all.
        self._socket: trio.socket.SocketType | None = getattr(stream, "socket", None)
        self._reader = FrameReader(max_message_bytes, initial)
        self._state = _State.OPEN
        self._send_lock = trio.StrictFIFOLock()
        # Bytes of frames already committed to the client but not yet written
        # (a short write); they go out before anything else.
        self._unwritten = memoryview(b"")
        self._pongs = 0
        self._eof = False
        # Set when the client broke the protocol: nothing more is read.
        self._failed = False

    @property
    def pongs_received(self) -> int | None:
        return self._pongs

    async def _write(self, data: bytes | memoryview) -> int:
        """Write some of ``data`` (all of it for non-socket streams); the count written.

        Raises :class:`ChannelClosedError`; cancelled only before writing.
        Does not checkpoint when the socket takes the data at once.
        """
        sock = self._socket
        try:
            if sock is None:
                await self._stream.send_all(data)
                return len(data)
            while True:
                # A write(2) first, without the scheduler pass trio's
                # socket.send makes after success: the bridge already takes
                # one per batch. The fd is read just before the call, so a
                # socket closed meanwhile gives -1 (EBADF), never a stranger.
                fd = sock.fileno()
                if fd < 0:
                    raise ChannelClosedError("the connection is closed")
                try:
                    return os.write(fd, data)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ChannelClosedError(str(exc) or type(exc).__name__) from None

    async def _flush_unwritten(self) -> None:
        while self._unwritten:
            written = await self._write(self._unwritten)
            self._unwritten = self._unwritten[written:]

    async def flush(self) -> None:
        """Finish writing frames already committed by :meth:`send_frames`.

        **Cancellation:** safe; what is left is written before anything else.

        **Errors:** :class:`ChannelClosedError`.
        """
        if self._unwritten:
            async with self._send_lock:
                await self._flush_unwritten()

    async def _send_control(self, frame: bytes) -> None:
        async with self._send_lock:
            await self._flush_unwritten()
            self._unwritten = memoryview(frame)
            await self._flush_unwritten()

    async def send_frames(self, frames: Sequence[bytes]) -> int:
        """Send the first frames of ``frames`` as text messages; how many went.

        Takes as many frames as fit in :data:`WRITE_CHUNK` (at least one).
        The frames counted are committed: if the socket took only part of
        them, the rest is written by :meth:`flush` or before anything else.
        The payloads must be UTF-8 (they are JSON from orjson).

        **Cancellation:** if cancelled, no frame of this call was committed.

        **Errors:** :class:`ChannelClosedError` (nothing of this call was
        committed) once the connection failed or is closing.
        """
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case: no scheduler pass
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._state is not _State.OPEN:
                raise ChannelClosedError(f"the WebSocket is {self._state.value}")
            await self._flush_unwritten()
            count, data = _encode_batch(frames)
            written = await self._write(data)
            if written < len(data):
                self._unwritten = memoryview(data)[written:]
            return count
        finally:
            lock.release()

    @property
    def can_write_now(self) -> bool:
        return self._socket is not None

    def write_now(self, frames: Sequence[bytes]) -> int:
        """:meth:`send_frames` without waiting: 0 unless the socket is free and takes data.

        Never raises; a failed connection is left for :meth:`send_frames` to
        report.
        """
        sock = self._socket
        if (
            sock is None
            or self._unwritten
            or self._send_lock.locked()
            or self._state is not _State.OPEN
        ):
            return 0
        fd = sock.fileno()
        if fd < 0:
            return 0
        count, data = _encode_batch(frames)
        try:
            written = os.write(fd, data)
        except OSError:  # BlockingIOError included: nothing was written
            return 0
        if written < len(data):
            self._unwritten = memoryview(data)[written:]
        return count

    def needs_flush(self) -> bool:
        return bool(self._unwritten)

    async def send_ping(self, payload: bytes) -> None:
        if self._state is not _State.OPEN:
            raise ChannelClosedError(f"the WebSocket is {self._state.value}")
        await self._send_control(control_frame(OP_PING, payload))

    async def receive(self) -> str | bytes | None:
        reader = self._reader
        while True:
            # Keep reading while our own close awaits its answer (LOCAL_CLOSING).
            if self._eof or self._failed or self._state in (_State.REMOTE_CLOSING, _State.CLOSED):
                return None
            try:
                event = reader.next_event()
            except FrameError as exc:
                await self._fail(exc)
                return None
            if event is None:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._eof = True
                else:
                    reader.feed(data)
            elif isinstance(event, Message):
                # Binary frames are ignored by the bridge; their bytes need not travel.
                return event.data if isinstance(event.data, str) else b""
            elif isinstance(event, Ping):
                if self._state is _State.OPEN:
                    with contextlib.suppress(ChannelClosedError):
                        await self._send_control(control_frame(OP_PONG, event.payload))
            elif isinstance(event, Pong):
                if len(event.payload) == 8:
                    self._pongs = max(self._pongs, int.from_bytes(event.payload, "big"))
            elif isinstance(event, Close):
                # Answered in aclose(), after delivery has stopped.
                self._state = (
                    _State.CLOSED if self._state is _State.LOCAL_CLOSING else _State.REMOTE_CLOSING
                )

    async def _fail(self, error: FrameError) -> None:
        """The client broke the protocol: say why (best effort) and stop reading."""
        self._failed = True
        if self._state in (_State.OPEN, _State.REMOTE_CLOSING):
            self._state = _State.CLOSED
            with contextlib.suppress(ChannelClosedError):
                await self._send_control(close_frame(error.code, error.reason))

    async def aclose(self) -> None:
        """Closing handshake (bounded), then close the stream.

        **Cancellation:** runs shielded; bounded by :data:`CLOSE_TIMEOUT`.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                if self._state is _State.OPEN:
                    self._state = _State.LOCAL_CLOSING
                    await self._send_control(close_frame(NORMAL_CLOSURE))
                    # Wait for the client's close (or EOF); ignore late messages.
                    while await self.receive() is not None:
                        pass
                elif self._state is _State.REMOTE_CLOSING:
                    self._state = _State.CLOSED
                    await self._send_control(close_frame(NORMAL_CLOSURE))
            except ChannelClosedError:
                pass
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
