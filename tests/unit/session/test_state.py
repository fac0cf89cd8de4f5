"""kallichore.session.state: the status tracker's clocks and the lifecycle table (pure)."""

from __future__ import annotations

import pytest

from kallichore.session.state import (
    TRANSITIONS,
    IllegalTransition,
    Lifecycle,
    LifecycleEvent,
    LifecycleMachine,
    SessionStatus,
    StatusTracker,
)

# ------------------------------------------------------------------ status


def test_a_new_session_is_idle_with_no_clocks() -> None:
    tracker = StatusTracker()
    assert tracker.status is SessionStatus.IDLE
    assert (tracker.idle_since, tracker.busy_since) == (None, None)


def test_a_transition_to_the_current_status_changes_nothing() -> None:
    tracker = StatusTracker()
    assert tracker.transition(SessionStatus.BUSY, 1.0)
    assert not tracker.transition(SessionStatus.BUSY, 2.0)
    assert tracker.busy_since == 1.0


@pytest.mark.parametrize("status", [SessionStatus.IDLE, SessionStatus.READY, SessionStatus.EXITED])
def test_idle_like_statuses_stamp_idle_since_and_clear_busy_since(status: SessionStatus) -> None:
    tracker = StatusTracker(status=SessionStatus.BUSY, busy_since=1.0)
    assert tracker.transition(status, 5.0)
    assert (tracker.idle_since, tracker.busy_since) == (5.0, None)


@pytest.mark.parametrize("status", [SessionStatus.STARTING, SessionStatus.OFFLINE])
def test_other_statuses_clear_both_clocks(status: SessionStatus) -> None:
    tracker = StatusTracker(status=SessionStatus.BUSY, busy_since=1.0)
    tracker.transition(status, 5.0)
    assert (tracker.idle_since, tracker.busy_since) == (None, None)


def test_busy_stamps_busy_since_and_clears_idle_since() -> None:
    tracker = StatusTracker(idle_since=1.0)
    tracker.transition(SessionStatus.BUSY, 3.0)
    assert (tracker.idle_since, tracker.busy_since) == (None, 3.0)


# --------------------------------------------------------------- lifecycle

E = LifecycleEvent
L = Lifecycle


def run(*events: LifecycleEvent) -> LifecycleMachine:
    machine = LifecycleMachine()
    for event in events:
        machine.apply(event)
    return machine


def test_a_new_session_has_no_kernel() -> None:
    machine = LifecycleMachine()
    assert machine.phase is L.NO_KERNEL
    assert not machine.has_kernel_activity


def test_start_run_stop() -> None:
    machine = run(E.BEGIN_START)
    assert machine.phase is L.STARTING
    assert machine.has_kernel_activity
    assert machine.apply(E.STARTED) is L.RUNNING
    assert machine.apply(E.STOP) is L.STOPPING
    assert machine.apply(E.KERNEL_EXITED) is L.NO_KERNEL


def test_a_kernel_that_exits_by_itself_leaves_no_kernel() -> None:
    assert run(E.BEGIN_START, E.STARTED, E.KERNEL_EXITED).phase is L.NO_KERNEL


def test_a_start_that_retries_stays_starting_until_it_ends() -> None:
    machine = run(E.BEGIN_START, E.KERNEL_EXITED, E.KERNEL_EXITED)
    assert machine.phase is L.STARTING
    assert machine.apply(E.START_FAILED) is L.NO_KERNEL


def test_a_restart_covers_the_stop_and_the_start() -> None:
    machine = run(E.BEGIN_START, E.STARTED, E.BEGIN_RESTART)
    for event in (E.STOP, E.KERNEL_EXITED):
        assert machine.apply(event) is L.RESTARTING
    assert machine.apply(E.RESTARTED) is L.RUNNING


def test_a_failed_restart_leaves_no_kernel() -> None:
    assert run(E.BEGIN_RESTART, E.RESTART_FAILED).phase is L.NO_KERNEL


@pytest.mark.parametrize(
    ("events", "refused"),
    [
        ((E.BEGIN_START,), E.BEGIN_START),  # already starting
        ((E.BEGIN_START,), E.BEGIN_RESTART),  # still starting
        ((E.BEGIN_START, E.STARTED), E.BEGIN_START),  # already running
        ((E.BEGIN_RESTART,), E.BEGIN_RESTART),  # already restarting
        ((E.BEGIN_RESTART,), E.BEGIN_START),
        ((), E.STOP),  # nothing to stop
        ((), E.KERNEL_EXITED),  # no kernel to exit
        ((), E.STARTED),
        ((E.BEGIN_START, E.STARTED), E.RESTARTED),
    ],
)
def test_illegal_transitions_raise_and_change_nothing(
    events: tuple[LifecycleEvent, ...], refused: LifecycleEvent
) -> None:
    machine = run(*events)
    before = machine.phase
    assert not machine.can(refused)
    with pytest.raises(IllegalTransition) as info:
        machine.apply(refused)
    assert (info.value.phase, info.value.event) == (before, refused)
    assert machine.phase is before


def test_every_phase_is_in_the_table_and_reachable() -> None:
    assert set(TRANSITIONS) == set(Lifecycle)
    reachable = {L.NO_KERNEL}
    frontier = [L.NO_KERNEL]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()].values():
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(Lifecycle)


def test_only_no_kernel_accepts_a_start() -> None:
    startable = {phase for phase, events in TRANSITIONS.items() if E.BEGIN_START in events}
    assert startable == {L.NO_KERNEL}
