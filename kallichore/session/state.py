"""Session status: the values clients see and the bookkeeping around them.

Theory of operation
-------------------
Kallichore's status is not a strict state machine: any status may follow any
other, driven by outside events:

====================  ==========================================  ================================
to                    trigger                                     reason
====================  ==========================================  ================================
``starting``          start (or the start half of a restart)      ``start API called``
``busy`` / ``idle``   an iopub ``status`` message from the kernel  the parent's ``msg_type`` or None
``offline``           no heartbeat reply within the timeout       ``lost heartbeat``
``idle`` (offline)    a heartbeat reply after being offline       ``heartbeat detected after offline``
``exited``            the process exited / adopted sockets gone   ``child process exited`` ...
====================  ==========================================  ================================

What *is* fixed is what a transition does, and that lives here:

1. a transition to the current status is a no-op (no event is sent);
2. entering ``idle``, ``ready`` or ``exited`` stamps ``idle_since`` (and
   counts as server activity); any other status clears it;
3. entering ``busy`` stamps ``busy_since``; any other status clears it.

New sessions start ``idle`` (not ``uninitialized``), as in Kallichore.
``offline`` is never a final state: a stopped (SIGSTOP) kernel goes offline
and comes back, it never exits because of missed heartbeats.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["IDLE_LIKE", "SessionStatus", "StatusTracker"]


class SessionStatus(enum.Enum):
    """The spec's ``status`` enum."""

    UNINITIALIZED = "uninitialized"
    STARTING = "starting"
    READY = "ready"
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"
    EXITED = "exited"


#: Statuses that stamp ``idle_since``.
IDLE_LIKE = frozenset({SessionStatus.IDLE, SessionStatus.READY, SessionStatus.EXITED})


@attrs.define
class StatusTracker:
    """The current status and the clocks derived from it (pure; times are passed in)."""

    status: SessionStatus = SessionStatus.IDLE
    #: trio time the session last became idle-like; None when not idle-like.
    idle_since: float | None = None
    #: trio time the session became busy; None when not busy.
    busy_since: float | None = None

    def transition(self, new: SessionStatus, now: float) -> bool:
        """Move to ``new``; returns whether anything changed."""
        if new is self.status:
            return False
        self.status = new
        self.idle_since = now if new in IDLE_LIKE else None
        self.busy_since = now if new is SessionStatus.BUSY else None
        return True
