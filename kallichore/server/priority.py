"""REST requests before output floods.

One trio thread runs everything, so while five kernels flood output the
server's CPU is taken by their pumps (iopub readers, client writers), and a
``GET /status`` has to wait for its turn at every step of its way through
hypercorn and Quart: a p99 of 400 ms was measured with five floods.

:class:`RequestPriority` is a small agreement between the two sides: the
HTTP server marks each request in flight (:meth:`RequestPriority.begin` and
:meth:`RequestPriority.end`), and the pumps call
:meth:`RequestPriority.wait_turn` before each batch (and
:meth:`RequestPriority.holding` within one), which waits while a request is
in flight. So a request runs nearly alone. A request holds the pumps back for
at most :data:`PRIORITY_WINDOW` from its start, so a slow one (a kernel start
waits seconds for the kernel) costs the floods a few milliseconds, not its
whole duration.

A request's task only runs, and marks the request, after every task that was
runnable when its bytes arrived has taken a step; under a flood that is a
millisecond or more of pump work. So the HTTP server also registers its
listening socket and its connections (:meth:`RequestPriority.watch`), and a
busy pump asks, at the start of each step, whether any of them has bytes
waiting (one ``epoll_wait`` with no timeout, about 2 us). If one has, the
pumps hold back for at most :data:`ARRIVAL_WINDOW` until the request begins.
An arrival that never becomes a request (a connection closing) cannot hold
the pumps again for :data:`ARRIVAL_COOLDOWN`.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator

import attrs
import trio

__all__ = ["ARRIVAL_COOLDOWN", "ARRIVAL_WINDOW", "PRIORITY_WINDOW", "RequestPriority"]

#: How long after its start a request keeps the pumps waiting.
PRIORITY_WINDOW = 0.02  # seconds
#: How long bytes waiting on a watched socket keep the pumps waiting for
#: their request to begin.
ARRIVAL_WINDOW = 0.005  # seconds
#: After an arrival that did not begin a request in time, how long arrivals
#: are not looked for.
ARRIVAL_COOLDOWN = 0.05  # seconds


_HAVE_EPOLL = hasattr(select, "epoll")


class _Readiness:
    """The sockets to look at for arrivals, and a zero-timeout look at them.

    epoll where there is one (it forgets a closed descriptor by itself), else
    ``poll``.
    """

    def __init__(self) -> None:
        self._fds: set[int] = set()
        self._epoll = select.epoll() if _HAVE_EPOLL else None
        self._poll = None if self._epoll is not None else select.poll()

    def __bool__(self) -> bool:
        return bool(self._fds)

    def add(self, fd: int) -> None:
        if self._epoll is not None:
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except FileExistsError:
                self._epoll.modify(fd, select.EPOLLIN)
        else:
            assert self._poll is not None
            self._poll.register(fd, select.POLLIN)
        self._fds.add(fd)

    def discard(self, fd: int) -> None:
        if fd not in self._fds:
            return
        self._fds.discard(fd)
        with contextlib.suppress(OSError, KeyError, ValueError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._poll is not None
                self._poll.unregister(fd)

    def any_readable(self) -> bool:
        if self._epoll is not None:
            return bool(self._epoll.poll(0, 1))
        assert self._poll is not None
        return any(event & select.POLLIN for _, event in self._poll.poll(0))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        self._fds.clear()


@attrs.define(eq=False)
class RequestPriority:
    """Requests in flight, and the pumps waiting for them (see module docstring)."""

    window: float = PRIORITY_WINDOW
    arrival_window: float = ARRIVAL_WINDOW
    arrival_cooldown: float = ARRIVAL_COOLDOWN
    _in_flight: int = attrs.field(default=0, init=False)
    # Bytes were seen waiting on a watched socket; their request has not begun.
    _arrival: bool = attrs.field(default=False, init=False)
    # The pumps wait until this time (trio clock) or until nothing is in flight.
    _until: float = attrs.field(default=0.0, init=False)
    # Arrivals are not looked for before this time (trio clock).
    _cooldown_until: float = attrs.field(default=0.0, init=False)
    # Set when the last request in flight ends.
    _released: trio.Event = attrs.field(factory=trio.Event, init=False)
    _watched: _Readiness | None = attrs.field(default=None, init=False)

    def begin(self) -> None:
        """One more request in flight (pair with :meth:`end`)."""
        if not self._in_flight and not self._arrival:
            self._released = trio.Event()
        self._arrival = False
        self._in_flight += 1
        self._until = max(self._until, trio.current_time() + self.window)

    def end(self) -> None:
        """A request from :meth:`begin` is done."""
        self._in_flight -= 1
        if not self._in_flight:
            self._release()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Mark one request in flight for the duration of the block."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def watch(self, fd: int) -> None:
        """Look for arrivals on ``fd`` (a listening socket or an HTTP connection)."""
        if self._watched is None:
            self._watched = _Readiness()
        self._watched.add(fd)

    def unwatch(self, fd: int) -> None:
        """Stop looking at ``fd``; call before it is closed. Unknown ``fd``\\ s are ignored."""
        if self._watched is not None:
            self._watched.discard(fd)

    def close(self) -> None:
        """Forget every watched socket and free the poller."""
        if self._watched is not None:
            self._watched.close()
            self._watched = None

    @property
    def in_flight(self) -> int:
        """How many requests are in flight."""
        return self._in_flight

    def holding(self) -> bool:
        """Whether a request is holding the pumps back right now."""
        return (self._in_flight > 0 or self._arrival) and trio.current_time() < self._until

    async def wait_turn(self, *, busy: bool = False) -> None:
        """Return at once, unless a request is in flight: then wait for it (bounded).

        ``busy`` pumps (those with more work queued) also look for arrivals
        on the watched sockets. Does not checkpoint when there is nothing to
        wait for.
        """
        if busy and not self._in_flight and not self._arrival:
            self._look_for_arrival()
        # (A request that begins while the pumps wait for its arrival moves
        # the deadline; so does one that begins just after another ends.)
        while (self._in_flight or self._arrival) and trio.current_time() < self._until:
            with trio.move_on_at(self._until):
                await self._released.wait()
        if self._arrival and trio.current_time() >= self._until:
            # No request began: whatever was readable (a closing connection)
            # is not looked at again for a while.
            self._cooldown_until = trio.current_time() + self.arrival_cooldown
            self._release()

    def _look_for_arrival(self) -> None:
        watched = self._watched
        if not watched:
            return
        now = trio.current_time()
        if now < self._cooldown_until or not watched.any_readable():
            return
        self._arrival = True
        self._released = trio.Event()
        self._until = now + self.arrival_window

    def _release(self) -> None:
        self._arrival = False
        self._until = 0.0
        self._released.set()
