"""Close codes on hypercorn's WebSockets (the channel route's fallback path).

A channel upgrade that arrives as the second request on a kept-alive TCP
connection is served by the Quart route, on hypercorn's ``WSStream`` (wsproto
underneath). Two of its failure paths differ from the fast path
(:mod:`kallichore.protocol.ws_frames`), which always says why in a Close frame and
then drops the connection:

* a frame wsproto refuses (text that is not UTF-8: 1007; a protocol error:
  1002) comes out of wsproto as a ``CloseConnection`` event although the
  peer sent no Close; hypercorn answers only a *peer's* Close, so the
  connection ended with no Close frame at all;
* a message over ``websocket_max_message_size`` got its 1009 Close, but the
  connection stayed open, the client attached, and the rest of the
  oversized message kept being read.

:func:`install_ws_close_codes` replaces ``WSStream._handle_events`` with one
that sends the code wsproto or the size limit gives, then ends the stream
(hypercorn closes the TCP connection). Every other event is handled as
hypercorn handles it. Idempotent.
"""

from __future__ import annotations

from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

__all__ = ["install_ws_close_codes"]

_PATCH_MARK = "_kallichore_close_codes"


async def _fail(stream: WSStream, code: int, reason: str) -> None:
    """Send a Close frame with ``code`` (unless one was sent) and end the stream."""
    if stream.connection.state is ConnectionState.OPEN:
        await stream._send_wsproto_event(CloseConnection(code=code, reason=reason))
    await stream.send(StreamClosed(stream_id=stream.stream_id))


async def _handle_events(self: WSStream) -> None:
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await _fail(self, CloseReason.MESSAGE_TOO_BIG, "message too big")
                return
            if event.message_finished:
                assert self.app_put is not None
                await self.app_put(self.buffer.to_message())
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.connection.state is ConnectionState.REMOTE_CLOSING:
                # The peer's Close: echo it, as hypercorn does.
                await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))
            else:
                # wsproto refused a frame (ParseFailed): it reports that as a
                # CloseConnection carrying the code to send.
                await _fail(self, event.code, event.reason or "")
            return


def install_ws_close_codes() -> None:
    """Make hypercorn's WebSockets send 1007/1002/1009 and drop the connection."""
    if getattr(WSStream._handle_events, _PATCH_MARK, False):
        return
    setattr(_handle_events, _PATCH_MARK, True)
    WSStream._handle_events = _handle_events  # type: ignore[method-assign]
