"""The bounded per-session outbox: order, exactly-once, and what may be dropped."""

from __future__ import annotations

from kallichore.session.outbox import Outbox


def test_frames_come_out_in_order_exactly_once() -> None:
    box = Outbox(limit_bytes=1000)
    for i in range(10):
        box.put(b"%d" % i, droppable=i % 2 == 0)
    assert [box.pop() for _ in range(10)] == [b"%d" % i for i in range(10)]
    assert box.pop() is None
    assert len(box) == 0
    assert box.size_bytes == 0


def test_overflow_drops_the_oldest_output_and_counts_it() -> None:
    box = Outbox(limit_bytes=100)
    box.put(b"S" * 10)  # a status: never dropped
    for i in range(20):
        box.put(b"%02d" % i + b"o" * 8, droppable=True)  # 10-byte output frames
    assert box.size_bytes <= 100
    dropped = box.take_dropped()
    assert dropped == 11
    assert box.take_dropped() == 0, "the count is handed out once"
    frames = []
    while (frame := box.pop()) is not None:
        frames.append(frame)
    assert frames[0] == b"S" * 10
    # The newest output survives, in order.
    assert [f[:2] for f in frames[1:]] == [b"%02d" % i for i in range(11, 20)]


def test_non_droppable_frames_are_never_dropped_even_past_the_limit() -> None:
    box = Outbox(limit_bytes=10)
    for _ in range(5):
        box.put(b"x" * 10)
    assert len(box) == 5
    assert box.take_dropped() == 0


def test_memory_is_bounded_while_a_reader_keeps_up() -> None:
    box = Outbox(limit_bytes=50)
    for i in range(10_000):
        box.put(b"%05d" % i, droppable=True)
        assert box.pop() == b"%05d" % i
    assert len(box._droppable) == 0
    assert len(box._entries) == 0


def test_dropped_entries_release_their_bytes() -> None:
    box = Outbox(limit_bytes=10)
    box.put(b"a" * 10, droppable=True)
    box.put(b"b" * 10, droppable=True)
    assert box.size_bytes == 10
    assert all(e.data == b"" for e in box._entries if not e.alive)


def test_requeued_frames_go_first() -> None:
    box = Outbox()
    box.put(b"later")
    box.push_front(b"first")
    assert box.pop() == b"first"
    assert box.pop() == b"later"
