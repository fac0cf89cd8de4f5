"""Is the kernel there? The heartbeat loop, and a probe for kernels that are not our children.

Theory of operation
-------------------

The heartbeat says whether a kernel *answers*; it cannot say why one does
not. A kernel that is paused (SIGSTOP, a debugger, a machine under swap) and
one that is gone look the same to it: no echo. For a kernel we started, the
difference comes from the process itself (``wait()`` returns when it dies).
For an *adopted* kernel we have no process to wait on, and the one other
signal -- ZeroMQ telling us that the heartbeat's TCP connection closed -- is
an event that can be missed (a monitor is a second socket with its own
failure modes). So exit detection for adopted kernels must not depend on it:

* at adoption, :func:`learn_kernel_process` looks for the process that
  listens on the kernel's heartbeat port (our own user's processes only; a
  kernel on another machine, or of another user, has none);
* whenever a heartbeat is missed, :meth:`AdoptedKernelProbe.is_gone` asks the
  system: the kernel is **gone** if that process has ended (or its pid now
  names another process), or if every kernel port *refuses* connections --
  nobody listens there any more. A paused kernel's ports still accept (the
  operating system completes the TCP handshake for a stopped listener) and
  its process exists, so it is merely **offline**, and comes back when its
  heartbeat does. A probe that cannot tell (a connection attempt that times
  out, a remote host) answers "not gone": offline is the safe answer, since
  a later probe can still find out.

:func:`monitor_heartbeat` is the loop: a ping every
:data:`HEARTBEAT_INTERVAL`, ``offline`` after :data:`HEARTBEAT_TIMEOUT`
without an echo, back to the previous state when the echo returns, and --
with a probe -- the end of the kernel as soon as a missed beat finds it gone.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import psutil
import trio

from kallichore.session.state import SessionStatus
from kallichore.transport.base import FrameSocket, heartbeat_once
from kallichore.wire.connection_file import ConnectionInfo

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "AdoptedKernelProbe",
    "HeartbeatOwner",
    "learn_kernel_process",
    "monitor_heartbeat",
]

logger = logging.getLogger(__name__)

#: A heartbeat reply later than this marks the kernel offline.
HEARTBEAT_TIMEOUT = 5.0  # seconds
#: Pause between heartbeats.
HEARTBEAT_INTERVAL = 2.0  # seconds
#: Bound on one connection attempt of the probe.
PROBE_CONNECT_TIMEOUT = 1.0  # seconds
#: Bound on the search for the kernel's process at adoption.
LEARN_PROCESS_TIMEOUT = 5.0  # seconds

# Addresses a kernel may bind that are not addresses to connect to.
_WILDCARD_IPS = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class HeartbeatOwner(Protocol):
    """What :func:`monitor_heartbeat` needs of a session."""

    @property
    def status(self) -> SessionStatus:
        """The session's status."""
        ...

    def set_status(self, status: SessionStatus, reason: str | None, *, wake: bool = True) -> None:
        """Apply a status change and tell the client."""
        ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The session's logger (its lines name the session)."""
        ...


def _process_identity(pid: int) -> tuple[int, float] | None:
    """``(pid, create_time)`` of a live process, or ``None``."""
    try:
        return pid, psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _find_listener(port: int) -> tuple[int, float] | None:
    """The pid and start time of the process listening on TCP ``port``, if visible."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):  # AccessDenied on macOS without root
        return None
    for conn in connections:
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        if listening and conn.pid is not None:
            return _process_identity(conn.pid)
    return None


async def learn_kernel_process(info: ConnectionInfo) -> tuple[int, float] | None:
    """The adopted kernel's ``(pid, create_time)``, if it is a local process we can see.

    Reads the system's socket table in a worker thread (it can take tens of
    milliseconds on a busy machine), bounded by :data:`LEARN_PROCESS_TIMEOUT`.

    **Cancellation:** safe; the thread is abandoned.
    """
    if info.transport != "tcp" or info.ip not in (*_WILDCARD_IPS, "127.0.0.1", "localhost", "::1"):
        await trio.lowlevel.checkpoint()
        return None
    with trio.move_on_after(LEARN_PROCESS_TIMEOUT):
        return await trio.to_thread.run_sync(_find_listener, info.hb_port, abandon_on_cancel=True)
    return None


async def _refuses_connections(ip: str, port: int) -> bool:
    """Whether a TCP connection to ``ip:port`` is refused (nobody listens).

    ``False`` when it is accepted, and when the attempt cannot tell (timeout,
    unreachable network).
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    with sock:
        with trio.move_on_after(PROBE_CONNECT_TIMEOUT):
            try:
                await sock.connect((ip, port))
            except OSError as exc:
                return exc.errno == errno.ECONNREFUSED
        return False


