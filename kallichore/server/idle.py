"""Server-wide idle shutdown (``--idle-shutdown-hours``; see docs/sessions.md).

Theory of operation
-------------------
There is one timer, and it is a cancel scope's deadline. The watcher sleeps
inside ``CancelScope(deadline=...)``; when the deadline passes it *checks*
whether the server is idle. Anything that counts as activity -- a client
heartbeat, a client attaching, a session going idle or exiting -- calls
:meth:`IdleWatcher.nudge`, which moves the deadline to ``now + period``
(trio applies a new deadline immediately). Changing the period through
``POST /server_configuration`` does the same with the new period, so a change
takes effect at once.

The deadline is always ``last_activity + period`` where ``last_activity``
starts at the moment the watcher starts, so the server never shuts down in
its first period however the clock behaves (Kallichore once exited at start
because its timer ticked twice).

When the deadline passes the check runs:

1. a tracked client PID (> 1) that is still alive keeps the server up; a
   dead one is forgotten and the check goes on;
2. a busy session or an attached client keeps the server up;
3. otherwise the server is idle: ``on_idle`` is called (it requests the
   shutdown) and the watcher returns.

A check that keeps the server up restarts the timer: the next check is one
period later. A period of ``None`` (hours unset or negative) means never: the
deadline is infinite until the period changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import psutil
import trio

__all__ = ["IdleWatcher"]

logger = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.pid_exists(pid))
    except (OverflowError, ValueError):
        return False


@attrs.define(eq=False)
class IdleWatcher:
    """Shuts the server down after a period with no activity.

    Args:
        period: seconds of inactivity before shutdown, ``None`` for never.
        is_active: returns ``True`` while some session is busy or has a
            client attached.
        on_idle: called once when the server is found idle.
        pid_alive: liveness test for the tracked client PID (injectable for
            tests).
    """

    _period: float | None
    _is_active: Callable[[], bool]
    _on_idle: Callable[[], None]
    _pid_alive: Callable[[int], bool] = _pid_alive
    # Moment of the last activity (trio time); the deadline is this + period.
    # None until run() starts.
    _last_activity: float | None = attrs.field(default=None, init=False)
    # The scope run() sleeps in; None while not sleeping.
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    # PID of the client that sent the last heartbeat with a process_id.
    _client_pid: int | None = attrs.field(default=None, init=False)

    @property
    def period(self) -> float | None:
        """The current idle period in seconds, ``None`` for never."""
        return self._period

    @property
    def client_pid(self) -> int | None:
        """The client PID being tracked, if any."""
        return self._client_pid

    def nudge(self) -> None:
        """Record activity now: the next check is one period from now."""
        if self._last_activity is None:
            return
        self._last_activity = trio.current_time()
        self._reschedule()

    def set_period(self, period: float | None) -> None:
        """Change the idle period; the timer restarts from now."""
        self._period = period
        logger.info(
            "Idle shutdown %s",
            "disabled" if period is None else f"after {period:g} seconds of inactivity",
        )
        self.nudge()

    def track_client(self, pid: int | None) -> None:
        """Keep the server up while process ``pid`` lives (PIDs <= 1 ignored)."""
        if pid is None or pid == self._client_pid:
            return
        self._client_pid = pid if pid > 1 else None
        if self._client_pid is not None:
            logger.debug("Tracking client process %d for idle shutdown", pid)

    def _deadline(self) -> float:
        if self._period is None or self._last_activity is None:
            return math.inf
        return self._last_activity + self._period

    def _reschedule(self) -> None:
        if self._scope is not None:
            self._scope.deadline = self._deadline()

    def _server_is_idle(self) -> bool:
        pid = self._client_pid
        if pid is not None:
            if self._pid_alive(pid):
                logger.debug("Client process %d is alive; not idle", pid)
                return False
            logger.info("Client process %d has exited; no longer tracking it", pid)
            self._client_pid = None
        if self._is_active():
            logger.debug("A session is busy or has a client; not idle")
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch for idleness until the server is found idle, then return.

        **Cancellation:** safe at any point; nothing to clean up.
        """
        self._last_activity = trio.current_time()
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._scope = None
            if self._server_is_idle():
                logger.info("Server has been idle for %g seconds; shutting down", self._period)
                self._on_idle()
                return
            self._last_activity = trio.current_time()
