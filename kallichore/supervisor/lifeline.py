"""Kernels die with their supervisor: a watchdog that outlives the server just long enough.

Theory of operation
-------------------

A kernel leads its own process group (see :mod:`kallichore.supervisor.process`),
so a server that dies without stopping it -- SIGKILL, the OOM killer, a crash
in C code -- would leave it running, unowned: nobody would ever stop it, and
its ports and memory would stay taken. Unless the server was started with
``--kernels-outlive-server``, two mechanisms prevent that:

1. **The lifeline** (this module): a tiny watchdog process, started with the
   first kernel. Its stdin is the read end of a pipe whose write end only the
   server holds (the descriptor is not inheritable, and kernels are spawned
   with ``close_fds``). The server writes ``+<pgid>`` when a kernel starts and
   ``-<pgid>`` once it has reaped it. When the server process is gone,
   however it died, the operating system closes the write end; the watchdog
   reads end of file, SIGKILLs every process group still listed -- the kernels
   *and* whatever children they left in their groups -- and exits. After an
   orderly shutdown the list is empty and the watchdog just exits.
2. **JPY_PARENT_PID**: kernels are started with this variable set to the
   server's pid; ipykernel then polls its parent and exits when it changes.
   It covers the moment between a kernel's spawn and its registration, and a
   watchdog that was killed on its own.

Why not ``prctl(PR_SET_PDEATHSIG)``: it must be set in the child between fork
and exec (``preexec_fn``, which is unsafe in a threaded process, or a wrapper
program); it fires when the parent *thread* ends, and trio spawns from worker
threads that exit after ten idle seconds, which would kill healthy kernels;
it reaches the kernel only, not the children in its group; and it exists on
Linux only. The pipe works on every POSIX system and needs no thread to live.

If the watchdog cannot be started or dies, a warning is logged and the next
kernel start starts a new one, which is told every group still running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping

import attrs
import trio

__all__ = ["PARENT_PID_VARIABLE", "Lifeline", "open_lifeline"]

logger = logging.getLogger(__name__)

#: The variable ipykernel reads to learn which process to poll (it exits
#: when that process is no longer its parent).
PARENT_PID_VARIABLE = "JPY_PARENT_PID"
#: How long the watchdog gets to exit after an orderly close.
WATCHDOG_EXIT_GRACE = 2.0  # seconds

# The watchdog's whole program; run with ``python -I -S -c`` (no site, no
# user environment: it starts in milliseconds and imports nothing of ours).
# SIGINT is ignored so that a Ctrl-C in the server's terminal cannot kill it
# before it has done its job.
_WATCHDOG_PROGRAM = """\
# kallichore kernel lifeline: kills the server's kernels if the server dies
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
pending = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except OSError:
        break
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\\n")
    for line in lines:
        if line[:1] == b"+" and int(line[1:]) > 1:
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


@attrs.define(eq=False)
class Lifeline:
    """The server's end of the watchdog (see the module docstring).

    Made by :func:`open_lifeline`. :meth:`ensure_started` before a spawn,
    :meth:`watch` right after it, :meth:`forget` once the kernel is reaped.
    """

    # The watchdog process and the write end of its stdin pipe (non-blocking),
    # or None while no watchdog runs.
    _process: trio.Process | None = attrs.field(default=None, init=False)
    _fd: int | None = attrs.field(default=None, init=False)
    # Every process group to kill if we die; resent to a new watchdog.
    _groups: set[int] = attrs.field(factory=set, init=False)
    _start_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    # Watchdogs that died or were replaced, reaped by aclose().
    _retired: list[trio.Process] = attrs.field(factory=list, init=False)

    @property
    def running(self) -> bool:
        """Whether a watchdog is running (as far as we know)."""
        return self._fd is not None

    def kernel_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` plus :data:`PARENT_PID_VARIABLE` naming this server."""
        return {**env, PARENT_PID_VARIABLE: str(os.getpid())}

    async def ensure_started(self) -> None:
        """Start the watchdog if none runs; never raises (a failure is logged).

        **Cancellation:** safe; a watchdog spawned meanwhile is kept.
        """
        async with self._start_lock:
            if self._fd is not None:
                return
            read_end, write_end = os.pipe()
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG_PROGRAM],
                    stdin=read_end,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(write_end)
                logger.warning("Could not start the kernel lifeline watchdog: %s", exc)
                return
            finally:
                os.close(read_end)
            os.set_blocking(write_end, False)
            self._process, self._fd = process, write_end
            logger.debug("Kernel lifeline watchdog started (pid %d)", process.pid)
            for pgid in self._groups:
                self._send(f"+{pgid}\n")

    def watch(self, pgid: int) -> None:
        """Have the watchdog kill process group ``pgid`` if the server dies."""
        self._groups.add(pgid)
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """The group ``pgid`` is gone (its leader reaped): never kill it."""
        if pgid in self._groups:
            self._groups.discard(pgid)
            self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            # A watchdog known to be dead is not written to (a host program
            # that restored SIGPIPE's default action would die of the write).
            if self._process is not None and self._process.returncode is not None:
                raise BrokenPipeError("the watchdog exited")
            os.write(self._fd, line.encode("ascii"))
        except OSError as exc:
            # BrokenPipeError: the watchdog died; BlockingIOError: it stopped
            # reading. Either way it can no longer be trusted: retire it.
            logger.warning(
                "The kernel lifeline watchdog is not listening (%s); a new one starts "
                "with the next kernel",
                exc,
            )
            self._retire()

    def _retire(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._process is not None:
            self._retired.append(self._process)
            self._process = None

    async def aclose(self) -> None:
        """Close our end (the watchdog kills what is still listed, then exits); reap it.

        **Cancellation:** shielded and bounded (:data:`WATCHDOG_EXIT_GRACE`,
        then SIGKILL).
        """
        self._retire()
        with trio.CancelScope(shield=True):
            for process in self._retired:
                with trio.move_on_after(WATCHDOG_EXIT_GRACE):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        self._retired.clear()


@contextlib.asynccontextmanager
async def open_lifeline() -> AsyncIterator[Lifeline]:
    """A :class:`Lifeline`, closed (and its watchdog reaped) when the block exits."""
    lifeline = Lifeline()
    try:
        yield lifeline
    finally:
        await lifeline.aclose()
