"""The open-file limit (``RLIMIT_NOFILE``): raised at start, explained when it runs out.

Every running kernel holds about :data:`FDS_PER_SESSION` descriptors in the
server (five ZeroMQ sockets, each with a TCP connection and a mailbox, the
kernel's stdout and stderr pipes, its pidfd). Under a soft limit of 1024, a
common default (macOS has 256), the server runs out after some 60 sessions.

What we do about it:

* **Raise the soft limit at start**, towards the hard limit, as long-running
  servers do (the Go runtime does it for every program). Only the command
  line (``kcserver``, ``python -m kallichore serve``) does this: a library
  must not change process-wide limits under its host, so an embedding
  application calls :func:`raise_soft_limit` itself if it wants to.
* **Kernels get the original soft limit back** (Linux, ``prlimit``), so a
  kernel sees the limit it would have had without us; programs that use
  ``select()`` or loop over every possible descriptor rely on a small one.
  Go's ``os/exec`` does the same for its children.
* **Size ZeroMQ's socket table to match** (:func:`size_zmq_context`); its
  default cap of 1023 sockets would otherwise run out first, at about 200
  sessions, with the same "Too many open files" error.
* **Log** the limits and about how many sessions they allow
  (:func:`log_limits`, from :func:`kallichore.server.serve`).
* **Say so when descriptors run out**: :func:`shortage_error` turns a start
  failure caused by ``EMFILE``/``ENFILE`` into one that names the limits and
  what to change, with the same status and ``startupError`` shape.

Accepting an HTTP connection at the limit does not stop the server:
``trio.serve_listeners`` logs ``EMFILE`` and retries after a pause (the
connection waits in the listen backlog meanwhile). A request accepted with
the last free descriptor is still answered: nothing on its way opens a file
(what would, a codec or a document read on first use, is loaded at start),
and should something still fail for lack of descriptors, the client gets a
503 whose body says so (:func:`request_shortage`), not an empty 500.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import attrs
import psutil

from kallichore.errors import ErrorCode, StartupError

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE to manage
    resource = None  # type: ignore[assignment]

__all__ = [
    "FDS_PER_SESSION",
    "FdLimits",
    "check_headroom",
    "current_limits",
    "is_exhaustion",
    "log_limits",
    "open_descriptors",
    "quiet_accept_errors",
    "raise_soft_limit",
    "request_shortage",
    "restore_child_limit",
    "sessions_allowed",
    "shortage_error",
    "size_zmq_context",
]

logger = logging.getLogger(__name__)

#: Descriptors one running session holds in the server (measured with ipykernel).
FDS_PER_SESSION = 15  # descriptors
#: Kept free for the server itself: HTTP connections (the request that would
#: stop a session included), WebSockets, reading /proc.
RESERVED_FDS = 16  # descriptors
#: Free descriptors a start needs: fewer, and it is refused before it begins
#: (and a failed start is put down to the limit).
NEEDED_TO_START = FDS_PER_SESSION + RESERVED_FDS  # descriptors
#: Soft limit to try when the hard limit is unlimited (macOS): its OPEN_MAX.
UNLIMITED_FALLBACK = 10240  # descriptors
#: At most one "accept returned EMFILE" log line per this many seconds.
ACCEPT_LOG_INTERVAL = 10.0  # seconds
#: The errors that mean "no descriptor left" (per process, or system-wide).
_EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
_EXHAUSTION_TEXTS = tuple(os.strerror(code) for code in sorted(_EXHAUSTION_ERRNOS))

# The soft limit the process started with, once raise_soft_limit() changed it:
# what kernels get back. None while the limit is the inherited one.
_original_soft: int | None = None


@attrs.frozen
class FdLimits:
    """The process's descriptor limits; ``None`` means unlimited (or unknown)."""

    soft: int | None
    hard: int | None

    @staticmethod
    def _show(value: int | None) -> str:
        return "unlimited" if value is None else str(value)

    def describe(self) -> str:
        """``soft limit 1024, hard limit 4096``."""
        return f"soft limit {self._show(self.soft)}, hard limit {self._show(self.hard)}"


def _finite(value: int) -> int | None:
    assert resource is not None
    return None if value == resource.RLIM_INFINITY else value


