"""The Jupyter channel of one session: awaitable actions, handlers, comms, events.

Theory of operation
-------------------

One WebSocket per session (``docs/channels.md``), kept by a
:class:`~kallichore.client._websocket.ReconnectingWebSocket`.
:func:`open_channel` owns a nursery with two kinds of task: trio-websocket's
own reader for the current connection, and our ``_reader_task``, which takes
one frame at a time and dispatches it:

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
  ``comm_msg`` and ``comm_close`` go to the channel's
  :class:`~kallichore.client._comm.Comms`, which routes them to
  :class:`Comm` objects by ``comm_id``. Every Jupyter message also goes to
  message subscribers.

Before :func:`open_channel` hands the channel out it lets the frames the
server queued while no client was attached go by (a ``kernel_info_request``
on control marks their end), so that an old kernel's ``exited`` among them
fails nothing sent on the new channel. A request on a session with no kernel
fails at once: the server would drop it without a reply.

An ``execute`` completes when both its ``execute_reply`` and its ``idle``
status have arrived (they come on different sockets, in either order); other
requests complete on their reply.

Reconnection (``_websocket.py``): when the connection drops, pending
actions, comms and subscribers are kept while the WebSocket reconnects;
output produced while we were away waits in the server's outbox.
:meth:`Channel.aclose` leaves gracefully, which loses nothing.

Handlers may be plain functions or coroutine functions. They run in the
reader task, so a slow handler delays dispatch (not the kernel: the server
buffers). An exception from an action's handler is re-raised from the
awaiting call once the action completes; one from a comm handler is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn, Protocol

import attrs
import trio
import trio_websocket

from kallichore.client._comm import Comm, Comms, CommTargetHandler
from kallichore.client._errors import (
    ChannelClosedError,
    ExecutionDroppedError,
    KallichoreClientError,
)
from kallichore.client._handler import InputHandler, MessageHandler, call_handler
from kallichore.client._models import (
    ActiveSession,
    ExecutionResult,
    InputRequest,
    KernelEvent,
    Message,
    SessionStatus,
)
from kallichore.client._pending import BacklogFence, PendingRequest
from kallichore.client._subscribers import Subscribers
from kallichore.client._websocket import (
    CLOSE_TIMEOUT,
    RECONNECT_TIMEOUT,
    ChannelEndpoint,
    ReconnectingWebSocket,
    rejected,
)
from kallichore.protocol.envelope import client_message, execute_content

__all__ = ["Channel", "ChannelClient", "open_channel"]

logger = logging.getLogger(__name__)

#: Bound on letting the frames queued before we attached go by (see
#: Channel._let_backlog_pass): only a kernel that does not answer waits it out.
BACKLOG_TIMEOUT = 5.0  # seconds

#: Session statuses in which there is no kernel to take a request.
_NO_KERNEL = frozenset({SessionStatus.EXITED, SessionStatus.UNINITIALIZED})
_NO_KERNEL_STATES = frozenset(status.value for status in _NO_KERNEL)


class ChannelClient(ChannelEndpoint, Protocol):
    """What a channel needs of the REST client
    (:class:`~kallichore.client.KallichoreClient`)."""

    async def get_session(self, session_id: str) -> ActiveSession: ...


@attrs.define(eq=False)
class Channel:
    """A session's Jupyter channel. Make one with :func:`open_channel`.

    Attributes:
        session_id: the Kallichore session.
    """

    session_id: str
    _client: ChannelClient = attrs.field(alias="client", repr=False)
    _websocket: ReconnectingWebSocket = attrs.field(alias="websocket")
    _nursery: trio.Nursery = attrs.field(alias="nursery", repr=False)
    _default_on_input: InputHandler | None = attrs.field(alias="on_input", default=None)
    _username: str = attrs.field(alias="username", default="kallichore-client")
    _actions: dict[str, PendingRequest] = attrs.field(factory=dict, repr=False)
    _comms: Comms = attrs.field(init=False, repr=False)
    _events: Subscribers[KernelEvent] = attrs.field(init=False, repr=False)
    _messages: Subscribers[Message] = attrs.field(init=False, repr=False)
    _jupyter_session: str = attrs.field(factory=lambda: uuid.uuid4().hex, repr=False)
    _reader_done: trio.Event = attrs.field(factory=trio.Event, repr=False)
    # Whether the session has a kernel to send requests to: from GET
    # /sessions/{id} when the channel opens, then from status events.
    _kernel_running: bool = attrs.field(default=True, repr=False)
    # The request that marks the end of the backlog (only while open_channel waits).
    _fence: BacklogFence | None = attrs.field(default=None, repr=False)

    @_comms.default
    def _new_comms(self) -> Comms:
        return Comms(session_id=self.session_id, send=self._send_new)

    @_events.default
    def _new_event_subscribers(self) -> Subscribers[KernelEvent]:
        return Subscribers(session_id=self.session_id)

    @_messages.default
    def _new_message_subscribers(self) -> Subscribers[Message]:
        return Subscribers(session_id=self.session_id)

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established."""
        return self._websocket.reconnects

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
        action = PendingRequest(
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
        action = PendingRequest(msg["header"]["msg_id"], wait_idle=wait_idle, on_output=on_output)
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
        comm = Comm(comm_id or uuid.uuid4().hex, target_name, comms=self._comms)
        if on_message is not None:
            comm.on_message(on_message)
        self._comms.add(comm)
        content = {"comm_id": comm.comm_id, "target_name": target_name, "data": data or {}}
        try:
            await self._send_new("comm_open", content, metadata=metadata, buffers=buffers)
        except BaseException:
            self._comms.forget(comm.comm_id)
            raise
        return comm

    def register_comm_target(self, target_name: str, handler: CommTargetHandler) -> None:
        """Accept comms the kernel opens to ``target_name``.

        ``handler(comm, open_msg)`` is called for each; comms to unknown
        targets are closed at once.
        """
        self._comms.register_target(target_name, handler)

    @property
    def comms(self) -> dict[str, Comm]:
        """Open comms by ``comm_id`` (a copy)."""
        return self._comms.snapshot()

    # ------------------------------------------------------------- events

    @contextlib.contextmanager
    def subscribe_events(self) -> Iterator[trio.MemoryReceiveChannel[KernelEvent]]:
        """Receive every kernel event (``status``, ``exited``, ...) while in the block.

        The receive channel ends when the channel closes.
        """
        with self._events.subscribe() as receive:
            yield receive

    @contextlib.contextmanager
    def subscribe_messages(self) -> Iterator[trio.MemoryReceiveChannel[Message]]:
        """Receive every Jupyter message (a tap; routing is unaffected)."""
        with self._messages.subscribe() as receive:
            yield receive

    # -------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """Whether a connection is currently up."""
        return self._websocket.connected

    async def aclose(self) -> None:
        """Leave gracefully: everything unread stays queued on the server.

        Pending actions fail with :class:`ChannelClosedError`. Idempotent.

        Cancellation:
            Bounded by :data:`~kallichore.client._websocket.CLOSE_TIMEOUT`;
            safe to call shielded.
        """
        websocket = self._websocket
        if websocket.closing:
            await self._reader_done.wait()
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            if await websocket.leave():
                await self._reader_done.wait()
        self._finish("the channel was closed")
        await websocket.drop()

    def _finish(self, reason: str) -> None:
        self._websocket.finish(reason)
        for action in list(self._actions.values()):
            action.fail(ChannelClosedError(reason))
        self._events.close()
        self._messages.close()

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
        fence = self._fence = BacklogFence(str(request["header"]["msg_id"]))
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

    # ------------------------------------------------------------- reader

    async def _reader_task(self) -> None:
        try:
            while (text := await self._websocket.receive()) is not None:
                await self._dispatch(text)
        except ChannelClosedError as lost:
            self._finish(lost.message)
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
        self._messages.publish(msg)
        if msg.msg_type in ("comm_open", "comm_msg", "comm_close"):
            await self._comms.route(msg)
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
                await call_handler(action.on_output, msg)
            except Exception as exc:
                action.error = action.error or exc
        action.check_done()

    def _on_kernel_event(self, event: KernelEvent) -> None:
        if event.name == "clientDisconnected":
            # Another client took the session: do not fight it for the socket.
            self._websocket.finish(f"another client took over the session: {event.value}")
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
        self._events.publish(event)
        closed_reason = self._websocket.closed_reason
        if closed_reason is not None:
            self._finish(closed_reason)

    async def _answer_input(self, action: PendingRequest, msg: Message) -> None:
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
                value = str(await call_handler(handler, request))
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

    async def _run(self, action: PendingRequest, msg: dict[str, Any]) -> Message:
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
        """Send one message, waiting out a reconnect if one is under way.

        Raises:
            ChannelClosedError: the channel is closed or gave up reconnecting.
        """
        await self._websocket.send(json.dumps(msg))

    async def _send_new(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> str:
        """Send a new shell message; returns its ``msg_id`` (comms send with this)."""
        msg = self._make(msg_type, content, metadata=metadata, buffers=buffers)
        await self._send(msg)
        return str(msg["header"]["msg_id"])

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


@contextlib.asynccontextmanager
async def open_channel(
    client: ChannelClient,
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
        client: the server's :class:`~kallichore.client.KallichoreClient`.
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
            websocket = ReconnectingWebSocket(
                session_id,
                endpoint=client,
                nursery=nursery,
                reconnect=reconnect,
                reconnect_timeout=reconnect_timeout,
            )
            channel = Channel(
                session_id,
                client=client,
                websocket=websocket,
                nursery=nursery,
                on_input=on_input,
                username=username,
            )
            try:
                await websocket.connect()
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
            return rejected(exc)
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
