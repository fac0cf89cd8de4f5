"""The WebSocket under a channel, opened again after a drop.

Over TCP it is the upgrade of ``GET /sessions/{id}/channels``; on a
Unix-socket server, the per-session socket whose path that GET returns
(``docs/channels.md``). trio-websocket's reader task for it runs in the
nursery the owner hands in.

When the connection drops and we did not ask for it,
:meth:`ReconnectingWebSocket.receive` reconnects with backoff for up to
``reconnect_timeout`` seconds and carries on; senders wait while that is
under way. While no client is attached the server queues frames and
delivers them, in order, to the next client, so little is lost: only
frames already written into the socket that broke (the server cannot
know). :meth:`~ReconnectingWebSocket.leave` asks the server to end the
connection (an empty frame; it answers with its Close), which loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Protocol
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

from kallichore.client._errors import ChannelClosedError, KallichoreClientError

__all__ = ["ChannelEndpoint", "ReconnectingWebSocket"]

logger = logging.getLogger(__name__)

#: The server accepts messages up to 64 MiB; leave room for the envelope.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024 + 64 * 1024  # bytes
#: Bound on one connection attempt (connect + WebSocket handshake).
CONNECT_TIMEOUT = 10.0  # seconds
#: Default bound on reconnecting after a drop.
RECONNECT_TIMEOUT = 30.0  # seconds
#: First and largest pause between reconnect attempts.
RECONNECT_BACKOFF = (0.05, 1.0)  # seconds
#: Bound on a graceful leave (empty frame, read until Close).
CLOSE_TIMEOUT = 5.0  # seconds

#: What a send or receive on a connection that broke under it raises.
_BROKEN = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class ChannelEndpoint(Protocol):
    """Where a session's channel is: what the WebSocket needs of the REST
    client (:class:`~kallichore.client.KallichoreClient`)."""

    @property
    def base_url(self) -> str | None: ...

    @property
    def socket_path(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...

    async def channels_upgrade(self, session_id: str) -> str: ...


@attrs.define(eq=False)
class ReconnectingWebSocket:
    """The connection to one session's channel, re-established after a drop.

    Attributes:
        session_id: the Kallichore session.
        reconnects: how many times the connection was re-established.
    """

    session_id: str
    _endpoint: ChannelEndpoint = attrs.field(alias="endpoint", repr=False)
    _nursery: trio.Nursery = attrs.field(alias="nursery", repr=False)
    _reconnect: bool = attrs.field(alias="reconnect", default=True)
    _reconnect_timeout: float = attrs.field(alias="reconnect_timeout", default=RECONNECT_TIMEOUT)
    reconnects: int = 0
    # The current connection; None while (re)connecting or after close.
    _ws: trio_websocket.WebSocketConnection | None = attrs.field(default=None, repr=False)
    _stream: trio.abc.Stream | None = attrs.field(default=None, repr=False)
    # Set and replaced whenever _ws changes or the connection finishes.
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)
    _send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, repr=False)
    # _closing: we asked to leave; _closed_reason: the connection is finished.
    _closing: bool = attrs.field(default=False, repr=False)
    _closed_reason: str | None = attrs.field(default=None, repr=False)

    @property
    def closing(self) -> bool:
        """Whether :meth:`leave` was called."""
        return self._closing

    @property
    def closed_reason(self) -> str | None:
        """Why the connection is finished; ``None`` while it is not."""
        return self._closed_reason

    @property
    def connected(self) -> bool:
        """Whether a connection is currently up."""
        return self._ws is not None and self._closed_reason is None

    def finish(self, reason: str) -> None:
        """Mark the connection finished (the first reason stays); wakes waiting senders."""
        if self._closed_reason is None:
            self._closed_reason = reason
        self._signal_change()

    async def connect(self) -> None:
        """Open a new connection and make it current.

        Raises:
            KallichoreClientError: the server refused (unknown session, bad
                token) -- not worth retrying.
            OSError, trio_websocket.HandshakeError, trio.TooSlowError:
                transient; worth retrying.
        """
        endpoint = self._endpoint
        resource = f"/sessions/{self.session_id}/channels"
        headers: list[tuple[bytes, bytes]] = []
        if endpoint.token:
            headers.append((b"Authorization", f"Bearer {endpoint.token}".encode()))
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream
            if endpoint.socket_path is not None:
                path = await endpoint.channels_upgrade(self.session_id)
                stream = await trio.open_unix_socket(path)
                host = "localhost"
            else:
                url = urlsplit(endpoint.base_url or "")
                host = url.hostname or "127.0.0.1"
                stream = await trio.open_tcp_stream(host, url.port or 80)
            try:
                ws = await trio_websocket.wrap_client_stream(
                    self._nursery,
                    stream,
                    host,
                    resource,
                    extra_headers=headers,
                    max_message_size=MAX_MESSAGE_SIZE,
                )
            except trio_websocket.ConnectionRejected as exc:
                await stream.aclose()
                raise rejected(exc) from None
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        self._ws, self._stream = ws, stream
        self._signal_change()

    async def receive(self) -> str | None:
        """The next non-empty text frame, reconnecting after a drop.

        Returns:
            The frame, or ``None`` once the connection is finished or closing.

        Raises:
            ChannelClosedError: the connection dropped and could not be
                re-established (reconnecting is off, the server refused,
                or time ran out); the connection is finished.
        """
        while self._closed_reason is None:
            ws = self._ws
            if ws is None:
                if self._closing:
                    return None
                await self._reconnect_after_drop()
                continue
            try:
                text = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                if self._closing or self._closed_reason is not None:
                    return None
                logger.info("channel %s: connection lost", self.session_id)
                await self._reconnect_after_drop()
                continue
            if isinstance(text, str) and text:
                return text
        return None

    async def send(self, text: str) -> None:
        """Send one frame, waiting out a reconnect if one is under way.

        Raises:
            ChannelClosedError: the connection is finished or closing.
        """
        while True:
            if self._closed_reason is not None or self._closing:
                raise ChannelClosedError(self._closed_reason or "the channel is closing")
            ws = self._ws
            if ws is None:
                await self._changed.wait()
                continue
            changed = self._changed
            try:
                async with self._send_lock:
                    await ws.send_message(text)
                return
            except _BROKEN:
                # The reader notices the drop and reconnects; send again then.
                if self._ws is ws:
                    await changed.wait()

    async def leave(self) -> bool:
        """Start closing: ask the server to end the connection (an empty
        frame; the server answers with its Close, which ends :meth:`receive`).

        Returns:
            Whether a live connection was asked; then wait for :meth:`receive`
            to return ``None``, under a bound (:data:`CLOSE_TIMEOUT`).
        """
        self._closing = True
        ws = self._ws
        if ws is None or self._closed_reason is not None:
            return False
        with contextlib.suppress(*_BROKEN):
            async with self._send_lock:
                await ws.send_message("")
        return True

    async def drop(self) -> None:
        """Close the current connection, if any, without ceremony.

        Cancellation:
            Shielded, and bounded by :data:`CLOSE_TIMEOUT`.
        """
        ws, stream = self._ws, self._stream
        self._ws = self._stream = None
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.aclose()
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _reconnect_after_drop(self) -> None:
        """Reconnect with backoff.

        Raises:
            ChannelClosedError: we gave up; the connection is finished.
        """
        await self.drop()
        self._signal_change()
        if not self._reconnect:
            raise self._give_up("the connection to the server was lost")
        pause, max_pause = RECONNECT_BACKOFF
        last: BaseException | None = None
        with trio.move_on_after(self._reconnect_timeout):
            while not self._closing:
                try:
                    await self.connect()
                except KallichoreClientError as exc:
                    if exc.status is not None:  # the server answered "no"
                        raise self._give_up(f"reconnect refused: {exc}") from None
                    last = exc
                except (OSError, trio_websocket.HandshakeError, trio.TooSlowError) as exc:
                    last = exc
                else:
                    self.reconnects += 1
                    logger.info("channel %s reconnected", self.session_id)
                    return
                await trio.sleep(pause)
                pause = min(max_pause, pause * 2)
        raise self._give_up(f"could not reconnect: {last}" if last else "could not reconnect")

    def _give_up(self, reason: str) -> ChannelClosedError:
        self.finish(reason)
        return ChannelClosedError(reason)


def rejected(exc: trio_websocket.ConnectionRejected) -> KallichoreClientError:
    """The refused upgrade ``exc`` as the error the server's JSON body describes."""
    body = (exc.body or b"").decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        details = data.get("details")
        return KallichoreClientError(
            data["message"],
            status=exc.status_code,
            code=data.get("code") if isinstance(data.get("code"), str) else None,
            details=details if isinstance(details, str) else None,
        )
    return KallichoreClientError(
        f"channel upgrade refused: HTTP {exc.status_code} {body.strip()}".rstrip(),
        status=exc.status_code,
    )
