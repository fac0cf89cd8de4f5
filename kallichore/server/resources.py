"""The resource sampler's clock (``--resource-sample-interval``).

One task for the whole server. Every ``interval`` seconds it calls
``sample()``, which measures the sessions that have a client attached (the
registry decides who and how). The interval is a moving cancel-scope
deadline, as in :mod:`kallichore.server.idle`: :meth:`ResourceSampler.set_interval`
takes effect at once, and ``None`` (interval 0) parks the task until sampling
is turned on again. The first sample comes one interval after start or after
a change, as in Kallichore.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import attrs
import trio

__all__ = ["ResourceSampler"]

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class ResourceSampler:
    """Calls ``sample`` every ``interval`` seconds.

    Args:
        interval: seconds between samples, ``None`` when sampling is off.
        sample: takes the current interval in milliseconds and measures;
            it should checkpoint between sessions (psutil is slow).
    """

    _interval_ms: int
    _sample: Callable[[int], Awaitable[None]]
    # The scope run() sleeps in; None while sampling.
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _next: float = attrs.field(default=math.inf, init=False)

    @property
    def interval_ms(self) -> int:
        """The current interval in milliseconds (0 = off)."""
        return self._interval_ms

    def set_interval(self, milliseconds: int) -> None:
        """Change the interval; the next sample is one new interval from now."""
        self._interval_ms = milliseconds
        self._schedule_from(trio.current_time())

    def _schedule_from(self, now: float) -> None:
        self._next = now + self._interval_ms / 1000.0 if self._interval_ms > 0 else math.inf
        if self._scope is not None:
            self._scope.deadline = self._next

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample forever.

        **Cancellation:** safe at any point.
        """
        self._schedule_from(trio.current_time())
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._next) as scope:
                self._scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._scope = None
            self._schedule_from(trio.current_time())
            try:
                await self._sample(self._interval_ms)
            except Exception:
                logger.exception("Resource sampling failed")
