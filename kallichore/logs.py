"""Logging set-up for the server process.

Kallichore's scheme: ERROR records go to stderr, everything else to stdout;
``--log-file`` receives the same records (truncated at start). Levels are
Kallichore's five names; ``trace`` is below ``debug``.

Secrets (the bearer token, HMAC keys) are never passed to a logger: code that
handles them logs a description instead. :class:`RedactingFilter` is the
second line of defence: it replaces any registered secret that still reaches
a record's message, for every handler.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["TRACE", "RedactingFilter", "configure_logging", "python_level"]

#: Numeric level for ``trace`` (below :data:`logging.DEBUG`).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"
_DATE_FORMAT = "%H:%M:%S"


def python_level(name: str) -> int:
    """The :mod:`logging` level for one of Kallichore's level names."""
    return _LEVELS[name]


class RedactingFilter(logging.Filter):
    """Replace known secrets in a record's rendered message with ``[redacted]``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            redacted = message
            for secret in self._secrets:
                redacted = redacted.replace(secret, "[redacted]")
            if redacted != message:
                record.msg = redacted
                record.args = None
        return True


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def configure_logging(
    level: str, *, log_file: str | None = None, secrets: list[str] | None = None
) -> None:
    """Install the server's handlers on the root logger.

    Raises:
        OSError: the log file cannot be created.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(_FORMAT, _DATE_FORMAT)
    redact = RedactingFilter(secrets or [])

    handlers: list[logging.Handler] = []
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowError())
    handlers.append(out)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    handlers.append(err)
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact)
        root.addHandler(handler)
    root.setLevel(python_level(level))
    # Third-party chatter stays at warning unless we are tracing.
    quiet = logging.WARNING if python_level(level) > TRACE else TRACE
    for name in ("hypercorn", "quart", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
