"""RequestPriority: output pumps wait for REST requests, but only so long."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import kallichore.server.priority
from kallichore.server.priority import PRIORITY_WINDOW, RequestPriority


async def pump(priority: RequestPriority, waited: list[float], busy: bool = False) -> None:
    """Wait for a turn, as a pump does; record how long that took."""
    start = trio.current_time()
    await priority.wait_turn(busy=busy)
    waited.append(trio.current_time() - start)


async def test_no_request_means_no_wait() -> None:
    priority = RequestPriority()
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn()


async def test_pumps_wait_until_the_request_ends(autojump_clock: trio.abc.Clock) -> None:
    priority = RequestPriority(window=10.0)
    waited: list[float] = []

    async with trio.open_nursery() as nursery:
        with priority.request():
            nursery.start_soon(pump, priority, waited)
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


async def test_holding_is_true_only_within_the_window(autojump_clock: trio.abc.Clock) -> None:
    priority = RequestPriority(window=1.0)
    assert not priority.holding()
    priority.begin()
    assert priority.holding()
    await trio.sleep(1.0)
    assert not priority.holding(), "past the window a slow request holds nothing"
    priority.end()
    assert not priority.holding()


# --------------------------------------------------------------- arrivals


@pytest.fixture(params=["epoll", "poll"])
def watched(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RequestPriority, socket.socket, socket.socket]]:
    """(priority, server end, client end): a priority watching the server end
    of a connected socket pair for arrivals, with epoll and with the poll
    fallback."""
    if request.param == "poll":
        monkeypatch.setattr(kallichore.server.priority, "_HAVE_EPOLL", False)
    elif not hasattr(select, "epoll"):
        pytest.skip("no epoll on this platform")
    priority = RequestPriority(window=10.0, arrival_window=1.0, arrival_cooldown=5.0)
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        priority.watch(server_end.fileno())
        yield priority, server_end, client_end
        priority.close()


async def test_busy_pumps_wait_for_a_request_whose_bytes_have_arrived(
    autojump_clock: trio.abc.Clock,
    watched: tuple[RequestPriority, socket.socket, socket.socket],
) -> None:
    priority, server_end, client_end = watched
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn(busy=True)  # nothing has arrived
    client_end.send(b"GET /status HTTP/1.1\r\n\r\n")
    waited: list[float] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, priority, waited, True)
        await trio.sleep(0.5)
        # The request's task reads its bytes and marks it in flight: the
        # pump goes on waiting past the arrival window, until the end.
        server_end.recv(1024)
        priority.begin()
        await trio.sleep(2.0)
        priority.end()
    assert waited == [2.5]


async def test_idle_pumps_do_not_look_for_arrivals(
    watched: tuple[RequestPriority, socket.socket, socket.socket],
) -> None:
    priority, _server_end, client_end = watched
    client_end.send(b"GET / HTTP/1.1\r\n\r\n")
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn()
    assert not priority.holding()


async def test_an_arrival_that_begins_no_request_holds_once_then_cools_down(
    autojump_clock: trio.abc.Clock,
    watched: tuple[RequestPriority, socket.socket, socket.socket],
) -> None:
    priority, _server_end, client_end = watched
    client_end.send(b"x")  # read by nobody
    start = trio.current_time()
    await priority.wait_turn(busy=True)
    assert trio.current_time() - start == 1.0  # the arrival window
    assert not priority.holding()
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn(busy=True)  # cooling down: not looked at
    await trio.sleep(5.0)
    start = trio.current_time()
    await priority.wait_turn(busy=True)  # cooled down: held once more
    assert trio.current_time() - start == 1.0


async def test_unwatched_sockets_are_not_looked_at(
    watched: tuple[RequestPriority, socket.socket, socket.socket],
) -> None:
    priority, server_end, client_end = watched
    priority.unwatch(server_end.fileno())
    priority.unwatch(server_end.fileno())  # twice is fine
    priority.unwatch(12345)  # never watched: ignored
    client_end.send(b"GET / HTTP/1.1\r\n\r\n")
    with trio.testing.assert_no_checkpoints():
        await priority.wait_turn(busy=True)


async def test_a_request_that_begins_while_pumps_wait_for_another_keeps_them_waiting(
    autojump_clock: trio.abc.Clock,
) -> None:
    priority = RequestPriority(window=10.0)
    waited: list[float] = []

    async with trio.open_nursery() as nursery:
        priority.begin()
        nursery.start_soon(pump, priority, waited)
        await trio.sleep(1.0)
        priority.end()
        priority.begin()  # before the pump has run again
        await trio.sleep(1.0)
        priority.end()
    assert waited == [2.0]
