"""Running code from inside the process: the engine of :meth:`kallichore.embed.Session.execute`.

Theory of operation
-------------------

The ``execute_request`` takes the path a client's takes: into the session's
execution queue (:meth:`KernelSession.send_from_client`), so it runs in turn
with the requests of whatever client is attached, and shows up in the
session's ``execution_queue``. It does not attach as the session's client
(that would take the session over from a WebSocket client). Instead a
:class:`_Watcher` registered under the request's ``msg_id``
(:meth:`KernelSession.watch`) receives the request's messages as the client
frames a WebSocket client would get; they are built into the client
library's :class:`~kallichore.protocol.execution.ExecutionResult` by the same
:class:`~kallichore.protocol.execution.ReplyCollector` the client uses. The
attached client still sees the request's iopub traffic (as any Jupyter
frontend sees other frontends' output); its reply goes only to the watcher.

The request is complete on its ``execute_reply`` and its ``idle`` status.
It fails with :class:`~kallichore.errors.ExecutionDroppedError` when the
queue drops it (interrupt, kill, shutdown) or the kernel exits first.

Cancellation: if the caller is cancelled (``trio.fail_after`` around the
call), a request still queued is withdrawn and never runs; one the kernel is
running is interrupted (SIGINT or ``interrupt_request``, per the session's
``interrupt_mode``; other requests stay queued), and the call waits up to
:data:`CANCEL_GRACE` seconds, shielded, for its reply and ``idle``, so the
session is idle again when the cancellation reaches the caller. A kernel
that ignores the interrupt is left running the code (logged).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import orjson
import trio

from kallichore.errors import ExecutionDroppedError
from kallichore.protocol.envelope import client_message, execute_content
from kallichore.protocol.execution import ExecutionResult, Message, ReplyCollector
from kallichore.supervisor.session import KernelSession

__all__ = ["CANCEL_GRACE", "OutputHandler", "execute"]

logger = logging.getLogger(__name__)

#: After a cancelled execution's interrupt, how long to wait (shielded) for
#: the kernel's reply and idle status.
CANCEL_GRACE = 5.0  # seconds

#: Called with each output message as it arrives; plain or coroutine function.
OutputHandler = Callable[[Message], Awaitable[None] | None]


@attrs.define(eq=False)
class _Watcher:
    """One request's messages, from the session's tasks to the caller's."""

    collected: ReplyCollector
    # Why the request will get no more messages, once it will not.
    dropped: str | None = None
    # The first exception of the caller's output handler.
    handler_error: Exception | None = None
    # Frames delivered and not yet collected (the caller's task drains them).
    _frames: deque[bytes] = attrs.field(factory=deque)
    # Set when a frame or the drop arrives; replaced after each wake-up.
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def deliver(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._changed.set()

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
        self._changed.set()

    @property
    def finished(self) -> bool:
        return self.collected.complete or (self.dropped is not None and not self._frames)

    async def wait_finished(self, on_output: OutputHandler | None) -> None:
        """Collect delivered frames until the request is complete or dropped."""
        while True:
            while self._frames:
                try:
                    msg = Message.from_frame(orjson.loads(self._frames.popleft()))
                except ValueError:
                    continue  # the session encoded it: cannot happen; not worth a crash
                if self.collected.receive(msg) and on_output is not None:
                    await self._call(on_output, msg)
            if self.finished:
                await trio.lowlevel.checkpoint()
                return
            await self._changed.wait()
            self._changed = trio.Event()

    async def _call(self, on_output: OutputHandler, msg: Message) -> None:
        try:
            result = on_output(msg)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # re-raised once the execution is over, as the client does
            self.handler_error = self.handler_error or exc


async def execute(
    session: KernelSession,
    code: str,
    *,
    on_output: OutputHandler | None = None,
    silent: bool = False,
    store_history: bool = True,
    user_expressions: dict[str, str] | None = None,
    stop_on_error: bool = True,
) -> ExecutionResult:
    """Run ``code`` through ``session``'s execution queue; see the module's docstring.

    Errors:
        kallichore.errors.SessionStateError: the session has no running kernel.
        kallichore.errors.ExecutionDroppedError: dropped from the queue, or
            the kernel exited, before the execution finished.
        Exception: whatever ``on_output`` raised (after the execution finished).

    Cancellation:
        Withdraws or interrupts the execution, and waits (shielded, bounded
        by :data:`CANCEL_GRACE`) for the kernel to be idle again.
    """
    await trio.lowlevel.checkpoint()  # a caller already cancelled sends nothing
    content = execute_content(
        code,
        silent=silent,
        store_history=store_history,
        user_expressions=user_expressions,
        allow_stdin=False,  # nobody in process to answer input()
        stop_on_error=stop_on_error,
    )
    message = client_message("execute_request", content, username=session.spec.username)
    msg_id: str = message["header"]["msg_id"]
    watcher = _Watcher(ReplyCollector(msg_id, wait_idle=True))
    session.watch(msg_id, watcher)  # raises when there is no kernel
    try:
        # Once queued as active, the request must reach the kernel whole, or
        # the queue would wait for an idle status that never comes.
        with trio.CancelScope(shield=True):
            await session.send_from_client(message)
        try:
            await watcher.wait_finished(on_output)
        except trio.Cancelled:
            await _stop(session, watcher)
            raise
    finally:
        session.unwatch(msg_id)
    if watcher.handler_error is not None:
        raise watcher.handler_error
    if not watcher.collected.complete:
        raise ExecutionDroppedError(f"execution {msg_id} did not finish: {watcher.dropped}")
    return watcher.collected.execution_result()


async def _stop(session: KernelSession, watcher: _Watcher) -> None:
    """The caller gave up: withdraw or interrupt the request; wait (bounded) for idle."""
    collected = watcher.collected
    with trio.move_on_after(CANCEL_GRACE, shield=True):
        if collected.reply is None and watcher.dropped is None:
            await session.cancel_execution(collected.msg_id)
        await watcher.wait_finished(None)
    if not watcher.finished:
        logger.warning(
            "%r: cancelled execution %s still running %g s after its interrupt",
            session,
            collected.msg_id,
            CANCEL_GRACE,
        )
