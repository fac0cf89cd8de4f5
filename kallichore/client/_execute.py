"""``kcclient execute``: run code, show its output as it comes, and let Ctrl-C interrupt the kernel.

Ctrl-C behaves as in ``jupyter console``: the first one asks the server to
interrupt the kernel (``POST /sessions/{id}/interrupt``) and waits up to
:data:`INTERRUPT_GRACE` seconds for the interrupted execution's reply (whose
``KeyboardInterrupt`` traceback is shown), then the command exits 130; a
second Ctrl-C exits 130 at once. Either way the kernel is no longer left
running the code. While the code runs, SIGINT is taken from trio with
``trio.open_signal_receiver`` so that it never lands as a
``KeyboardInterrupt`` in the middle of the channel.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import attrs
import trio

from kallichore.client._errors import ExecutionDroppedError, KallichoreClientError, unwrap_group
from kallichore.client._models import ExecutionResult, InputRequest, Message
from kallichore.client._output import OutputClosedError, TextOutput, strip_ansi_deep
from kallichore.client._rest import KallichoreClient
from kallichore.protocol.converter import unstructure

__all__ = ["EXIT_INTERRUPTED", "EXIT_PIPE_CLOSED", "INTERRUPT_GRACE", "execute_command", "show"]

#: How long the first Ctrl-C waits for the interrupted execution's reply.
INTERRUPT_GRACE = 5.0  # seconds
#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status when stdout's reader went away, as for a process ended by SIGPIPE.
EXIT_PIPE_CLOSED = 141


def show(out: TextOutput, msg: Message) -> None:
    """Write one output message as text: streams as they are, results and tracebacks on their own lines.

    Raises:
        OutputClosedError: the reader of stdout or stderr went away.
    """
    content = msg.content
    if msg.msg_type == "stream":
        stream = out.stderr if content.get("name") == "stderr" else out.stdout
        out.write(stream, str(content.get("text", "")))
    elif msg.msg_type in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data") or {}
        text = data.get("text/plain")
        if text is None:
            kinds = ", ".join(sorted(data)) or "no data"
            text = f"<{msg.msg_type}: {kinds}>"
        out.write_block(out.stdout, str(text))
    elif msg.msg_type == "error":
        out.write_block(out.stderr, "\n".join(str(t) for t in content.get("traceback", [])))


def result_document(
    result: ExecutionResult | None, outputs: list[Message] | None = None
) -> dict[str, Any]:
    """The ``--json`` document of an execution; tracebacks are plain text.

    Without a result (Ctrl-C ended the wait first) the status is
    ``"interrupted"`` and ``outputs`` are those seen until then.
    """
    seen = result.outputs if result is not None else outputs or []
    return {
        "status": result.status if result is not None else "interrupted",
        "execution_count": result.execution_count if result is not None else None,
        "outputs": [
            {
                "msg_type": m.msg_type,
                "content": strip_ansi_deep(m.content) if m.msg_type == "error" else m.content,
            }
            for m in seen
        ],
        "error": strip_ansi_deep(unstructure(result.error)) if result and result.error else None,
    }


@attrs.define(eq=False)
class _Interruptible:
    """Runs one execution; Ctrl-C interrupts the kernel, a second one gives up."""

    client: KallichoreClient
    session_id: str
    err: TextIO
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    interrupts: int = 0

    async def run(self, job: Callable[[], Awaitable[ExecutionResult]]) -> ExecutionResult | None:
        """``await job()``, or ``None`` if Ctrl-C (or a closed pipe) ended the wait first."""
        if threading.current_thread() is not threading.main_thread():
            with self.scope:
                return await job()
            return None
        # The watcher never raises: what fails is the job (ExecutionDroppedError, ...).
        with self.scope, trio.open_signal_receiver(signal.SIGINT) as signals, unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, signals, nursery)
                result = await job()
                nursery.cancel_scope.cancel()
                return result
        return None

    async def _watch(self, signals: Any, nursery: trio.Nursery) -> None:
        async for _ in signals:
            self.interrupts += 1
            if self.interrupts > 1:
                self.scope.cancel(reason="second Ctrl-C")
                return
            # The wait for the interrupted reply gets a bound; the code does not.
            self.scope.deadline = trio.current_time() + INTERRUPT_GRACE
            nursery.start_soon(self._interrupt)

    async def _interrupt(self) -> None:
        self.err.write("kcclient: interrupting the kernel (Ctrl-C again to quit at once)\n")
        self.err.flush()
        try:
            await self.client.interrupt_session(self.session_id)
        except KallichoreClientError as exc:
            self.err.write(f"kcclient: could not interrupt the kernel: {exc}\n")
            self.err.flush()


async def execute_command(
    client: KallichoreClient, session_id: str, code: str, *, as_json: bool, interactive: bool
) -> int:
    """Run ``code`` in the session and print its output; return the exit status.

    0 when the code ran, 1 when it raised, :data:`EXIT_INTERRUPTED` after
    Ctrl-C, :data:`EXIT_PIPE_CLOSED` when stdout's reader went away.
    """
    out = TextOutput()
    runner = _Interruptible(client, session_id, sys.stderr)
    closed: list[OutputClosedError] = []
    seen: list[Message] = []

    def on_output(msg: Message) -> None:
        seen.append(msg)
        if as_json or closed:
            return
        try:
            show(out, msg)
        except OutputClosedError as exc:
            closed.append(exc)
            runner.scope.cancel(reason="output closed")

    async with client.open_channel(session_id) as channel:

        async def job() -> ExecutionResult:
            result: ExecutionResult = await channel.execute(
                code, on_output=on_output, on_input=_ask if interactive else None
            )
            return result

        dropped = False
        try:
            result = await runner.run(job)
        except ExecutionDroppedError:
            if not runner.interrupts:
                raise
            # Queued behind other work: the interrupt made the server drop it.
            result, dropped = None, True
    if closed:
        return EXIT_PIPE_CLOSED
    if as_json:
        print(json.dumps(result_document(result, seen), indent=2))
    for stream in (out.stdout, out.stderr):
        if stream.isatty():
            out.finish_line(stream)
    if runner.interrupts:
        if result is None and runner.interrupts == 1 and not dropped:
            print(
                f"kcclient: the kernel did not answer the interrupt within "
                f"{INTERRUPT_GRACE:g} s; it may still be busy",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    assert result is not None
    return 0 if result.ok else 1


async def _ask(request: InputRequest) -> str:
    """Answer the kernel's ``input()`` from our terminal."""

    def ask() -> str:
        import getpass

        if request.password:
            return getpass.getpass(request.prompt)
        return input(request.prompt)

    try:
        return await trio.to_thread.run_sync(ask, abandon_on_cancel=True)
    except EOFError:
        return ""
