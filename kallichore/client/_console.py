"""``kcclient console ID``: a line-oriented prompt on a running session.

Theory of operation
-------------------

The terminal belongs to the main thread: it reads code with ``input()``
(GNU readline when available, so line editing and history work), prints
every output, and answers the kernel's ``input()``. The session's channel
lives in a trio run on a second thread (:class:`_Portal`); the main thread
hands it work with ``trio.from_thread`` and receives everything an execution
produces through a :class:`queue.Queue`, one event at a time. Because the
main thread only ever blocks in ``input()`` or ``Queue.get``, Ctrl-C reaches
it as ``KeyboardInterrupt`` at either place:

* at the prompt, it abandons the line (as Python's own prompt does);
* while code runs (or the kernel waits in ``input()``), the first asks the
  server to interrupt the kernel and waits up to ``INTERRUPT_GRACE`` seconds
  for the interrupted reply; a second stops waiting. Either way the prompt
  comes back.

Lines are sent to the kernel's ``is_complete_request`` first, so a block
(``for ...:``) is read over several lines, as in ``jupyter console``. Ctrl-D
leaves and the kernel keeps running; the kernel's ``exit`` ends the kernel
(ipykernel's doing) and the console with it. History is kept
in ``<jupyter data dir>/kcclient_history`` (``~/.local/share/jupyter`` on
Linux, ``$JUPYTER_DATA_DIR`` when set).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio
from jupyter_core.paths import jupyter_data_dir

from kallichore.client._channel import Channel
from kallichore.client._errors import KallichoreClientError
from kallichore.client._execute import INTERRUPT_GRACE, show
from kallichore.client._models import ExecutionResult, InputRequest, Message
from kallichore.client._output import TextOutput
from kallichore.client._rest import KallichoreClient, open_client

__all__ = ["HISTORY_FILE_NAME", "history_path", "run_console"]

T = TypeVar("T")

#: The history file's name in jupyter_core's data directory.
HISTORY_FILE_NAME = "kcclient_history"
#: Lines of history kept.
HISTORY_LENGTH = 1000  # lines
#: Bound on asking the kernel whether a block is complete.
IS_COMPLETE_TIMEOUT = 5.0  # seconds


def history_path() -> str:
    """Where the console keeps its history."""
    return os.path.join(jupyter_data_dir(), HISTORY_FILE_NAME)


@attrs.define(eq=False)
class _Answer:
    """The main thread's answer to one ``input_request``."""

    value: str = ""
    given: trio.Event = attrs.field(factory=trio.Event)

    def give(self, value: str) -> None:
        self.value = value
        self.given.set()


@attrs.define(eq=False)
class _Run:
    """One execution: its cancel scope (trio side) and its events (main-thread side)."""

    code: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # ("output", Message) | ("input", (InputRequest, _Answer)) | ("warning", str)
    # | ("done", ExecutionResult) | ("failed", Exception) | ("stopped", None)
    events: queue.Queue[tuple[str, Any]] = attrs.field(factory=queue.Queue)


@attrs.define(eq=False)
class _Portal:
    """The trio run (on its own thread) that owns the client and the channel."""

    options: dict[str, Any]
    session_id: str
    kernel_info: dict[str, Any] = attrs.field(factory=dict)
    # The execution count the kernel will give the next cell.
    next_count: int = 1
    # Set once connected (before _ready), for the life of the trio thread.
    _client: KallichoreClient | None = None
    _channel: Channel | None = None
    _nursery: trio.Nursery | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None
    _error: BaseException | None = None
    _ready: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect; raises what connecting raised (an unknown session, a 401, ...)."""
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Leave the channel gracefully and end the thread."""
        if self._stop is not None and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the trio thread and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a task in the trio thread."""
        assert self._nursery is not None
        trio.from_thread.run_sync(self._nursery.start_soon, fn, *args, trio_token=self._token)

    def cancel(self, run: _Run) -> None:
        """Stop waiting for ``run`` (the kernel is not told)."""
        trio.from_thread.run_sync(run.scope.cancel, trio_token=self._token)

    def give(self, answer: _Answer, value: str) -> None:
        """Hand the main thread's answer to the waiting ``input_request``."""
        trio.from_thread.run_sync(answer.give, value, trio_token=self._token)

    async def _main(self) -> None:
        try:
            async with (
                open_client(**self.options) as client,
                client.open_channel(self.session_id) as channel,
            ):
                self._client, self._channel = client, channel
                self.kernel_info = await channel.kernel_info()
                # A silent, empty cell reports the last count without using one.
                probe = await channel.execute("", silent=True, store_history=False)
                self.next_count = (probe.execution_count or 0) + 1
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._ready.set()
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def execute(self, run: _Run) -> None:
        """Run ``run.code``; every output and the outcome go to ``run.events``."""

        async def ask(request: InputRequest) -> str:
            answer = _Answer()
            run.events.put(("input", (request, answer)))
            await answer.given.wait()
            return answer.value

        assert self._channel is not None
        with run.scope:
            try:
                result = await self._channel.execute(
                    run.code, on_output=lambda msg: run.events.put(("output", msg)), on_input=ask
                )
            except Exception as exc:
                run.events.put(("failed", exc))
            else:
                run.events.put(("done", result))
            return
        run.events.put(("stopped", None))

    async def interrupt(self, run: _Run) -> None:
        assert self._client is not None
        try:
            await self._client.interrupt_session(self.session_id)
        except KallichoreClientError as exc:
            run.events.put(("warning", f"could not interrupt the kernel: {exc}"))

    async def is_complete(self, code: str) -> tuple[str, str]:
        """The kernel's ``is_complete_reply`` (status, indent); ``unknown`` if none came in time."""
        assert self._channel is not None
        with trio.move_on_after(IS_COMPLETE_TIMEOUT):
            reply: Message = await self._channel.request("is_complete_request", {"code": code})
            return str(reply.content.get("status", "unknown")), str(reply.content.get("indent", ""))
        return "unknown", ""