def current_limits() -> FdLimits:
    """The current ``RLIMIT_NOFILE`` (both ``None`` where there is none)."""
    if resource is None:
        return FdLimits(None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdLimits(_finite(soft), _finite(hard))


def open_descriptors() -> int | None:
    """How many descriptors this process has open (``None`` if unknown)."""
    try:
        count: int = psutil.Process().num_fds()
    except (AttributeError, psutil.Error, OSError):  # num_fds is POSIX-only
        return None
    return count


def raise_soft_limit() -> tuple[FdLimits, FdLimits]:
    """Raise the soft descriptor limit as far as the hard limit allows.

    With an unlimited hard limit (macOS), :data:`UNLIMITED_FALLBACK` is
    tried. Never lowers the limit. Kernels started afterwards get the old
    soft limit back (see :func:`restore_child_limit`).

    Returns:
        ``(before, after)``; equal when nothing changed.

    **Errors:** none: a refusal is logged and the old limit kept.
    """
    global _original_soft
    before = current_limits()
    if resource is None or before.soft is None or before.soft == before.hard:
        return before, before
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = before.hard if before.hard is not None else UNLIMITED_FALLBACK
    if target <= before.soft:
        return before, before
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("Could not raise the open-file limit to %d: %s", target, exc)
        return before, before
    if _original_soft is None:
        _original_soft = before.soft
    return before, current_limits()


def restore_child_limit(pid: int) -> None:
    """Give a just-started kernel the soft limit the server started with.

    A no-op unless :func:`raise_soft_limit` raised it, and on systems without
    ``prlimit`` (macOS: there kernels keep the raised limit). The limit is
    set right after the spawn, before the kernel's interpreter has started
    opening files.
    """
    if _original_soft is None or resource is None or not hasattr(resource, "prlimit"):
        return
    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_original_soft, hard))
    except (ProcessLookupError, PermissionError, OSError, ValueError) as exc:
        logger.debug("Could not restore the open-file limit of process %d: %s", pid, exc)


def size_zmq_context() -> None:
    """Let the process-wide ZeroMQ context have as many sockets as descriptors.

    ZeroMQ caps a context at 1023 sockets by default, and reports the cap as
    ``EMFILE`` too. Takes effect only before the context's first socket, so
    call it at start, after :func:`raise_soft_limit`. (ZeroMQ itself is
    touched only in :func:`kallichore.transport.zmq.size_zmq_context`.)
    """
    from kallichore.transport.zmq import size_zmq_context as size_context

    size_context(current_limits().soft)


class _AcceptErrorThrottle(logging.Filter):
    """Let one of trio's accept-error records through per :data:`ACCEPT_LOG_INTERVAL`.

    ``trio.serve_listeners`` logs every failed ``accept`` (with a traceback)
    and retries after 0.1 s: at the open-file limit that is ten tracebacks a
    second. The one let through carries no traceback and says how many were
    dropped and what the limit is.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        self._next = now + ACCEPT_LOG_INTERVAL
        note = f"; open-file {current_limits().describe()}"
        if self._dropped:
            note += f"; {self._dropped} more like this in the last {ACCEPT_LOG_INTERVAL:g} s"
        self._dropped = 0
        record.msg = str(record.msg) + note.replace("%", "%%")
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_accept_errors() -> None:
    """Throttle trio's log of failed accepts (see :class:`_AcceptErrorThrottle`).

    Changes logging for the whole process, so only the command line calls it.
    """
    logging.getLogger("trio.serve_listeners").addFilter(_AcceptErrorThrottle())


def sessions_allowed(limits: FdLimits, open_now: int) -> int | None:
    """About how many more sessions fit under ``limits`` (``None``: no limit)."""
    if limits.soft is None:
        return None
    return max(0, (limits.soft - open_now - RESERVED_FDS) // FDS_PER_SESSION)


def log_limits() -> None:
    """Log the limits and about how many sessions they allow."""
    limits = current_limits()
    open_now = open_descriptors()
    if limits.soft is None or open_now is None:
        logger.info("Open-file limit: %s", limits.describe())
        return
    logger.info(
        "Open-file limit: %s; %d open; room for about %d sessions (%d descriptors each)",
        limits.describe(),
        open_now,
        sessions_allowed(limits, open_now),
        FDS_PER_SESSION,
    )


def is_exhaustion(exc: BaseException) -> bool:
    """Whether ``exc``, or anything it was raised from or during, is EMFILE/ENFILE.

    Looks into exception groups (a trio nursery's), checks the errno where
    there is one, and the message where a layer kept only the text (ZeroMQ's
    errors, re-raised as our own).
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "errno", None) in _EXHAUSTION_ERRNOS:
            return True
        if any(text in str(current) for text in _EXHAUSTION_TEXTS):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
        pending += [current.__cause__, current.__context__]
    return False


