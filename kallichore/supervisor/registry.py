"""The session registry: owns every session and the nursery they run in.

Sessions are kept in creation order (``GET /sessions`` lists them that way).
Each running session is a task in the registry's nursery; a session's failure
is contained inside its own task and never reaches its siblings.

Server-wide figures (``GET /status``, the idle check, the resource sampler)
are computed here from the sessions' own statistics.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from kallichore.errors import SessionNotFoundError

__all__ = ["RegistryStatistics", "SessionLike", "SessionRegistry"]

logger = logging.getLogger(__name__)


class SessionLike(Protocol):
    """What the registry needs from a session to aggregate it."""

    @property
    def session_id(self) -> str: ...

    def is_busy(self) -> bool: ...

    def is_exited(self) -> bool: ...

    def is_connected(self) -> bool: ...

    def busy_since(self) -> float | None: ...

    def idle_since(self) -> float | None: ...


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

    _sessions: dict[str, SessionLike] = attrs.field(factory=dict, init=False)
    # The nursery sessions run in; set by run().
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    def __len__(self) -> int:
        return len(self._sessions)

    def list(self) -> list[SessionLike]:
        """Every session, in creation order."""
        return list(self._sessions.values())

    def get(self, session_id: str) -> SessionLike:
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

    def sample_resources(self, interval_ms: int) -> None:
        """Measure the sessions that have a client attached (resource sampler)."""

    async def shutdown_all(self) -> None:
        """Stop every running session, concurrently, each within its own bound."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery until cancelled.

        **Cancellation:** cancelling this task stops every session; each one
        runs its own bounded shutdown ladder, shielded.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
