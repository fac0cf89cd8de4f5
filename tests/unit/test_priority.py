"""RequestPriority: output pumps wait for REST requests, but only so long."""

from __future__ import annotations

import trio
import trio.testing

from kallichore.priority import PRIORITY_WINDOW, RequestPriority


async def test_no_request_means_no_wait() -> None:
    priority = RequestPriority()
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn()


async def test_pumps_wait_until_the_request_ends(autojump_clock: trio.abc.Clock) -> None:
    priority = RequestPriority(window=10.0)
    waited: list[float] = []

    async def pump() -> None:
        start = trio.current_time()
        await priority.wait_turn()
        waited.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        with priority.request():
            nursery.start_soon(pump)
            await trio.sleep(2.0)
        # The request ended: the pump goes on at once.
    assert waited == [2.0]


async def test_a_slow_request_holds_pumps_back_only_for_the_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    priority = RequestPriority()
    priority.begin()
    start = trio.current_time()
    await priority.wait_turn()
    assert trio.current_time() - start == PRIORITY_WINDOW
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn()  # past the window: no more waiting
    priority.end()


async def test_overlapping_requests(autojump_clock: trio.abc.Clock) -> None:
    priority = RequestPriority(window=10.0)
    priority.begin()
    priority.begin()
    priority.end()
    with trio.move_on_after(1.0) as scope:
        await priority.wait_turn()
    assert scope.cancelled_caught, "one request is still in flight"
    priority.end()
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn()
