"""DroppedMessageLog: the first drop of a kind at once, then summaries (tier 1, pure)."""

from __future__ import annotations

import logging

import pytest

from kallichore.supervisor.dropped_messages import SUMMARY_INTERVAL, DroppedMessageLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_flood_of_unsigned_messages_logs_two_lines_not_thousands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    drops = DroppedMessageLog(clock=clock)
    for _ in range(10_000):
        drops.record("iopub", "unsigned message")
    assert drops.total == 10_000
    lines = messages(caplog)
    assert len(lines) == 1
    assert "unsigned message" in lines[0]
    assert "--allow-unsigned-kernel-messages" in lines[0]

    clock.now += SUMMARY_INTERVAL
    drops.flush_if_due()
    lines = messages(caplog)
    assert len(lines) == 2
    assert "dropped 9999 more kernel message(s) (9999 unsigned message); 10000 in all" in lines[1]


def test_summaries_are_rate_limited_and_flush_reports_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    drops = DroppedMessageLog(clock=clock)
    drops.record("shell", "bad signature")
    for _ in range(3):
        clock.now += SUMMARY_INTERVAL / 4
        drops.record("shell", "bad signature")
    assert len(messages(caplog)) == 1  # within the interval: counted only
    clock.now += SUMMARY_INTERVAL
    drops.record("iopub", "bad signature")  # due: this drop logs the summary
    assert "4 bad signature" in messages(caplog)[-1]
    drops.record("iopub", "replayed message signature")  # a new kind: logged at once
    drops.record("iopub", "replayed message signature")
    drops.flush()  # the connection ended: nothing stays uncounted
    assert "1 replayed message signature" in messages(caplog)[-1]
    assert "7 in all" in messages(caplog)[-1]
    before = len(messages(caplog))
    drops.flush()
    assert len(messages(caplog)) == before


def test_the_log_goes_to_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    drops = DroppedMessageLog(logging.getLogger("kallichore.supervisor.session"))
    drops.record("control", "unsigned message")
    assert caplog.records[0].name == "kallichore.supervisor.session"
