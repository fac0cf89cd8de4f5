"""kallichore.supervisor.fanout: the one writer to a client connection.

A fake connection records every frame it is given, and whether it came
straight through (from the producer's ``put``) or from the delivery task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from kallichore.session.outbox import Outbox
from kallichore.supervisor.fanout import (
    TAKEOVER_NOTICE,
    ChannelClosedError,
    ClientAttachment,
    ClientFanout,
)

LOG = logging.LoggerAdapter(logging.getLogger(__name__), {})


@attrs.define
class FakeConnection:
    written: list[bytes] = attrs.Factory(list)
    straight_through: list[bytes] = attrs.Factory(list)
    can_write_now: bool = True
    #: Whether write_now accepts frames (a socket with room in its buffer).
    room: bool = True
    fail: bool = False

    async def send_frames(self, frames: Sequence[bytes]) -> int:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise ChannelClosedError("the peer is gone")
        self.written.append(frames[0])
        return 1

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    def write_now(self, frames: Sequence[bytes]) -> int:
        if not self.room or self.fail:
            return 0
        self.written.append(frames[0])
        self.straight_through.append(frames[0])
        return 1

    def needs_flush(self) -> bool:
        return False


async def _delivering(
    nursery: trio.Nursery, fanout: ClientFanout, conn: FakeConnection
) -> tuple[ClientAttachment, trio.Event]:
    attachment, _ = fanout.attach()
    ended = trio.Event()

    async def deliver() -> None:
        try:
            await fanout.deliver(attachment, conn, LOG)
        finally:
            ended.set()

    nursery.start_soon(deliver)
    await trio.testing.wait_all_tasks_blocked()
    return attachment, ended


async def test_frames_put_while_delivery_waits_go_straight_through(nursery: trio.Nursery) -> None:
    fanout, conn = ClientFanout(), FakeConnection()
    await _delivering(nursery, fanout, conn)
    fanout.put(b"a", droppable=False)
    assert conn.straight_through == [b"a"]  # no checkpoint needed
    fanout.put(b"b", droppable=True, wake=False)
    assert conn.written == [b"a"]  # queued until the next wake-up
    fanout.wake()
    assert conn.written == [b"a", b"b"]


async def test_what_the_socket_cannot_take_now_is_delivered_in_order(
    nursery: trio.Nursery,
) -> None:
    fanout, conn = ClientFanout(), FakeConnection(room=False)
    await _delivering(nursery, fanout, conn)
    for frame in (b"1", b"2", b"3"):
        fanout.put(frame, droppable=False)
    assert conn.written == []
    conn.room = True
    fanout.put(b"4", droppable=False)  # straight through or not, never ahead of 1-3
    await trio.testing.wait_all_tasks_blocked()
    assert conn.written == [b"1", b"2", b"3", b"4"]


async def test_frames_queued_before_attach_come_first(nursery: trio.Nursery) -> None:
    fanout, conn = ClientFanout(), FakeConnection()
    fanout.put(b"early", droppable=False)
    await _delivering(nursery, fanout, conn)
    fanout.put(b"late", droppable=False)
    await trio.testing.wait_all_tasks_blocked()
    assert conn.written == [b"early", b"late"]


async def test_a_takeover_tells_the_old_client_and_ends_its_delivery(
    nursery: trio.Nursery,
) -> None:
    fanout, old = ClientFanout(), FakeConnection()
    first, ended = await _delivering(nursery, fanout, old)
    second, took_over = fanout.attach()
    assert took_over
    await ended.wait()
    assert old.written == [TAKEOVER_NOTICE]
    assert not fanout.is_current_client(first)
    assert fanout.is_current_client(second)
    fanout.put(b"for the new client", droppable=False)
    assert await fanout.next_frames(second) == [b"for the new client"]
    assert await fanout.next_frames(first) == []


async def test_a_failed_connection_leaves_its_frames_for_the_next_client(
    nursery: trio.Nursery,
) -> None:
    fanout, conn = ClientFanout(), FakeConnection(fail=True)
    attachment, ended = await _delivering(nursery, fanout, conn)
    for frame in (b"x", b"y"):
        fanout.put(frame, droppable=False)
    await ended.wait()
    fanout.detach(attachment)
    assert not fanout.connected
    after, _ = fanout.attach()
    assert await fanout.next_frames(after) == [b"x", b"y"]


async def test_stop_delivery_ends_at_a_frame_boundary_and_keeps_the_rest(
    nursery: trio.Nursery,
) -> None:
    fanout, conn = ClientFanout(), FakeConnection()
    attachment, ended = await _delivering(nursery, fanout, conn)
    attachment.stop_delivery()
    fanout.put(b"kept", droppable=False)
    assert conn.written == []  # nothing straight through once stopping
    await ended.wait()
    fanout.detach(attachment)
    after, _ = fanout.attach()
    assert await fanout.next_frames(after) == [b"kept"]


async def test_dropped_output_is_reported_first() -> None:
    fanout = ClientFanout(Outbox(limit_bytes=4))
    for frame in (b"ab", b"cd", b"ef"):
        fanout.put(frame, droppable=True)
    attachment, _ = fanout.attach()
    frames = await fanout.next_frames(attachment)
    assert frames == [b'{"kind":"kernel","outputDropped":1}', b"cd", b"ef"]


async def test_cancelling_a_reader_loses_nothing(nursery: trio.Nursery) -> None:
    fanout = ClientFanout()
    attachment, _ = fanout.attach()
    with trio.move_on_after(0.01):
        await fanout.next_frames(attachment)
    fanout.put(b"z", droppable=False)
    assert await fanout.next_frames(attachment) == [b"z"]


@pytest.mark.parametrize("socket_path", [None, "/tmp/kallichore-test.sock"])
def test_connected_and_socket_path_follow_the_attached_client(socket_path: str | None) -> None:
    fanout = ClientFanout()
    assert not fanout.connected
    attachment, took_over = fanout.attach(socket_path=socket_path)
    assert not took_over
    assert (fanout.connected, fanout.socket_path) == (True, socket_path)
    assert fanout.detach(attachment)
    assert not fanout.detach(attachment)
    assert (fanout.connected, fanout.socket_path) == (False, None)
