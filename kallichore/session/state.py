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

Lifecycle
---------
Separate from the status clients see, a session's :class:`Lifecycle` says
what it is doing with its kernel, and decides which requests it takes:

==============  ===========================================================
``NO_KERNEL``   never started, or its kernel is gone: start, adopt, restart
``STARTING``    a start or an adoption is under way (it may retry)
``RUNNING``     a kernel is live
``STOPPING``    a shutdown or kill was asked for; the kernel is not gone yet
``RESTARTING``  a restart is under way (both halves: the stop and the start)
==============  ===========================================================

Every change is a :class:`LifecycleEvent` looked up in :data:`TRANSITIONS`;
an event that is not in the table for the current phase raises
:class:`IllegalTransition` (a bug: the session asks :meth:`LifecycleMachine.can`
first and answers the client with an error of its own).
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "IDLE_LIKE",
    "TRANSITIONS",
    "IllegalTransition",
    "Lifecycle",
    "LifecycleEvent",
    "LifecycleMachine",
    "SessionStatus",
    "StatusTracker",
]


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


class Lifecycle(enum.Enum):
    """What a session is doing with its kernel (see the module docstring)."""

    NO_KERNEL = "no kernel"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"


class LifecycleEvent(enum.Enum):
    """What moves a session from one :class:`Lifecycle` phase to another."""

    #: ``start()`` or ``adopt()`` begins.
    BEGIN_START = "begin start"
    #: The start (or adoption) finished with a kernel running.
    STARTED = "started"
    #: The start finished without a kernel (it failed, or the kernel died at once).
    START_FAILED = "start failed"
    #: A shutdown or kill was asked for.
    STOP = "stop"
    #: A kernel run ended (its process exited, or its sockets disconnected).
    KERNEL_EXITED = "kernel exited"
    #: ``restart()`` begins.
    BEGIN_RESTART = "begin restart"
    #: The restart finished with a kernel running.
    RESTARTED = "restarted"
    #: The restart finished without a kernel.
    RESTART_FAILED = "restart failed"


_L = Lifecycle
_E = LifecycleEvent

#: phase -> {event: next phase}; anything missing is illegal.
TRANSITIONS: dict[Lifecycle, dict[LifecycleEvent, Lifecycle]] = {
    _L.NO_KERNEL: {
        _E.BEGIN_START: _L.STARTING,
        _E.BEGIN_RESTART: _L.RESTARTING,
    },
    _L.STARTING: {
        _E.STARTED: _L.RUNNING,
        _E.START_FAILED: _L.NO_KERNEL,
        # A failed attempt (the start may try again), or a stop mid-start:
        # the start itself decides how it ends.
        _E.KERNEL_EXITED: _L.STARTING,
        _E.STOP: _L.STARTING,
    },
    _L.RUNNING: {
        _E.STOP: _L.STOPPING,
        _E.KERNEL_EXITED: _L.NO_KERNEL,
        _E.BEGIN_RESTART: _L.RESTARTING,
    },
    _L.STOPPING: {
        _E.STOP: _L.STOPPING,
        _E.KERNEL_EXITED: _L.NO_KERNEL,
        _E.BEGIN_RESTART: _L.RESTARTING,
    },
    _L.RESTARTING: {
        # The restart's own stop, and the old kernel's exit.
        _E.STOP: _L.RESTARTING,
        _E.KERNEL_EXITED: _L.RESTARTING,
        _E.RESTARTED: _L.RUNNING,
        _E.RESTART_FAILED: _L.NO_KERNEL,
    },
}


class IllegalTransition(Exception):
    """An event that the current lifecycle phase does not allow."""

    def __init__(self, phase: Lifecycle, event: LifecycleEvent) -> None:
        super().__init__(f"{event.value!r} is not allowed while {phase.value!r}")
        self.phase = phase
        self.event = event


@attrs.define
class LifecycleMachine:
    """The current :class:`Lifecycle` phase, moved only through :data:`TRANSITIONS`."""

    phase: Lifecycle = Lifecycle.NO_KERNEL

    def can(self, event: LifecycleEvent) -> bool:
        """Whether ``event`` is allowed now."""
        return event in TRANSITIONS[self.phase]

    def apply(self, event: LifecycleEvent) -> Lifecycle:
        """Take ``event``; returns the new phase. Raises :class:`IllegalTransition`."""
        try:
            self.phase = TRANSITIONS[self.phase][event]
        except KeyError:
            raise IllegalTransition(self.phase, event) from None
        return self.phase

    @property
    def has_kernel_activity(self) -> bool:
        """Whether anything is happening with a kernel (not ``NO_KERNEL``)."""
        return self.phase is not Lifecycle.NO_KERNEL
