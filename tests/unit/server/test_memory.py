"""MemoryTrimmer: trim the heap when the resident size has grown, and only then."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

from kallichore.server.memory import MemoryTrimmer, find_malloc_trim

MB = 1024 * 1024


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Jumps over sleeps, but not over the worker thread the trim runs in."""
    return trio.testing.MockClock(autojump_threshold=0.05)


class FakeHeap:
    """A resident size the test sets, and a malloc_trim that shrinks it."""

    def __init__(self, rss: int) -> None:
        self.resident = rss
        self.after_trim = rss
        self.trims = 0

    def rss(self) -> int:
        return self.resident

    def trim(self, pad: int) -> int:
        assert pad == 0
        self.trims += 1
        self.resident = self.after_trim
        return 1


def trimmer_for(heap: FakeHeap) -> MemoryTrimmer:
    return MemoryTrimmer(trim=heap.trim, rss=heap.rss, interval=10.0, growth=64 * MB)


async def test_growth_below_the_threshold_is_left_alone(clock: trio.abc.Clock) -> None:
    heap = FakeHeap(50 * MB)
    trimmer = trimmer_for(heap)
    with trio.move_on_after(1.0):
        await trimmer.run()  # takes the baseline
    heap.resident = 100 * MB
    await trimmer.check()
    assert heap.trims == 0


async def test_growth_past_the_threshold_is_trimmed_once(clock: trio.abc.Clock) -> None:
    heap = FakeHeap(50 * MB)
    trimmer = trimmer_for(heap)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        await trio.sleep(1.0)
        heap.resident, heap.after_trim = 250 * MB, 56 * MB
        await trio.sleep(10.0)  # one look
        assert (heap.trims, heap.resident) == (1, 56 * MB)
        await trio.sleep(15.0)  # nothing grew since
        assert heap.trims == 1
        nursery.cancel_scope.cancel()


async def test_a_heap_that_stays_large_is_trimmed_at_each_look_until_it_shrinks(
    clock: trio.abc.Clock,
) -> None:
    heap = FakeHeap(50 * MB)
    trimmer = trimmer_for(heap)
    with trio.move_on_after(1.0):
        await trimmer.run()
    heap.resident = heap.after_trim = 200 * MB  # a flood in progress: all of it in use
    await trimmer.check()
    await trimmer.check()
    assert heap.trims == 2
    heap.resident = heap.after_trim = 60 * MB  # the flood is over and was trimmed
    await trimmer.check()
    assert heap.trims == 2


async def test_no_malloc_trim_means_no_trimmer() -> None:
    trimmer = MemoryTrimmer(trim=None, rss=lambda: 1 << 40)
    await trimmer.run()  # returns at once
    await trimmer.check()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
async def test_malloc_trim_is_found_and_runs_on_linux() -> None:
    trim = find_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