@attrs.define(eq=False)
class AdoptedKernelProbe:
    """Finds out whether an adopted kernel is gone (see the module docstring).

    Attributes:
        info: the kernel's connection info.
        process: ``(pid, create_time)`` learned at adoption, or ``None``.
    """

    info: ConnectionInfo
    process: tuple[int, float] | None = None

    async def learn_process(self) -> None:
        """Look for the kernel's process now (see :func:`learn_kernel_process`).

        Run it while the kernel is surely alive (right after adoption), in
        the background: it reads the system's socket table.
        """
        self.process = await learn_kernel_process(self.info)
        logger.debug("adopted kernel at %s: process %s", self.info.ip, self.pid)

    @property
    def pid(self) -> int | None:
        """The kernel's pid, if it was learned at adoption."""
        return self.process[0] if self.process is not None else None

    async def is_gone(self) -> bool:
        """``True`` if the kernel has certainly ended; ``False`` if it may be alive.

        **Cancellation:** safe.
        """
        if self.process is not None and not self._process_alive():
            await trio.lowlevel.checkpoint()
            return True
        if self.info.transport != "tcp":
            await trio.lowlevel.checkpoint()
            return False
        ip = _WILDCARD_IPS.get(self.info.ip, self.info.ip)
        for port in (self.info.hb_port, self.info.shell_port):
            if not await _refuses_connections(ip, port):
                return False
        return True

    def _process_alive(self) -> bool:
        assert self.process is not None
        pid, created = self.process
        try:
            proc = psutil.Process(pid)
            return bool(proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE)
        except (psutil.Error, OSError):
            return False


async def monitor_heartbeat(
    hb: FrameSocket,
    owner: HeartbeatOwner,
    *,
    probe: AdoptedKernelProbe | None = None,
    on_gone: Callable[[], None] = lambda: None,
    on_beat: Sequence[Callable[[], None]] = (),
) -> None:
    """Ping the kernel forever; mark it offline and back; end it when the probe finds it gone.

    Args:
        hb: the kernel's heartbeat socket.
        owner: the session whose status follows the heartbeat.
        probe: for a kernel that is not our child: asked after each missed
            beat; when it says gone, ``on_gone()`` is called and this returns.
        on_gone: what ends the kernel's incarnation.
        on_beat: called after every heartbeat round (periodic housekeeping).

    **Cancellation:** the way to stop it.
    """
    before_offline = SessionStatus.IDLE
    while True:
        with trio.move_on_after(HEARTBEAT_TIMEOUT) as scope:
            await heartbeat_once(hb)
        for callback in on_beat:
            callback()
        if scope.cancelled_caught:
            if probe is not None and await probe.is_gone():
                owner.log.info("no heartbeat, and the kernel is gone")
                on_gone()
                return
            if owner.status is not SessionStatus.OFFLINE:
                before_offline = owner.status
                owner.log.warning("no heartbeat for %g s; offline", HEARTBEAT_TIMEOUT)
                owner.set_status(SessionStatus.OFFLINE, "lost heartbeat")
            continue
        if owner.status is SessionStatus.OFFLINE:
            owner.log.info("heartbeat is back")
            back = before_offline if before_offline is SessionStatus.BUSY else SessionStatus.IDLE
            owner.set_status(back, "heartbeat detected after offline")
        await trio.sleep(HEARTBEAT_INTERVAL)
