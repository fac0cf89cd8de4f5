"""The session registry: owns every session and the nursery they run in.

Sessions are kept in creation order (``GET /sessions`` lists them that way).
Each running session is a task in the registry's nursery; a session's failure
is contained inside its own task and never reaches its siblings.

Server-wide figures (``GET /status``, the idle check, the resource sampler)
are computed here from the sessions' own statistics.

The registry is also where a session's end is final for whatever clients
reach it through (the per-session channel sockets of the Unix-socket
transport): :meth:`SessionRegistry.kill`, :meth:`SessionRegistry.shutdown`,
:meth:`SessionRegistry.shutdown_all` and :meth:`SessionRegistry.delete` close
the session's :class:`ClientEndpoints`, whoever called them (REST, embedding,
server shutdown). The server wires the real ones in; by default there are none.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from kallichore.errors import ErrorCode, SessionNotFoundError, SessionStateError
from kallichore.session.outbox import DEFAULT_OUTBOX_LIMIT, Outbox
from kallichore.supervisor.backend import KernelBackend, LocalKernelBackend
from kallichore.supervisor.fanout import ClientFanout
from kallichore.supervisor.lifeline import Lifeline, open_lifeline
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.ports import PortReservations
from kallichore.supervisor.pumps import OpenGate, PumpGate
from kallichore.supervisor.sampling import ProcessTable
from kallichore.supervisor.session import KernelSession, SessionSpec

__all__ = ["ClientEndpoints", "NoEndpoints", "RegistryStatistics", "SessionRegistry"]

logger = logging.getLogger(__name__)


class ClientEndpoints(Protocol):
    """What clients reach sessions through, beyond the server's own listener."""

    def close(self, session_id: str) -> None:
        """Stop accepting clients for this session (no-op if there is nothing)."""


class NoEndpoints:
    """No per-session endpoints (embedding without a server, TCP transport)."""

    def close(self, session_id: str) -> None:
        """Nothing to close."""


@attrs.frozen
class RegistryStatistics:
    """A snapshot of the registry, for ``GET /status``.

    Attributes:
        sessions: number of sessions, exited ones included.
        active: sessions whose status is not ``exited``.
        busy: whether any session is busy.
        earliest_busy_since: trio time the longest-busy session became busy.
        latest_idle_since: trio time the most recently idle non-busy session
            became idle.
    """

    sessions: int
    active: int
    busy: bool
    earliest_busy_since: float | None
    latest_idle_since: float | None


