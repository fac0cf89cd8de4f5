"""Kernel messages dropped by verification, logged in summaries rather than one line each.

A kernel that does not sign its messages, or signs them with another key,
has *every* message dropped: one log line per message would flood the log
(and cost more than the messages). :class:`DroppedMessageLog` logs the first
drop of each kind at once, with what to do about it, then counts: the count
is logged at most once per :data:`SUMMARY_INTERVAL`, and once more when the
kernel's connection ends (:meth:`DroppedMessageLog.flush`).

Pure: the clock is a parameter (``time.monotonic`` by default); no trio.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import attrs

__all__ = ["SUMMARY_INTERVAL", "DroppedMessageLog"]

logger = logging.getLogger(__name__)

#: Shortest time between two summary lines of one session.
SUMMARY_INTERVAL = 10.0  # seconds

#: Advice logged with the first drop of a kind, keyed by the reason's start.
_ADVICE = {
    "unsigned message": (
        "the kernel does not sign its messages; if it cannot, start the server with "
        "--allow-unsigned-kernel-messages"
    ),
    "bad signature": "the kernel signs with another key than the session's",
}


@attrs.define(eq=False)
class DroppedMessageLog:
    """Counts one session's dropped kernel messages and logs them in summaries.

    Args:
        log: where the lines go: the session's logger, which names the session.
        clock: seconds, monotonic.
    """

    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger
    clock: Callable[[], float] = time.monotonic
    #: Messages dropped since the log was made.
    total: int = attrs.field(default=0, init=False)
    # Drops not yet logged, per reason; logged by the next summary.
    _pending: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    # Reasons already logged once (their later drops are only counted).
    _seen: set[str] = attrs.field(factory=set, init=False)
    _last_summary: float = attrs.field(default=float("-inf"), init=False)

    def record(self, channel: str, reason: str) -> None:
        """Note one dropped message; log it now if it is the first of its kind."""
        self.total += 1
        if reason not in self._seen:
            self._seen.add(reason)
            self._last_summary = self.clock()
            advice = _ADVICE.get(reason)
            self.log.warning(
                "dropped a %s message from the kernel: %s%s",
                channel,
                reason,
                f" ({advice}); further drops are counted" if advice else "",
            )
            return
        self._pending[reason] += 1
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Log the pending count if the last summary is old enough."""
        if self._pending and self.clock() - self._last_summary >= SUMMARY_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Log the pending count now (no-op if nothing is pending)."""
        if not self._pending:
            return
        count = sum(self._pending.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self._pending.most_common())
        self.log.warning(
            "dropped %d more kernel message(s) (%s); %d in all",
            count,
            reasons,
            self.total,
        )
        self._pending.clear()
        self._last_summary = self.clock()
