"""The idle-shutdown matrix (busy, idle, clients, hours) under a mock clock.

Hours of idleness run in milliseconds: ``autojump_clock`` advances virtual
time whenever every task is blocked.
"""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from kallichore.config import idle_shutdown_period
from kallichore.server.idle import IdleWatcher

HOUR = 3600.0


@attrs.define
class World:
    """What the watcher observes, controlled by the test."""

    active: bool = False
    alive_pids: set[int] = attrs.field(factory=set)
    shutdown_at: float | None = None

    def is_active(self) -> bool:
        return self.active

    def pid_alive(self, pid: int) -> bool:
        return pid in self.alive_pids

    def on_idle(self) -> None:
        assert self.shutdown_at is None, "on_idle called twice"
        self.shutdown_at = trio.current_time()


async def start_watcher(
    nursery: trio.Nursery, hours: int | None, world: World
) -> tuple[IdleWatcher, float]:
    watcher = IdleWatcher(
        idle_shutdown_period(hours), world.is_active, world.on_idle, pid_alive=world.pid_alive
    )
    started = trio.current_time()
    await nursery.start(watcher.run)
    return watcher, started


def test_period_rules() -> None:
    assert idle_shutdown_period(None) is None
    assert idle_shutdown_period(-1) is None
    assert idle_shutdown_period(0) == 30.0
    assert idle_shutdown_period(2) == 2 * HOUR


async def test_idle_server_with_no_sessions_exits_after_the_period(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    _, started = await start_watcher(nursery, 1, world)
    await trio.sleep(HOUR - 1)
    assert world.shutdown_at is None, "never in the first period after start"
    await trio.sleep(2)
    assert world.shutdown_at == pytest.approx(started + HOUR)


async def test_zero_hours_means_thirty_seconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    _, started = await start_watcher(nursery, 0, world)
    await trio.sleep(60)
    assert world.shutdown_at == pytest.approx(started + 30)


async def test_negative_or_unset_hours_never_shut_down(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    await start_watcher(nursery, None, world)
    await trio.sleep(300 * HOUR)
    assert world.shutdown_at is None


async def test_busy_or_connected_sessions_keep_the_server_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World(active=True)
    _, started = await start_watcher(nursery, 1, world)
    await trio.sleep(10.5 * HOUR)
    assert world.shutdown_at is None
    world.active = False
    # The next check is at most one period after the last one.
    await trio.sleep(HOUR + 1)
    assert world.shutdown_at is not None
    assert world.shutdown_at - started == pytest.approx(11 * HOUR)


async def test_nudges_postpone_the_check(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    watcher, _ = await start_watcher(nursery, 1, world)
    for _ in range(5):
        await trio.sleep(HOUR - 60)
        watcher.nudge()
    last_nudge = trio.current_time()
    await trio.sleep(2 * HOUR)
    assert world.shutdown_at == pytest.approx(last_nudge + HOUR)


async def test_live_client_pid_keeps_the_server_up_and_pid_1_is_ignored(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World(alive_pids={4242, 1})
    watcher, _ = await start_watcher(nursery, 1, world)
    watcher.track_client(4242)
    await trio.sleep(8 * HOUR)  # e.g. a laptop asleep with the front end still running
    assert world.shutdown_at is None
    world.alive_pids.discard(4242)
    died = trio.current_time()
    await trio.sleep(2 * HOUR)
    assert world.shutdown_at is not None
    assert world.shutdown_at - died <= HOUR + 1
    assert watcher.client_pid is None

    world2 = World(alive_pids={1})
    watcher2, started2 = await start_watcher(nursery, 1, world2)
    watcher2.track_client(1)
    await trio.sleep(HOUR + 1)
    assert world2.shutdown_at == pytest.approx(started2 + HOUR)


async def test_changing_the_period_takes_effect_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    watcher, _ = await start_watcher(nursery, 24, world)
    await trio.sleep(HOUR)
    watcher.set_period(idle_shutdown_period(0))
    changed = trio.current_time()
    await trio.sleep(31)
    assert world.shutdown_at == pytest.approx(changed + 30)


async def test_disabling_then_enabling(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    watcher, _ = await start_watcher(nursery, 1, world)
    watcher.set_period(idle_shutdown_period(-1))
    await trio.sleep(100 * HOUR)
    assert world.shutdown_at is None
    watcher.set_period(idle_shutdown_period(2))
    enabled = trio.current_time()
    await trio.sleep(3 * HOUR)
    assert world.shutdown_at == pytest.approx(enabled + 2 * HOUR)


async def test_never_in_the_first_period_even_after_a_short_reconfiguration(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    world = World()
    watcher, started = await start_watcher(nursery, 0, world)
    await trio.sleep(29)
    watcher.nudge()
    await trio.sleep(29)
    assert world.shutdown_at is None
    await trio.sleep(2)
    assert world.shutdown_at is not None
    assert world.shutdown_at - started >= 30


async def test_watcher_returns_after_shutdown_and_is_cancellable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = World()
    watcher = IdleWatcher(None, world.is_active, world.on_idle, pid_alive=world.pid_alive)
    with trio.move_on_after(10):
        await watcher.run()
    assert world.shutdown_at is None
    assert watcher.period is None
    assert math.isinf(watcher._deadline())
