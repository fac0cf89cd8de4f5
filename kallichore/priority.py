"""REST requests before output floods.

One trio thread runs everything, so while five kernels flood output the
server's CPU is taken by their pumps (iopub readers, client writers), and a
``GET /status`` has to wait for its turn at every step of its way through
hypercorn and Quart: a p99 of 400 ms was measured with five floods.

:class:`RequestPriority` is a small agreement between the two sides: the
HTTP app marks each request in flight (:meth:`RequestPriority.request`), and
the pumps call :meth:`RequestPriority.wait_turn` before each batch, which
waits while a request is in flight. So a request runs nearly alone. A
request holds the pumps back for at most :data:`PRIORITY_WINDOW` from its
start, so a slow one (a kernel start waits seconds for the kernel) costs the
floods a few milliseconds, not its whole duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs
import trio

__all__ = ["PRIORITY_WINDOW", "RequestPriority"]

#: How long after its start a request keeps the pumps waiting.
PRIORITY_WINDOW = 0.02  # seconds


@attrs.define(eq=False)
class RequestPriority:
    """Requests in flight, and the pumps waiting for them (see module docstring)."""

    window: float = PRIORITY_WINDOW
    _in_flight: int = attrs.field(default=0, init=False)
    # The pumps wait until this time (trio clock) or until no request is in flight.
    _until: float = attrs.field(default=0.0, init=False)
    # Set when the last request in flight ends.
    _released: trio.Event = attrs.field(factory=trio.Event, init=False)

    def begin(self) -> None:
        """One more request in flight (pair with :meth:`end`)."""
        if not self._in_flight:
            self._released = trio.Event()
        self._in_flight += 1
        self._until = max(self._until, trio.current_time() + self.window)

    def end(self) -> None:
        """A request from :meth:`begin` is done."""
        self._in_flight -= 1
        if not self._in_flight:
            self._until = 0.0
            self._released.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Mark one request in flight for the duration of the block."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    async def wait_turn(self) -> None:
        """Return at once, unless a request is in flight: then wait for it (bounded).

        Does not checkpoint when nothing is in flight.
        """
        if self._in_flight and trio.current_time() < self._until:
            with trio.move_on_at(self._until):
                await self._released.wait()
