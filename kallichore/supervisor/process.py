"""Kernel processes under trio: spawn, output pumps, signals, and the shutdown ladder.

Theory of operation
-------------------

:func:`spawn_kernel_process` starts the kernel (or the shell that ``exec``\\ s
it, see :mod:`kallichore.supervisor.launch`) with ``start_new_session=True``:
the kernel leads its own session and process group, whose id equals its PID.
Every signal we send goes to that *group*, so an interrupt reaches the kernel
even behind a wrapper, and a shutdown reaches the kernel's children (R
``parallel`` workers, a reticulate Python) -- Kallichore signals one PID only
(history cases D24, D29). The new session also detaches kernels from the
server's terminal, so a Ctrl-C there is not delivered to every kernel.

The owner of a :class:`KernelProcess` (the session) runs
:meth:`KernelProcess.pump_output` in its nursery, and on every way out --
normal exit, kill, restart, cancellation -- calls
:func:`terminate_process_group`, modelled on trio's ``_run_process`` and
``_posix_deliver_cancel``: shielded, every wait bounded, a polite request,
then SIGTERM, then SIGKILL. Afterwards the rest of the group is SIGKILLed (so
no orphan survives its kernel), the leader is reaped, and the pipes are
closed once the pump has drained them (bounded) -- no zombies, no leaked fds.
Calling it after the kernel exited on its own is cheap and still does the
group cleanup.

Given a :class:`~kallichore.supervisor.lifeline.Lifeline`, the spawn registers
the kernel's group with the watchdog that kills it should the server die
without getting here, and :func:`terminate_process_group` takes it off once
the group is gone.

Exit codes follow Python's convention: the exit status for a normal exit,
``-signum`` for death by a signal (``-9`` after SIGKILL). Kallichore reports
``-1`` for every signal death; the API layer may map ours if it must.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import psutil
import trio

from kallichore import fd_limit
from kallichore.logs import SessionLog
from kallichore.supervisor.lifeline import Lifeline

__all__ = [
    "KILL_WARN_AFTER",
    "MAX_LINE_BYTES",
    "OUTPUT_DRAIN_GRACE",
    "READ_CHUNK_BYTES",
    "KernelProcess",
    "SupervisedProcess",
    "describe_status",
    "spawn_kernel_process",
    "terminate_process_group",
]

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024  # bytes; longer lines are emitted in pieces of at most this size
READ_CHUNK_BYTES = 64 * 1024  # bytes per read from a pipe
KILL_WARN_AFTER = 1.0  # seconds a SIGKILLed process may take to die before we warn
OUTPUT_DRAIN_GRACE = 1.0  # seconds the pump gets to reach EOF once the group is dead

#: Signature of the callback :meth:`KernelProcess.pump_output` feeds:
#: ``emit(stream_name, line)`` with stream_name ``"stdout"`` or ``"stderr"``.
EmitLine = Callable[[str, str], None]
#: Where :func:`terminate_process_group` logs: plain, or naming the session.
_Log = logging.Logger | SessionLog


class SupervisedProcess(Protocol):
    """What a session and :func:`terminate_process_group` need of a kernel process.

    :class:`KernelProcess` is the real one; a test can supply a fake that
    lives in virtual time (see :class:`kallichore.supervisor.backend.KernelBackend`).
    Signal methods are synchronous and never block; the meaning of each is
    :class:`KernelProcess`'s.
    """

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def output_pump_started(self) -> bool: ...

    async def wait(self) -> int: ...

    async def pump_output(self, emit: EmitLine) -> None: ...

    async def wait_output_closed(self) -> None: ...

    async def aclose_pipes(self) -> None: ...

    def signal_group(self, sig: int) -> bool: ...

    def interrupt(self) -> bool: ...

    def kill_group(self) -> bool: ...

    def forget_group(self) -> None: ...

    def note_escapees(self) -> None: ...

    def kill_escapees(self) -> int: ...

    def is_stopped(self) -> bool: ...


def describe_status(code: int) -> str:
    """``exit status: 1`` or ``signal: 9 (SIGKILL)``, as Kallichore words it."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal: {-code}"
        return f"signal: {-code} ({name})"
    return f"exit status: {code}"


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown signal"
    return f"killed by signal {-code} ({name})"


