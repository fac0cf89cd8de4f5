"""Give the heap back to the system after an output flood.

iopub sockets have no high-water mark, so nothing a kernel publishes is
dropped: when kernels publish faster than the server forwards, libzmq's I/O
thread queues the difference. Five synthetic floods took the server from
52 MB to 260 MB. glibc keeps what is freed afterwards in its arenas, so the
server stayed at 190-225 MB once the floods were over and the sessions gone.
``malloc_trim(0)`` hands the free pages back: 225 MB to 56 MB, in 14 ms.

:class:`MemoryTrimmer` looks at the server's resident size every
:data:`TRIM_CHECK_INTERVAL` and trims, in a worker thread, when it has grown
by :data:`TRIM_GROWTH` since start. While the heap stays that large (a flood
in progress, or simply many sessions) it trims at every look, which costs
about 1 ms of a worker thread per 10 MB of heap every ten seconds. Where
there is no ``malloc_trim`` (macOS, musl) the trimmer does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import attrs
import psutil
import trio

__all__ = ["TRIM_CHECK_INTERVAL", "TRIM_GROWTH", "MemoryTrimmer", "find_malloc_trim"]

logger = logging.getLogger(__name__)

#: Seconds between looks at the resident size.
TRIM_CHECK_INTERVAL = 10.0
#: Growth of the resident size, in bytes, that makes the trimmer trim.
TRIM_GROWTH = 64 * 1024 * 1024


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none.

    Looked up among the symbols the process already has (``dlopen(NULL)``),
    so no library search (``ctypes.util.find_library`` runs ``ldconfig``).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _own_rss() -> int:
    return int(psutil.Process().memory_info().rss)


@attrs.define(eq=False)
class MemoryTrimmer:
    """Trims the heap while the resident size is well above its start (see module docstring).

    Args:
        trim: ``malloc_trim``; ``None`` turns the trimmer off.
        rss: reads the process's resident size in bytes.
        interval: seconds between looks.
        growth: bytes of growth that make it trim.
    """

    trim: Callable[[int], int] | None = attrs.field(factory=find_malloc_trim)
    rss: Callable[[], int] = _own_rss
    interval: float = TRIM_CHECK_INTERVAL
    growth: int = TRIM_GROWTH
    # Resident size at start.
    _baseline: int = attrs.field(default=0, init=False)

    async def run(self) -> None:
        """Look every ``interval`` seconds, forever (returns at once when off).

        **Cancellation:** safe; a trim in progress finishes first (it takes
        milliseconds).
        """
        if self.trim is None:
            logger.debug("No malloc_trim in this C library: the heap is not trimmed")
            return
        try:
            self._baseline = self.rss()
        except (psutil.Error, OSError) as exc:
            logger.warning("Cannot read the resident size (%s): the heap is not trimmed", exc)
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await self.check()
            except (psutil.Error, OSError) as exc:
                # Reading /proc needs a descriptor: at the open-file limit
                # this fails, and must not take the server down with it.
                logger.debug("Heap trim check skipped: %s", exc)

    async def check(self) -> None:
        """Trim now if the resident size is ``growth`` or more above its start."""
        if self.trim is None:
            return
        before = self.rss()
        if before < self._baseline + self.growth:
            return
        await trio.to_thread.run_sync(self.trim, 0)
        after = self.rss()
        logger.debug("Trimmed the heap: %.0f MB -> %.0f MB resident", before / 1e6, after / 1e6)