@attrs.define(eq=False)
class SessionRegistry:
    """All sessions of one server, in creation order."""

    #: Called on activity that should postpone idle shutdown.
    on_activity: Callable[[], None] = lambda: None
    #: Bound on each session's buffer of frames for its client.
    client_buffer_bytes: int = DEFAULT_OUTBOX_LIMIT
    #: Given to every session: their output pumps wait for REST requests
    #: (the server wires in its request priority; by default nothing waits).
    priority: PumpGate = attrs.field(factory=OpenGate)
    #: Closed for a session when it ends or is deleted.
    endpoints: ClientEndpoints = attrs.field(factory=NoEndpoints)
    #: Given to every session: trust of kernel messages, kernel lifetime.
    kernel_policy: KernelPolicy = attrs.field(factory=KernelPolicy)
    #: Given to every session: how kernels are spawned and reached.
    kernel_backend: KernelBackend = attrs.field(factory=LocalKernelBackend)
    _sessions: dict[str, KernelSession] = attrs.field(factory=dict, init=False)
    # The nursery sessions run in; set by run().
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    # Private directory for kernel connection files; set by run().
    _files_dir: str | None = attrs.field(default=None, init=False)
    # Kills our kernels if the server dies; set by run() unless they may outlive it.
    _lifeline: Lifeline | None = attrs.field(default=None, init=False)
    # Ports handed to kernels and not yet released (shared by all sessions).
    ports: PortReservations = attrs.field(factory=PortReservations, init=False)
    #: The host's processes as the resource sampler last read them (one walk per tick).
    processes: ProcessTable = attrs.field(factory=ProcessTable, init=False)

    def __len__(self) -> int:
        return len(self._sessions)

    def list(self) -> list[KernelSession]:
        """Every session, in creation order."""
        return list(self._sessions.values())

    def create(self, spec: SessionSpec) -> KernelSession:
        """Register a new session (not started).

        Raises:
            SessionStateError: the id is taken (KS-0, 400).
        """
        if spec.session_id in self._sessions:
            raise SessionStateError(
                ErrorCode.SESSION_EXISTS,
                f"Session {spec.session_id} already exists",
                http_status=400,
            )
        if self._nursery is None:
            raise RuntimeError("the registry is not running")
        assert self._files_dir is not None
        session = KernelSession(
            spec,
            self._nursery,
            self.ports,
            self._activity,
            files_dir=self._files_dir,
            fanout=ClientFanout(Outbox(self.client_buffer_bytes), self.priority),
            gate=self.priority,
            policy=self.kernel_policy,
            lifeline=self._lifeline,
            backend=self.kernel_backend,
        )
        self._sessions[spec.session_id] = session
        session.log.info("created (%s)", spec.display_name)
        return session

    def delete(self, session_id: str) -> None:
        """Forget a session that has no kernel.

        Raises:
            SessionNotFoundError: unknown id.
            SessionStateError: a kernel is running or starting (KS-2, 400).
        """
        session = self.get(session_id)
        if session.is_running():
            raise SessionStateError(
                ErrorCode.SESSION_RUNNING,
                f"Session {session_id} is running; kill it first",
                http_status=400,
            )
        del self._sessions[session_id]
        self.endpoints.close(session_id)
        session.release_resources()
        session.log.info("deleted")

    async def kill(self, session: KernelSession) -> None:
        """Kill a session's kernel (:meth:`KernelSession.kill`), then close its endpoints.

        Raises what :meth:`KernelSession.kill` raises; nothing is closed then.
        """
        await session.kill()
        self._close_endpoints(session)

    async def shutdown(self, session: KernelSession) -> None:
        """Stop a session's kernel politely (bounded ladder) and close its endpoints.

        **Cancellation:** the ladder goes on (it runs shielded in the
        session's task); the endpoints are closed at once.
        """
        try:
            await session.shutdown()
        finally:
            self._close_endpoints(session)

    def _close_endpoints(self, session: KernelSession) -> None:
        # Only while it is registered: after a delete, the id may be another's.
        if self._sessions.get(session.session_id) is session:
            self.endpoints.close(session.session_id)

    def _activity(self) -> None:
        self.on_activity()

    def get(self, session_id: str) -> KernelSession:
        """The session with this id.

        Raises:
            SessionNotFoundError: there is none.
        """
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(session_id) from None

    def is_active(self) -> bool:
        """Whether any session is busy or has a client attached (idle check)."""
        return any(s.is_busy() or s.is_connected() for s in self._sessions.values())

    def statistics(self) -> RegistryStatistics:
        """Aggregate figures over all sessions."""
        busy_since = [
            t for s in self._sessions.values() if s.is_busy() and (t := s.busy_since()) is not None
        ]
        idle_since = [
            t
            for s in self._sessions.values()
            if not s.is_busy() and (t := s.idle_since()) is not None
        ]
        return RegistryStatistics(
            sessions=len(self._sessions),
            active=sum(1 for s in self._sessions.values() if not s.is_exited()),
            busy=bool(busy_since) or any(s.is_busy() for s in self._sessions.values()),
            earliest_busy_since=min(busy_since, default=None),
            latest_idle_since=max(idle_since, default=None),
        )

    async def sample_resources(self, interval_ms: int) -> None:
        """Measure the sessions that have a client attached (resource sampler).

        One session per scheduler pass: psutil takes milliseconds per
        process tree, and other tasks must not wait for all of them at once.
        Like the output pumps, sampling steps aside while an HTTP request is
        in flight (the server's :class:`~kallichore.supervisor.pumps.PumpGate`).
        The host's process table is read at most once for all of them.
        """
        self.processes.next_tick()
        for session in list(self._sessions.values()):
            if session.connected:
                await self.priority.wait_turn()
                session.sample_resources(interval_ms, self.processes)
                await trio.lowlevel.checkpoint()

    async def shutdown_all(self) -> None:
        """Stop every running session, concurrently, each within its own bound.

        Each one's endpoints are closed once it has stopped.
        """
        running = [s for s in self._sessions.values() if s.is_running()]
        if not running:
            return
        logger.info("Stopping %d running session(s)", len(running))
        async with trio.open_nursery() as nursery:
            for session in running:
                nursery.start_soon(self.shutdown, session)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery until cancelled.

        **Cancellation:** cancelling this task stops every session; each one
        runs its own bounded shutdown ladder, shielded.
        """
        # Kernel connection and registration files hold session keys: they go
        # in a private directory that disappears with the registry.
        self._files_dir = tempfile.mkdtemp(prefix="kallichore-")
        try:
            # The lifeline closes after the nursery: every session has run its
            # shutdown ladder by then, so its watchdog has nothing left to kill.
            async with contextlib.AsyncExitStack() as stack:
                if not self.kernel_policy.outlive_server:
                    self._lifeline = await stack.enter_async_context(open_lifeline())
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._nursery = None
        finally:
            self._lifeline = None
            shutil.rmtree(self._files_dir, ignore_errors=True)
            self._files_dir = None