def request_shortage() -> tuple[str, str]:
    """``(message, details)`` for an HTTP request that failed for lack of descriptors.

    Reads no file (the process has no descriptor to read one with).
    """
    limits = current_limits()
    message = (
        f"The server is out of file descriptors (open-file {limits.describe()}); "
        "try again once connections or sessions have closed"
    )
    return message, _advice(limits, None, "")


def shortage_error(exc: StartupError) -> StartupError | None:
    """A clearer error for a start that failed for lack of descriptors, else ``None``.

    Two signs count: the error (or one it came from) is ``EMFILE``/``ENFILE``;
    or fewer than :data:`NEEDED_TO_START` descriptors are free. The second is how
    most shortages show: ZeroMQ opens its TCP connections in its own thread,
    which retries quietly, so the start just times out.

    Keeps ``exc``'s code, status, exit code and output; the message says that
    descriptors ran out, the details give the limits, what to change, and
    the original error.
    """
    limits = current_limits()
    open_now = open_descriptors()
    if not (_short(limits, open_now) or is_exhaustion(exc)):
        return None
    reason = f"The error was: {exc.message.rstrip('.')}"
    return _shortage(exc.code, reason, limits, open_now, exc.exit_code, exc.output)


def check_headroom() -> None:
    """Refuse a start that would leave the server without descriptors of its own.

    A start that takes the last descriptors leaves none to accept the next
    HTTP connection -- not even the one that would stop a session and free
    some -- so we refuse it while :data:`RESERVED_FDS` would still be free.

    Raises:
        StartupError: (``PROCESS_START_FAILED``, 500) fewer than
            :data:`NEEDED_TO_START` descriptors are free.
    """
    limits = current_limits()
    open_now = open_descriptors()
    if _short(limits, open_now):
        raise _shortage(
            ErrorCode.PROCESS_START_FAILED,
            f"{NEEDED_TO_START} free descriptors are needed to start one",
            limits,
            open_now,
        )


def _short(limits: FdLimits, open_now: int | None) -> bool:
    return (
        limits.soft is not None
        and open_now is not None
        and limits.soft - open_now < NEEDED_TO_START
    )


def _shortage(
    code: ErrorCode,
    reason: str,
    limits: FdLimits,
    open_now: int | None,
    exit_code: int | None = None,
    output: str | None = None,
) -> StartupError:
    return StartupError(
        code,
        f"Failed to start session: out of file descriptors ({limits.describe()})",
        _advice(limits, open_now, f" {reason}."),
        exit_code=exit_code,
        output=output,
    )


def _advice(limits: FdLimits, open_now: int | None, reason: str) -> str:
    """What ran out, and what to change; ``reason`` is appended."""
    held = f"{open_now} open, " if open_now is not None else ""
    if limits.soft is not None and limits.soft == limits.hard:
        change = (
            "or raise the hard limit (LimitNOFILE= in a systemd unit, "
            "/etc/security/limits.conf, `sudo launchctl limit maxfiles` on macOS) "
            "and restart the server: kcserver raises its soft limit to the hard one"
        )
    else:
        raise_to = limits.hard if limits.hard is not None else UNLIMITED_FALLBACK
        change = f"or restart the server after `ulimit -n {raise_to}` in the shell that starts it"
    return (
        f"The server has run out of file descriptors ({held}{limits.describe()}); "
        f"each running session holds about {FDS_PER_SESSION}. Stop sessions that are "
        f"no longer needed, {change}.{reason}"
    )
