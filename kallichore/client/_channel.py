"""The Jupyter channel of one session: awaitable actions, handlers, comms, events.

Theory of operation
-------------------

One WebSocket per session (``docs/channels.md``): over TCP the upgrade of
``GET /sessions/{id}/channels``; on a Unix-socket server the per-session
socket whose path that GET returns. :func:`open_channel` owns a nursery with
two kinds of task: trio-websocket's own reader for the current connection,
and our ``_reader_task``, which takes one frame at a time and dispatches it:

* ``"kind": "kernel"`` frames become :class:`KernelEvent`\\ s for every
  subscriber (:meth:`Channel.subscribe_events`). ``exited`` fails every
  pending action; ``executionsDropped`` fails the dropped ones;
  ``clientDisconnected`` (another client took the session over) ends the
  channel without reconnecting.
* ``"kind": "jupyter"`` frames are routed by ``parent_header.msg_id`` to the
  pending action whose request that was (kernel-sidecar's idea): replies
  (``*_reply``) and the ``status: idle`` complete it, iopub outputs are
  appended in order and passed to its ``on_output`` handler, a stdin
  ``input_request`` goes to its ``on_input`` handler (in its own task; the
  answer is sent as ``input_reply``). Independently, ``comm_open``,
  ``comm_msg`` and ``comm_close`` are routed to :class:`Comm` objects by
  ``comm_id``. Every Jupyter message also goes to message subscribers.

Before :func:`open_channel` hands the channel out it lets the frames the
server queued while no client was attached go by (a ``kernel_info_request``
on control marks their end), so that an old kernel's ``exited`` among them
fails nothing sent on the new channel. A request on a session with no kernel
fails at once: the server would drop it without a reply.

An ``execute`` completes when both its ``execute_reply`` and its ``idle``
status have arrived (they come on different sockets, in either order); other
requests complete on their reply.

Reconnection: when the connection drops (and we did not ask for it), the
reader reconnects with backoff for up to ``reconnect_timeout`` seconds and
carries on; pending actions, comms and subscribers are kept. While no client
is attached the server queues frames in the session's outbox and delivers
them, in order, to the next client -- so output produced while we were away
is not lost. Frames already written into a socket that then broke can be
lost (the server cannot know); :meth:`Channel.aclose` leaves gracefully (an
empty frame, then read until the server's Close), which loses nothing.
Senders wait while a reconnect is under way.

Handlers may be plain functions or coroutine functions. They run in the
reader task, so a slow handler delays dispatch (not the kernel: the server
buffers). An exception from an action's handler is re-raised from the
awaiting call once the action completes; one from a comm handler is logged.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

from kallichore.client._errors import (
    ChannelClosedError,
    ExecutionDroppedError,
    KallichoreClientError,
)
from kallichore.client._models import (
    ExecutionResult,
    InputRequest,
    KernelEvent,
    Message,
    SessionStatus,
)
from kallichore.client._rest import KallichoreClient
from kallichore.protocol.envelope import client_message, execute_content
from kallichore.protocol.execution import ReplyCollector

__all__ = ["Channel", "Comm", "open_channel"]

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
#: Bound on letting the frames queued before we attached go by (see
#: Channel._let_backlog_pass): only a kernel that does not answer waits it out.
BACKLOG_TIMEOUT = 5.0  # seconds
#: Per-subscriber buffer; a subscriber that falls further behind loses items.
SUBSCRIBER_BUFFER = 4096  # items

#: Session statuses in which there is no kernel to take a request.
_NO_KERNEL = frozenset({SessionStatus.EXITED, SessionStatus.UNINITIALIZED})
_NO_KERNEL_STATES = frozenset(status.value for status in _NO_KERNEL)

MessageHandler = Callable[[Message], Awaitable[None] | None]
InputHandler = Callable[[InputRequest], Awaitable[str] | str]
CommTargetHandler = Callable[["Comm", Message], Awaitable[None] | None]


async def _call(handler: Callable[..., Any], *args: Any) -> Any:
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


@attrs.define(eq=False)
class _Action:
    """One request in flight, keyed by its ``msg_id``."""

    msg_id: str
    wait_idle: bool
    on_output: MessageHandler | None = None
    on_input: InputHandler | None = None
    # What arrived so far (shared with the embedding API's in-process execute).
    collected: ReplyCollector = attrs.field(init=False)
    # First failure (handler error, dropped, channel closed); set => done.
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    @collected.default
    def _new_collector(self) -> ReplyCollector:
        return ReplyCollector(self.msg_id, self.wait_idle)

    def check_done(self) -> None:
        if self.collected.complete:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.done.set()


@attrs.define(eq=False)
class Comm:
    """One open comm, opened by either side.

    Register handlers with :meth:`on_message` / :meth:`on_close` (both usable
    as decorators); they receive the ``comm_msg`` / ``comm_close``
    :class:`Message` (``msg.content["data"]``, ``msg.buffers``).
    """

    comm_id: str
    target_name: str
    _channel: Channel = attrs.field(alias="channel", repr=False)
    _message_handlers: list[MessageHandler] = attrs.field(factory=list, repr=False)
    _close_handlers: list[MessageHandler] = attrs.field(factory=list, repr=False)
    closed: bool = False

    def on_message(self, handler: MessageHandler) -> MessageHandler:
        """Call ``handler`` for each ``comm_msg`` on this comm."""
        self._message_handlers.append(handler)
        return handler

    def on_close(self, handler: MessageHandler) -> MessageHandler:
        """Call ``handler`` when the kernel closes this comm."""
        self._close_handlers.append(handler)
        return handler

    async def send(
        self,
        data: dict[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> str:
        """Send a ``comm_msg``; returns its ``msg_id``.

        Raises:
            ChannelClosedError: the comm or the channel is closed.
        """
        if self.closed:
            raise ChannelClosedError(f"comm {self.comm_id} is closed")
        msg = self._channel._make(
            "comm_msg",
            {"comm_id": self.comm_id, "data": data or {}},
            metadata=metadata,
            buffers=buffers,
        )
        await self._channel._send(msg)
        return str(msg["header"]["msg_id"])

    async def close(self, data: dict[str, Any] | None = None) -> None:
        """Send ``comm_close`` and forget the comm (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._channel._comms.pop(self.comm_id, None)
        await self._channel._send(
            self._channel._make("comm_close", {"comm_id": self.comm_id, "data": data or {}})
        )

    async def _deliver(self, msg: Message) -> None:
        handlers = self._close_handlers if msg.msg_type == "comm_close" else self._message_handlers
        for handler in list(handlers):
            try:
                await _call(handler, msg)
            except Exception:
                logger.exception("comm %s handler failed on %s", self.comm_id, msg.msg_type)


@attrs.define(eq=False)
class Channel:
    """A session's Jupyter channel. Make one with :func:`open_channel`.

    Attributes:
        session_id: the Kallichore session.
        reconnects: how many times the connection was re-established.
    """

    session_id: str
    _client: KallichoreClient = attrs.field(alias="client", repr=False)
    _nursery: trio.Nursery = attrs.field(alias="nursery", repr=False)
    _default_on_input: InputHandler | None = attrs.field(alias="on_input", default=None)
    _reconnect: bool = attrs.field(alias="reconnect", default=True)
    _reconnect_timeout: float = attrs.field(alias="reconnect_timeout", default=RECONNECT_TIMEOUT)
    _username: str = attrs.field(alias="username", default="kallichore-client")
    reconnects: int = 0
    # The current connection; None while (re)connecting or after close.
    _ws: trio_websocket.WebSocketConnection | None = attrs.field(default=None, repr=False)
    _stream: trio.abc.Stream | None = attrs.field(default=None, repr=False)
    # Set and replaced whenever _ws changes or the channel closes.
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)
    _send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, repr=False)
    _actions: dict[str, _Action] = attrs.field(factory=dict, repr=False)
    _comms: dict[str, Comm] = attrs.field(factory=dict, repr=False)
    _comm_targets: dict[str, CommTargetHandler] = attrs.field(factory=dict, repr=False)
    _event_subs: set[trio.MemorySendChannel[KernelEvent]] = attrs.field(factory=set, repr=False)
    _message_subs: set[trio.MemorySendChannel[Message]] = attrs.field(factory=set, repr=False)
    _jupyter_session: str = attrs.field(factory=lambda: uuid.uuid4().hex, repr=False)
    # _closing: we asked to leave; _closed_reason: the channel is finished.
    _closing: bool = attrs.field(default=False, repr=False)
    _closed_reason: str | None = attrs.field(default=None, repr=False)
    _reader_done: trio.Event = attrs.field(factory=trio.Event, repr=False)
    # Whether the session has a kernel to send requests to: from GET
    # /sessions/{id} when the channel opens, then from status events.
    _kernel_running: bool = attrs.field(default=True, repr=False)
    # The request that marks the end of the backlog (only while open_channel waits).
    _fence: _Fence | None = attrs.field(default=None, repr=False)

    # ------------------------------------------------------------ actions

    async def execute(
        self,
        code: str,
        *,
        on_output: MessageHandler | None = None,
        on_input: InputHandler | None = None,
        allow_stdin: bool | None = None,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        stop_on_error: bool = True,
    ) -> ExecutionResult:
        """Run ``code``; return once the reply and the idle status have arrived.

        Args:
            on_output: called with each output message (``stream``,
                ``display_data``, ``execute_result``, ``error``, ...) as it
                arrives, in order.
            on_input: answers the kernel's ``input()``: called with an
                :class:`InputRequest`, returns the text. Defaults to the
                channel's ``on_input``.
            allow_stdin: defaults to whether an input handler exists.

        Raises:
            ExecutionDroppedError: the server dropped the request (interrupt,
                kill) or the kernel exited first.
            ChannelClosedError: the channel closed or could not reconnect.
            Exception: whatever ``on_output``/``on_input`` raised.

        Cancellation:
            Cancelling stops waiting; the kernel still runs the code.
        """
        on_input = on_input or self._default_on_input
        content = execute_content(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions,
            allow_stdin=(on_input is not None) if allow_stdin is None else allow_stdin,
            stop_on_error=stop_on_error,
        )
        msg = self._make("execute_request", content)
        action = _Action(
            msg["header"]["msg_id"], wait_idle=True, on_output=on_output, on_input=on_input
        )
        await self._run(action, msg)
        return action.collected.execution_result()

    async def kernel_info(self) -> dict[str, Any]:
        """``kernel_info_request``; returns the reply's content."""
        return (await self.request("kernel_info_request", {})).content

    async def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        """``complete_request`` (cursor at the end by default); returns the reply's content."""
        pos = len(code) if cursor_pos is None else cursor_pos
        return (await self.request("complete_request", {"code": code, "cursor_pos": pos})).content

    async def inspect(
        self, code: str, cursor_pos: int | None = None, detail_level: int = 0
    ) -> dict[str, Any]:
        """``inspect_request``; returns the reply's content."""
        pos = len(code) if cursor_pos is None else cursor_pos
        content = {"code": code, "cursor_pos": pos, "detail_level": detail_level}
        return (await self.request("inspect_request", content)).content

    async def request(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        channel: str = "shell",
        wait_idle: bool = False,
        on_output: MessageHandler | None = None,
    ) -> Message:
        """Send any request and return its reply.

        Args:
            wait_idle: also wait for the kernel's ``idle`` status for it.
        """
        msg = self._make(msg_type, content, channel=channel)
        action = _Action(msg["header"]["msg_id"], wait_idle=wait_idle, on_output=on_output)
        return await self._run(action, msg)

    # -------------------------------------------------------------- comms

    async def comm_open(
        self,
        target_name: str,
        data: dict[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        on_message: MessageHandler | None = None,
        comm_id: str | None = None,
    ) -> Comm:
        """Open a comm to ``target_name`` (registered in the kernel)."""
        comm = Comm(comm_id or uuid.uuid4().hex, target_name, channel=self)
        if on_message is not None:
            comm.on_message(on_message)
        self._comms[comm.comm_id] = comm
        content = {"comm_id": comm.comm_id, "target_name": target_name, "data": data or {}}
        try:
            await self._send(self._make("comm_open", content, metadata=metadata, buffers=buffers))
        except BaseException:
            self._comms.pop(comm.comm_id, None)
            raise
        return comm

    def register_comm_target(self, target_name: str, handler: CommTargetHandler) -> None:
        """Accept comms the kernel opens to ``target_name``.

        ``handler(comm, open_msg)`` is called for each; comms to unknown
        targets are closed at once.
        """
        self._comm_targets[target_name] = handler

    @property
    def comms(self) -> dict[str, Comm]:
        """Open comms by ``comm_id`` (a copy)."""
        return dict(self._comms)

    # ------------------------------------------------------------- events

    @contextlib.contextmanager
    def subscribe_events(self) -> Iterator[trio.MemoryReceiveChannel[KernelEvent]]:
        """Receive every kernel event (``status``, ``exited``, ...) while in the block.

        The receive channel ends when the channel closes.
        """
        with self._subscribe(self._event_subs) as receive:
            yield receive

    @contextlib.contextmanager
    def subscribe_messages(self) -> Iterator[trio.MemoryReceiveChannel[Message]]:
        """Receive every Jupyter message (a tap; routing is unaffected)."""
        with self._subscribe(self._message_subs) as receive:
            yield receive

    @contextlib.contextmanager
    def _subscribe(self, subs: set[trio.MemorySendChannel[Any]]) -> Iterator[Any]:
        send, receive = trio.open_memory_channel[Any](SUBSCRIBER_BUFFER)
        if self._closed_reason is not None:
            send.close()
        else:
            subs.add(send)
        try:
            yield receive
        finally:
            subs.discard(send)
            send.close()
            receive.close()

    # -------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """Whether a connection is currently up."""
        return self._ws is not None and self._closed_reason is None

    async def aclose(self) -> None:
        """Leave gracefully: everything unread stays queued on the server.

        Pending actions fail with :class:`ChannelClosedError`. Idempotent.

        Cancellation:
            Bounded by :data:`CLOSE_TIMEOUT`; safe to call shielded.
        """
        if self._closing:
            await self._reader_done.wait()
            return
        self._closing = True
        ws = self._ws
        if ws is not None and self._closed_reason is None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                with contextlib.suppress(
                    trio_websocket.ConnectionClosed,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                ):
                    async with self._send_lock:
                        await ws.send_message("")
                await self._reader_done.wait()
        self._finish("the channel was closed")
        await self._drop_connection()

    async def _drop_connection(self) -> None:
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

    def _finish(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for action in list(self._actions.values()):
            action.fail(ChannelClosedError(reason))
        for sub in list(self._event_subs) + list(self._message_subs):
            sub.close()
        self._event_subs.clear()
        self._message_subs.clear()
        self._signal_change()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ connect

    async def _connect(self) -> None:
        """Open a new connection and make it current.

        Raises:
            KallichoreClientError: the server refused (unknown session, bad
                token) -- not worth retrying.
            OSError, trio_websocket.HandshakeError, trio.TooSlowError:
                transient; worth retrying.
        """
        client = self._client
        resource = f"/sessions/{self.session_id}/channels"
        headers: list[tuple[bytes, bytes]] = []
        if client.token:
            headers.append((b"Authorization", f"Bearer {client.token}".encode()))
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream
            if client.socket_path is not None:
                path = await client.channels_upgrade(self.session_id)
                stream = await trio.open_unix_socket(path)
                host = "localhost"
            else:
                url = urlsplit(client.base_url or "")
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
                raise _rejected(exc) from None
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        self._ws, self._stream = ws, stream
        self._signal_change()

    async def _let_backlog_pass(self) -> None:
        """Let the frames queued before we attached go by before our first request.

        While no client is attached the server queues everything for the next
        one and flushes it, in order, on connect (docs/channels.md). After a
        restart that includes the old kernel's ``exited``, which would fail
        whatever request we had sent by then. A ``kernel_info_request`` on the
        control channel (no execution in progress holds it up) marks the end:
        the server's queue is first in, first out, so its reply comes after
        all of the backlog. Its idle status is waited for too (it may come
        after the reply), so that it does not greet the caller. Skipped when
        the session has no running kernel (the server would drop the
        request); a kernel that does not answer is waited for at most
        :data:`BACKLOG_TIMEOUT`.
        """
        status = await self._session_status()
        if status is None:
            return
        self._kernel_running = status not in _NO_KERNEL
        if status not in (SessionStatus.READY, SessionStatus.IDLE, SessionStatus.BUSY):
            return
        request = self._make("kernel_info_request", {}, channel="control")
        fence = self._fence = _Fence(str(request["header"]["msg_id"]))
        try:
            with trio.move_on_after(BACKLOG_TIMEOUT):
                await self._send(request)
                await fence.done.wait()
            if not fence.done.is_set():
                logger.info(
                    "channel %s: no kernel_info_reply and idle within %g s; going on",
                    self.session_id,
                    BACKLOG_TIMEOUT,
                )
        finally:
            self._fence = None

    async def _reconnect_after_drop(self) -> bool:
        """Reconnect with backoff; ``False`` if we gave up (the channel is finished)."""
        await self._drop_connection()
        self._signal_change()
        if not self._reconnect:
            self._finish("the connection to the server was lost")
            return False
        pause, max_pause = RECONNECT_BACKOFF
        last: BaseException | None = None
        with trio.move_on_after(self._reconnect_timeout):
            while not self._closing:
                try:
                    await self._connect()
                except KallichoreClientError as exc:
                    if exc.status is not None:  # the server answered "no"
                        self._finish(f"reconnect refused: {exc}")
                        return False
                    last = exc
                except (OSError, trio_websocket.HandshakeError, trio.TooSlowError) as exc:
                    last = exc
                else:
                    self.reconnects += 1
                    logger.info("channel %s reconnected", self.session_id)
                    return True
                await trio.sleep(pause)
                pause = min(max_pause, pause * 2)
        self._finish(f"could not reconnect: {last}" if last else "could not reconnect")
        return False

    # ------------------------------------------------------------- reader

    async def _reader_task(self) -> None:
        try:
            while self._closed_reason is None:
                ws = self._ws
                if ws is None:
                    if self._closing or not await self._reconnect_after_drop():
                        return
                    continue
                try:
                    text = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    if self._closing or self._closed_reason is not None:
                        return
                    logger.info("channel %s: connection lost", self.session_id)
                    if not await self._reconnect_after_drop():
                        return
                    continue
                if isinstance(text, str) and text:
                    await self._dispatch(text)
        finally:
            self._reader_done.set()

    async def _dispatch(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            logger.warning("channel %s: unparsable frame dropped", self.session_id)
            return
        if not isinstance(frame, dict):
            return
        if frame.get("kind") == "kernel":
            for name, value in frame.items():
                if name != "kind":
                    self._on_kernel_event(KernelEvent(name, value))
            return
        try:
            msg = Message.from_frame(frame)
        except (ValueError, TypeError) as exc:
            logger.warning("channel %s: bad jupyter frame dropped: %s", self.session_id, exc)
            return
        self._publish(self._message_subs, msg)
        if msg.msg_type in ("comm_open", "comm_msg", "comm_close"):
            await self._route_comm(msg)
        parent = msg.parent_id
        fence = self._fence
        if fence is not None and parent == fence.msg_id:
            fence.saw(msg)
        action = self._actions.get(parent) if parent else None
        if action is None or action.done.is_set():
            return
        if msg.msg_type == "input_request":
            self._nursery.start_soon(self._answer_input, action, msg)
        elif action.collected.receive(msg) and action.on_output is not None:
            try:
                await _call(action.on_output, msg)
            except Exception as exc:
                action.error = action.error or exc
        action.check_done()

    def _on_kernel_event(self, event: KernelEvent) -> None:
        if event.name == "clientDisconnected":
            # Another client took the session: do not fight it for the socket.
            self._closed_reason = f"another client took over the session: {event.value}"
        elif event.name == "status" and isinstance(event.value, dict):
            self._kernel_running = event.value.get("status") not in _NO_KERNEL_STATES
        elif event.name == "exited":
            self._kernel_running = False
            for action in list(self._actions.values()):
                action.fail(ExecutionDroppedError(f"the kernel exited (code {event.value})"))
        elif event.name == "executionsDropped" and isinstance(event.value, dict):
            reason = event.value.get("reason", "dropped")
            for msg_id in event.value.get("msg_ids") or []:
                dropped = self._actions.get(str(msg_id))
                if dropped is not None:
                    dropped.fail(ExecutionDroppedError(f"the request was dropped ({reason})"))
        self._publish(self._event_subs, event)
        if self._closed_reason is not None:
            self._finish(self._closed_reason)

    def _publish(self, subs: set[trio.MemorySendChannel[Any]], item: Any) -> None:
        for sub in list(subs):
            try:
                sub.send_nowait(item)
            except trio.WouldBlock:
                logger.warning("channel %s: a slow subscriber missed an item", self.session_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                subs.discard(sub)

    async def _route_comm(self, msg: Message) -> None:
        comm_id = str(msg.content.get("comm_id", ""))
        if msg.msg_type == "comm_open":
            target = str(msg.content.get("target_name", ""))
            handler = self._comm_targets.get(target)
            if handler is None:
                logger.info("channel %s: no comm target %r; closing", self.session_id, target)
                with contextlib.suppress(KallichoreClientError):
                    await self._send(self._make("comm_close", {"comm_id": comm_id, "data": {}}))
                return
            opened = Comm(comm_id, target, channel=self)
            self._comms[comm_id] = opened
            try:
                await _call(handler, opened, msg)
            except Exception:
                logger.exception("comm target %r failed", target)
            return
        comm = self._comms.get(comm_id)
        if comm is None:
            return
        if msg.msg_type == "comm_close":
            comm.closed = True
            self._comms.pop(comm_id, None)
        await comm._deliver(msg)

    async def _answer_input(self, action: _Action, msg: Message) -> None:
        handler = action.on_input or self._default_on_input
        value = ""
        if handler is None:
            logger.warning("channel %s: input_request without an input handler", self.session_id)
        else:
            request = InputRequest(
                prompt=str(msg.content.get("prompt", "")),
                password=bool(msg.content.get("password", False)),
                message=msg,
            )
            try:
                value = str(await _call(handler, request))
            except Exception as exc:
                action.error = action.error or exc
        reply = self._make(
            "input_reply", {"value": value}, channel="stdin", parent=dict(msg.header)
        )
        try:
            await self._send(reply)
        except KallichoreClientError as exc:
            action.fail(exc)

    # ------------------------------------------------------------ sending

    async def _run(self, action: _Action, msg: dict[str, Any]) -> Message:
        await self._require_kernel()
        self._actions[action.msg_id] = action
        try:
            await self._send(msg)
            await action.done.wait()
        finally:
            self._actions.pop(action.msg_id, None)
        if action.error is not None:
            raise action.error
        assert action.collected.reply is not None
        return action.collected.reply

    async def _require_kernel(self) -> None:
        """Fail a request at once when the session has no kernel.

        The server drops requests for a session without a kernel, so the
        reply would never come. Status events can trail a start or restart
        made over REST, so the server is asked before failing.

        Raises:
            ExecutionDroppedError: the session has exited or was never started.
        """
        if self._kernel_running:
            return
        status = await self._session_status()
        if status is None:
            return  # the send will tell
        if status in _NO_KERNEL:
            raise ExecutionDroppedError(
                f"session {self.session_id} has no running kernel (status: {status.value})"
            )
        self._kernel_running = True

    async def _session_status(self) -> SessionStatus | None:
        """The session's status from ``GET /sessions/{id}``; ``None`` if that failed."""
        try:
            return (await self._client.get_session(self.session_id)).status
        except KallichoreClientError:
            return None

    async def _send(self, msg: dict[str, Any]) -> None:
        """Send one frame, waiting out a reconnect if one is under way.

        Raises:
            ChannelClosedError: the channel is closed or gave up reconnecting.
        """
        text = json.dumps(msg)
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
            except (
                trio_websocket.ConnectionClosed,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ):
                # The reader notices the drop and reconnects; send again then.
                if self._ws is ws:
                    await changed.wait()

    def _make(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        channel: str = "shell",
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> dict[str, Any]:
        return client_message(
            msg_type,
            content,
            channel=channel,
            parent=parent,
            metadata=metadata,
            buffers=buffers or (),
            session=self._jupyter_session,
            username=self._username,
        )


def _rejected(exc: trio_websocket.ConnectionRejected) -> KallichoreClientError:
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


@attrs.define(eq=False)
class _Fence:
    """A request whose reply and idle status end the backlog."""

    msg_id: str
    replied: bool = False
    idle: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)

    def saw(self, msg: Message) -> None:
        if msg.msg_type.endswith("_reply"):
            self.replied = True
        elif msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
            self.idle = True
        if self.replied and self.idle:
            self.done.set()


@contextlib.asynccontextmanager
async def open_channel(
    client: KallichoreClient,
    session_id: str,
    *,
    on_input: InputHandler | None = None,
    reconnect: bool = True,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    username: str = "kallichore-client",
) -> AsyncIterator[Channel]:
    """Attach to ``session_id``'s channel for the duration of the block.

    Attaching takes the session over from any other client. On exit the
    channel leaves gracefully (:meth:`Channel.aclose`).

    Args:
        on_input: the default stdin handler for executions.
        reconnect: reconnect after a dropped connection.
        reconnect_timeout: how long to keep trying, in seconds.

    Raises:
        KallichoreClientError: the first connection failed (unknown session
            is ``status=400``, bad token ``401``, no server ``None``).
    """
    if not math.isfinite(reconnect_timeout) or reconnect_timeout < 0:
        raise ValueError("reconnect_timeout must be a finite, non-negative number")
    try:
        async with trio.open_nursery() as nursery:
            channel = Channel(
                session_id,
                client=client,
                nursery=nursery,
                on_input=on_input,
                reconnect=reconnect,
                reconnect_timeout=reconnect_timeout,
                username=username,
            )
            try:
                await channel._connect()
            except (OSError, trio_websocket.HandshakeError, trio.TooSlowError) as exc:
                raise KallichoreClientError(
                    f"cannot open the channel of session {session_id}: {exc}"
                ) from None
            nursery.start_soon(channel._reader_task)
            try:
                await channel._let_backlog_pass()
                yield channel
            finally:
                with trio.CancelScope(shield=True):
                    await channel.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # trio wraps whatever leaves a nursery, the caller's own exception
        # included, in a group: raise the one that matters as it is.
        _reraise(_one_exception(group))


def _one_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception ``open_channel`` should raise for what left its nursery.

    Our own tasks end quietly; trio-websocket's reader task (it runs in our
    nursery) raises ``ConnectionRejected`` when the server refuses the
    upgrade, sometimes before our handshake call turns the same refusal
    into a :class:`KallichoreClientError`, sometimes beside it.
    """
    leaves = [exc for exc in group.exceptions if not isinstance(exc, trio.Cancelled)]
    for exc in leaves:
        if isinstance(exc, KallichoreClientError):
            return exc
    for exc in leaves:
        if isinstance(exc, trio_websocket.ConnectionRejected):
            return _rejected(exc)
    if len(group.exceptions) == 1:
        return group.exceptions[0]
    return group


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` from an ``except`` block without chaining the group to it."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
