"""The suite's own time-limit rule: a hang fails fast instead of freezing CI."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.conftest import _with_time_limit


async def test_a_hang_fails_fast() -> None:
    async def hang() -> None:
        await trio.sleep_forever()

    with pytest.raises(trio.TooSlowError):
        await _with_time_limit(hang, 0.01)()


async def test_autojump_runs_hours_in_no_time(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await trio.sleep(3 * 3600)
    assert trio.current_time() - start == pytest.approx(3 * 3600)