def _utf8_cut(data: bytearray, limit: int) -> int:
    """A cut position ``<= limit`` that does not split a UTF-8 character.

    Backs up over at most three continuation bytes (``10xxxxxx``); if the data
    is not UTF-8 at all, cuts at ``limit``.
    """
    cut = limit
    while cut > limit - 3 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if (data[cut] & 0xC0) != 0x80 else limit


def _bounded_pieces(line: bytearray) -> Iterator[bytearray]:
    """``line`` in pieces of at most :data:`MAX_LINE_BYTES`, split on character boundaries."""
    while len(line) > MAX_LINE_BYTES:
        cut = _utf8_cut(line, MAX_LINE_BYTES)
        yield line[:cut]
        line = line[cut:]
    if line:
        yield line


@attrs.define(eq=False, repr=False)
class KernelProcess:
    """A running kernel process that leads its own process group.

    Made by :func:`spawn_kernel_process`; not constructed directly.
    Signal methods are synchronous and never block.
    """

    # The trio process; its stdout/stderr are pipes owned by pump_output (or
    # closed by aclose_pipes), its stdin is /dev/null.
    _process: trio.Process = attrs.field(alias="process")
    # Told of the group while it may be alive (None: kernels outlive us).
    _lifeline: Lifeline | None = attrs.field(default=None, alias="lifeline")
    # True once pump_output has started; it may run only once.
    _pump_started: bool = attrs.field(default=False, init=False)
    # Descendants seen outside the kernel's process group (setsid), noted
    # when it was told to stop; killed after it (see kill_escapees).
    _escapees: dict[int, psutil.Process] = attrs.field(factory=dict, init=False)
    # Set when pump_output has finished with both pipes (and closed them).
    _output_closed: trio.Event = attrs.field(factory=trio.Event, init=False)

    @property
    def pid(self) -> int:
        """The kernel's process id (of the wrapping shell until it ``exec``\\ s)."""
        return self._process.pid

    @property
    def pgid(self) -> int:
        """The kernel's process group id; equal to :attr:`pid` (new session)."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code (see :meth:`wait`), or ``None`` while running.

        Reading it reaps the process if it has exited.
        """
        return self._process.returncode

    def __repr__(self) -> str:
        code = self.returncode
        status = "running" if code is None else _describe_exit(code)
        return f"<KernelProcess pid={self.pid} {status}>"

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to every process in the kernel's group.

        Note that once the leader has been reaped and every member is gone,
        its number could in principle be reused; we signal only the group we
        created, and :func:`terminate_process_group` does its final sweep right
        after reaping the leader.

        Returns:
            ``True`` if the signal was delivered to at least one process;
            ``False`` if the group no longer exists (or, as macOS reports for
            groups of zombies, no member could be signalled).
        """
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            logger.debug("killpg(%d, %d) refused: no signallable member", self.pgid, sig)
            return False
        return True

    def interrupt(self) -> bool:
        """Send SIGINT to the kernel's group (``interrupt_mode = signal``).

        Returns:
            ``False`` if the kernel has already exited (nothing is sent), else
            whether the signal was delivered.
        """
        if self.returncode is not None:
            return False
        return self.signal_group(signal.SIGINT)

    def is_stopped(self) -> bool:
        """Whether the kernel is stopped (SIGSTOP, a job-control stop, or a debugger's).

        A stopped kernel reads none of its sockets until it is continued.
        """
        if self.returncode is not None:
            return False
        try:
            status = psutil.Process(self.pid).status()
        except (psutil.Error, OSError):
            return False
        return status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)

    def forget_group(self) -> None:
        """The group is gone (leader reaped, group swept): take it off the lifeline."""
        if self._lifeline is not None:
            self._lifeline.forget(self.pgid)

    def kill_group(self) -> bool:
        """Send SIGKILL to the kernel's group (kernel and any children left in it).

        Descendants that left the group are noted first (:meth:`note_escapees`).

        Returns:
            Whether the signal was delivered to at least one process.
        """
        self.note_escapees()
        return self.signal_group(signal.SIGKILL)

    def note_escapees(self) -> None:
        """Remember the kernel's descendants that are outside its process group.

        A child that called ``setsid`` (or ``setpgid``) is out of reach of our
        group signals. While the kernel lives, its descendants can be found by
        walking the process tree; once it has exited they are re-parented and
        nothing ties them to it any more. So this is called before each step
        that may end the kernel, and :meth:`kill_escapees` kills them after it.
        A daemon that double-forked away before that is not in the tree and
        survives, as its author intended.
        """
        if self.returncode is not None:
            return
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except (psutil.Error, OSError):
            return
        for child in descendants:
            try:
                if os.getpgid(child.pid) != self.pgid:
                    self._escapees.setdefault(child.pid, child)
            except OSError:
                continue

    def kill_escapees(self) -> int:
        """SIGKILL the descendants :meth:`note_escapees` found; how many were alive.

        psutil checks each process's start time before signalling, so a
        recycled PID is never hit.
        """
        killed = 0
        for child in self._escapees.values():
            try:
                child.kill()
            except (psutil.Error, OSError):
                continue
            killed += 1
        self._escapees.clear()
        return killed

    async def wait(self) -> int:
        """Wait for the kernel to exit, and reap it.

        Returns:
            The exit status for a normal exit, ``-signum`` when killed by a
            signal (Python's ``returncode``; Kallichore reports ``-1`` there).

        **Cancellation:** safe; cancelling the wait leaves the process running.

        **Errors:** none.
        """
        return await self._process.wait()

    async def pump_output(self, emit: EmitLine) -> None:
        """Read stdout and stderr concurrently until both reach end of file.

        Calls ``emit("stdout" | "stderr", line)`` for each line, in order within
        each stream, with its trailing ``"\\n"``; a final line without a newline
        is emitted at end of file. Bytes are decoded as UTF-8 with
        ``errors="replace"`` (Kallichore's reader stops at the first invalid
        byte; ours keeps going). A line longer than :data:`MAX_LINE_BYTES` is
        emitted in pieces of at most that size, cut on character boundaries,
        so memory stays bounded whatever the kernel prints. ``emit`` must not
        block; it runs in the reader task.

        The pipes are closed when this returns, however it returns. A pipe
        closed under it by :meth:`aclose_pipes` counts as end of file.
        Children that inherited the pipes keep them open after the kernel
        exits; :func:`terminate_process_group` kills them, which ends this.

        **Cancellation:** stops reading; a pending partial line is dropped and
        both pipes are closed.

        **Errors:** whatever ``emit`` raises propagates (in an
        ``ExceptionGroup``, from the pump's nursery). ``RuntimeError`` if
        called twice.
        """
        if self._pump_started:
            raise RuntimeError(f"{self!r}: pump_output already started")
        self._pump_started = True
        try:
            async with trio.open_nursery() as nursery:
                for name, stream in (
                    ("stdout", self._process.stdout),
                    ("stderr", self._process.stderr),
                ):
                    if stream is not None:
                        nursery.start_soon(self._pump_stream, name, stream, emit)
        finally:
            # Normally each reader closed its own pipe; make sure of it (e.g.
            # when cancelled before a reader started).
            with trio.CancelScope(shield=True):
                await self.aclose_pipes()
            self._output_closed.set()

    async def _pump_stream(self, name: str, stream: trio.abc.ReceiveStream, emit: EmitLine) -> None:
        pending = bytearray()  # bytes after the last newline; <= MAX_LINE_BYTES between reads

        def emit_bytes(data: bytearray) -> None:
            for piece in _bounded_pieces(data):
                emit(name, piece.decode("utf-8", errors="replace"))

        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(READ_CHUNK_BYTES)
                except trio.ClosedResourceError:
                    break  # aclose_pipes: treated as end of file
                except trio.BrokenResourceError as exc:
                    logger.debug("%r: %s pipe broke: %r", self, name, exc)
                    break
                if not chunk:
                    break
                pending += chunk
                start = 0
                while (newline := pending.find(b"\n", start)) != -1:
                    emit_bytes(pending[start : newline + 1])
                    start = newline + 1
                del pending[:start]
                # An unterminated line may not grow without bound: flush full pieces.
                while len(pending) > MAX_LINE_BYTES:
                    cut = _utf8_cut(pending, MAX_LINE_BYTES)
                    emit_bytes(pending[:cut])
                    del pending[:cut]
        if pending:
            emit_bytes(pending)

    async def wait_output_closed(self) -> None:
        """Wait until :meth:`pump_output` has finished and closed the pipes.

        Never returns if the pump was not started; check
        :attr:`output_pump_started` first.

        **Cancellation:** safe.

        **Errors:** none.
        """
        await self._output_closed.wait()

    @property
    def output_pump_started(self) -> bool:
        """Whether :meth:`pump_output` has been called."""
        return self._pump_started

    async def aclose_pipes(self) -> None:
        """Close stdout and stderr now (idempotent).

        A running :meth:`pump_output` sees end of file; unread output is lost.

        **Cancellation:** the pipes are closed even when cancelled.

        **Errors:** none.
        """
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                await trio.aclose_forcefully(stream)


async def spawn_kernel_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str, lifeline: Lifeline | None = None
) -> KernelProcess:
    """Start a kernel (or its wrapping shell) as the leader of a new session.

    With a ``lifeline`` the kernel dies with the server (see
    :mod:`kallichore.supervisor.lifeline`): its group is registered with the
    watchdog and its environment names the server in ``JPY_PARENT_PID``.

    stdin is ``/dev/null`` (Kallichore lets kernels inherit the server's
    stdin); stdout and stderr are pipes for :meth:`KernelProcess.pump_output`.
    On Linux the kernel gets back the open-file limit the server started with
    (:func:`kallichore.fd_limit.restore_child_limit`).

    Args:
        argv: the command line, usually ``LaunchPlan.argv``; non-empty.
        env: the child's complete environment.
        cwd: the child's working directory.
        lifeline: the server's lifeline, or ``None`` to let the kernel
            outlive the server.

    Returns:
        The running process. Its owner must eventually call
        :func:`terminate_process_group` (which reaps it and closes the pipes).

    **Cancellation:** checked before spawning (then no process exists). Once
    the spawn has begun (in a worker thread) it completes and the process is
    returned even if a cancellation arrived meanwhile; that cancellation hits
    the caller's next checkpoint. So protect the result with
    ``try: … finally: await terminate_process_group(…)`` before awaiting
    anything else.

    **Errors:** ``OSError`` from the spawn propagates unwrapped (e.g.
    ``FileNotFoundError`` for a missing executable, ``PermissionError``,
    ``NotADirectoryError`` for a bad ``cwd``); the caller turns it into a
    ``StartupError`` with ``exit_code = exc.errno``. ``ValueError`` for an
    empty ``argv``.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if lifeline is not None:
        await lifeline.ensure_started()
        env = lifeline.kernel_env(env)
    process = await trio.lowlevel.open_process(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    kernel = KernelProcess(process=process, lifeline=lifeline)
    if lifeline is not None:
        lifeline.watch(kernel.pgid)
    logger.debug("spawned %r: %s", kernel, list(argv))
    fd_limit.restore_child_limit(process.pid)
    return kernel


async def terminate_process_group(
    proc: SupervisedProcess,
    *,
    polite: Callable[[], Awaitable[None]] | None,
    polite_grace: float,
    term_grace: float,
    session_id: str | None = None,
) -> int:
    """Stop a kernel and everything in its process group; reap it; close its pipes.

    The ladder, skipped as soon as the kernel has exited:

    1. ``polite()`` -- typically sends ``shutdown_request`` on control -- then
       wait for the exit; both within ``polite_grace`` seconds. If ``polite``
       raises, the error is logged and we go straight to step 2.
    2. SIGTERM, then SIGCONT, to the group, wait up to ``term_grace``
       seconds. A stopped kernel (SIGSTOP, a debugger) cannot answer step 1,
       which is skipped for it; SIGCONT lets it act on the SIGTERM.
    3. SIGKILL to the group, wait for the exit (unbounded: SIGKILL cannot be
       refused; a warning is logged if it takes over :data:`KILL_WARN_AFTER`).

    Then, with the leader reaped: SIGKILL to the rest of the group (children
    that outlived the kernel); if :meth:`~KernelProcess.pump_output`
    runs, give it :data:`OUTPUT_DRAIN_GRACE` seconds to read to end of file;
    close the pipes. Descendants that left the group (``setsid``) are out of
    reach of group signals: those still in the kernel's process tree when it
    is told to stop are noted and SIGKILLed after it
    (:meth:`~KernelProcess.note_escapees`).

    Args:
        proc: the kernel.
        polite: async callable asking the kernel to exit, or ``None`` to skip
            step 1 (kill, or no connection to the kernel).
        polite_grace: seconds for step 1.
        term_grace: seconds for step 2.
        session_id: the session the kernel serves, named on every log line.

    Returns:
        The kernel's exit code (see :meth:`KernelProcess.wait`).

    **Cancellation:** runs entirely shielded, so it completes even when called
    from a cancelled scope (e.g. in a ``finally`` during cancellation); every
    wait has its own bound except the final wait after SIGKILL. A pending
    cancellation is delivered at the caller's next checkpoint.

    **Errors:** none of its own; exceptions from ``polite`` are logged, not
    raised.
    """
    log: _Log = logger if session_id is None else SessionLog(logger, session_id)
    with trio.CancelScope(shield=True):
        was_running = proc.returncode is None
        proc.note_escapees()
        if polite is not None and was_running:
            if proc.is_stopped():
                log.warning(
                    "kernel process %d is stopped (SIGSTOP or a debugger) and cannot answer "
                    "a shutdown request; sending SIGTERM",
                    proc.pid,
                )
            else:
                await _ask_to_exit(proc, polite, polite_grace, log)
        if proc.returncode is None:
            await _terminate_then_kill(proc, term_grace, log)
        code = await _reap_and_sweep(proc, log)
    # When we ended it, say how (an exit of its own was logged by its watcher).
    (log.info if was_running else log.debug)(
        "kernel process %d stopped (%s)", proc.pid, describe_status(code)
    )
    return code


async def _ask_to_exit(
    proc: SupervisedProcess, polite: Callable[[], Awaitable[None]], grace: float, log: _Log
) -> None:
    """Step 1 of :func:`terminate_process_group`: ``polite()``, then wait for
    the exit, both within ``grace`` seconds; a failing ``polite`` is logged.

    **Cancellation:** bounded by ``grace``; runs under the caller's shield.
    """
    with trio.move_on_after(max(grace, 0.0)) as polite_scope:
        try:
            await polite()
        except Exception:
            log.warning(
                "kernel process %d: polite shutdown request failed; sending SIGTERM",
                proc.pid,
                exc_info=True,
            )
        else:
            await proc.wait()
    if polite_scope.cancelled_caught:
        log.info(
            "kernel process %d did not exit %.1f s after a shutdown request",
            proc.pid,
            grace,
        )


async def _terminate_then_kill(proc: SupervisedProcess, term_grace: float, log: _Log) -> None:
    """Steps 2 and 3 of :func:`terminate_process_group`: SIGTERM to the group
    and wait up to ``term_grace`` seconds, then SIGKILL and wait for the exit.

    **Cancellation:** the wait after SIGKILL is unbounded (a warning is
    logged after :data:`KILL_WARN_AFTER`); runs under the caller's shield.
    """
    proc.note_escapees()
    proc.signal_group(signal.SIGTERM)
    # A stopped process keeps a handled SIGTERM pending until it is continued
    # (as systemd does, continue it): its handler can then clean up and exit.
    proc.signal_group(signal.SIGCONT)
    with trio.move_on_after(max(term_grace, 0.0)):
        await proc.wait()
    if proc.returncode is not None:
        return
    log.warning(
        "kernel process %d ignored SIGTERM for %.1f s; sending SIGKILL",
        proc.pid,
        term_grace,
    )
    proc.kill_group()
    with trio.move_on_after(KILL_WARN_AFTER):
        await proc.wait()
    if proc.returncode is None:
        log.warning(
            "kernel process %d still running %.1f s after SIGKILL; waiting",
            proc.pid,
            KILL_WARN_AFTER,
        )


async def _reap_and_sweep(proc: SupervisedProcess, log: _Log) -> int:
    """With the kernel told to stop: reap it, kill what it left behind (in
    its group and escaped from it), drain its output, close its pipes.

    Returns:
        The kernel's exit code.

    **Cancellation:** waits for the exit unbounded, the output drain up to
    :data:`OUTPUT_DRAIN_GRACE`; runs under the caller's shield.
    """
    code = await proc.wait()
    escapees = proc.kill_escapees()
    if escapees:
        log.info(
            "kernel process %d: killed %d descendants that had left its process group",
            proc.pid,
            escapees,
        )
    # The leader is reaped; sweep the children it left in its group.
    if proc.kill_group():
        log.info("kernel process %d: killed processes left in its group", proc.pid)
    proc.forget_group()
    if proc.output_pump_started:
        with trio.move_on_after(OUTPUT_DRAIN_GRACE):
            await proc.wait_output_closed()
    await proc.aclose_pipes()
    return code


if TYPE_CHECKING:

    def _satisfies_supervised_process(proc: KernelProcess) -> SupervisedProcess:
        return proc  # mypy checks KernelProcess against the protocol here