def run_console(options: dict[str, Any], session_id: str) -> int:
    """Run the console on ``session_id``; returns the exit status (0 after Ctrl-D or ``exit``).

    Raises:
        KallichoreClientError: the session's channel could not be opened.
    """
    # Ctrl-C must reach us even when we inherited SIGINT ignored (a shell
    # script starts background commands that way): a console is for a person.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    portal = _Portal(options, session_id)
    portal.start()
    history = _History.load()
    try:
        return _Console(portal, TextOutput(), portal.next_count, history).loop()
    finally:
        history.save()
        portal.stop()
        signal.signal(signal.SIGINT, previous)


@attrs.define
class _History:
    """readline's history, loaded from and saved to :func:`history_path`."""

    readline: Any = None

    @classmethod
    def load(cls) -> _History:
        try:
            import readline
        except ImportError:  # no readline on this platform: no history
            return cls()
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError):
            readline.read_history_file(history_path())
        return cls(readline)

    def save(self) -> None:
        if self.readline is None:
            return
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(history_path()), exist_ok=True)
            self.readline.write_history_file(history_path())

    def forget_last(self) -> None:
        """Drop the last line (an answer to the kernel's ``input()``, not code)."""
        if self.readline is not None:
            length = self.readline.get_current_history_length()
            if length:
                self.readline.remove_history_item(length - 1)


@attrs.define(eq=False)
class _Console:
    """The prompt loop, on the main thread."""

    portal: _Portal
    out: TextOutput
    count: int = 1
    history: _History = attrs.field(factory=_History)

    def loop(self) -> int:
        banner = str(self.portal.kernel_info.get("banner", "")).strip()
        if banner:
            self.out.write_block(self.out.stdout, banner)
        self.out.write_block(
            self.out.stdout,
            "Ctrl-C interrupts the kernel; Ctrl-D leaves (the kernel keeps running).",
        )
        while True:
            try:
                code = self._read_code()
            except EOFError:
                self.out.write(self.out.stdout, "\n")
                return 0
            except KeyboardInterrupt:
                self.out.write(self.out.stdout, "\nKeyboardInterrupt\n")
                continue
            if code.strip() and self._run(code):
                return 0

    def _read_code(self) -> str:
        lines = [input(f"In [{self.count}]: ")]
        while True:
            status, indent = self.portal.call(self.portal.is_complete, "\n".join(lines))
            if status != "incomplete":
                return "\n".join(lines)
            continuation = " " * max(len(f"In [{self.count}]: ") - 5, 0) + "...: "
            line = input(continuation + indent)
            lines.append(indent + line)
            if not line.strip() and not indent.strip():
                return "\n".join(lines)

    def _run(self, code: str) -> bool:
        """Run ``code``; returns whether the kernel asked the console to exit."""
        run = _Run(code)
        self.portal.spawn(self.portal.execute, run)
        interrupts = 0
        deadline: float | None = None
        while True:
            try:
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                kind, payload = run.events.get(timeout=timeout)
                if kind in ("done", "failed", "stopped"):
                    return self._finish(kind, payload)
                self._handle(kind, payload)
            except queue.Empty:
                self._warn(f"the kernel did not answer the interrupt within {INTERRUPT_GRACE:g} s")
                self.portal.cancel(run)
                deadline = None
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    self._warn("interrupting the kernel (Ctrl-C again to stop waiting)")
                    self.portal.spawn(self.portal.interrupt, run)
                    deadline = time.monotonic() + INTERRUPT_GRACE
                else:
                    self.portal.cancel(run)
                    deadline = None

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "output":
            self._show(payload)
        elif kind == "input":
            self._answer(*payload)
        elif kind == "warning":
            self._warn(payload)

    def _show(self, msg: Message) -> None:
        if msg.msg_type == "execute_result":
            text = str((msg.content.get("data") or {}).get("text/plain", ""))
            self.out.write_block(self.out.stdout, f"Out[{self.count}]: {text}")
        else:
            show(self.out, msg)

    def _answer(self, request: InputRequest, answer: _Answer) -> None:
        self.out.finish_line(self.out.stdout)
        try:
            if request.password:
                value = getpass.getpass(request.prompt)
            else:
                value = input(request.prompt)
                self.history.forget_last()
        except EOFError:
            value = ""
        # Ctrl-C here goes up to _run, which interrupts the kernel; the answer
        # is then never given (the kernel stopped asking) and its task ends
        # with the channel.
        self.portal.give(answer, value)

    def _finish(self, kind: str, payload: Any) -> bool:
        for stream in (self.out.stdout, self.out.stderr):
            self.out.finish_line(stream)
        if kind == "failed":
            self._warn(str(payload))
        if kind != "done":
            return False
        result: ExecutionResult = payload
        if result.execution_count is not None:
            self.count = result.execution_count + 1
        payloads = result.reply.content.get("payload") or []
        return any(isinstance(p, dict) and p.get("source") == "ask_exit" for p in payloads)

    def _warn(self, text: str) -> None:
        self.out.write_block(self.out.stderr, f"kcclient: {text}")
