"""Logging set-up for the server process.

Kallichore's scheme: ERROR records go to stderr, everything else to stdout;
``--log-file`` receives the same records (truncated at start). Levels are
Kallichore's five names; ``trace`` is below ``debug``.

Two formats (``--log-format``):

* ``text``: ``2026-12-08T09:14:03.512Z [INFO] kallichore.access: GET /sessions 200 0.8 ms``,
  the time in UTC, ISO 8601, to the millisecond;
* ``json``: one object per line for log shippers, with ``time``, ``level``,
  ``logger``, ``message``, ``exception`` when there is one, and the
  structured fields a record carries (:data:`JSON_FIELDS`: the session id of
  session lines, the method, path, status and duration of access lines).

Lines about a session go through :class:`SessionLog`, which starts them with
``Session <id>:`` and sets the record's ``session_id``.

Secrets (the bearer token, HMAC keys) are never passed to a logger: code that
handles them logs a description instead. :class:`RedactingFilter` is the
second line of defence: it replaces any registered secret that still reaches
a record's message, for every handler.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

__all__ = [
    "JSON_FIELDS",
    "LOG_FORMATS",
    "TRACE",
    "JsonFormatter",
    "RedactingFilter",
    "SessionLog",
    "TextFormatter",
    "configure_logging",
    "log_access",
    "masked_query",
    "python_level",
]

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
#: Names accepted by ``--log-format``.
LOG_FORMATS = ("text", "json")
#: Record attributes copied into JSON lines when a record has them.
JSON_FIELDS = ("session_id", "method", "path", "status", "duration_ms", "websocket")


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


def _iso_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """Kallichore-like lines with a dated UTC timestamp (ISO 8601, milliseconds)."""

    def __init__(self) -> None:
        super().__init__(_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in JSON_FIELDS:
            value = fields.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one session's lines: ``Session <id>: ...``, ``session_id`` set.

    The id goes into the message, not the object's repr, so every line about
    a session can be found by its id, in text and in JSON.
    """

    def __init__(self, logger: logging.Logger, session_id: str) -> None:
        super().__init__(logger, {"session_id": session_id})
        self.session_id = session_id
        # Escaped: the prefix becomes part of a %-format string.
        self._prefix = f"Session {session_id.replace('%', '%%')}: "

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**extra, "session_id": self.session_id} if extra else self.extra
        return f"{self._prefix}{msg}", kwargs


#: The access log (:mod:`kallichore.api.access_log` describes its lines).
access_logger = logging.getLogger("kallichore.access")


def masked_query(query: bytes) -> str:
    """``?name=***&...`` for a query string, or ``""``; values are never shown."""
    if not query:
        return ""
    names = [name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)]
    if not names:
        return "?***"
    return "?" + "&".join(f"{name}=***" for name in names)


def log_access(
    method: str,
    path: str,
    status: int,
    seconds: float,
    *,
    websocket: bool = False,
    reason: str | None = None,
    session_id: str | None = None,
) -> None:
    """Log one access line (format: :mod:`kallichore.api.access_log`).

    Args:
        method: the request method.
        path: the path as sent (percent-encoded), with any query masked.
        status: the response status; 101 for an accepted WebSocket.
        seconds: time from the request to its response, or how long a
            WebSocket was open.
        websocket: whether this was a WebSocket.
        reason: why the request was refused, when known (a 401's reason).
        session_id: the session a channel WebSocket served.
    """
    level = logging.WARNING if status == 401 else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 1)
    suffix = " (websocket)" if websocket else ""
    if reason:
        suffix += f" ({reason})"
    # makeRecord + handle is what Logger.log does, minus the stack walk that
    # finds the caller (a fifth of the cost; the line's origin is fixed).
    record = access_logger.makeRecord(
        access_logger.name,
        level,
        __file__,
        0,
        "%s %s %d %.1f ms%s",
        (method, path, status, duration_ms, suffix),
        None,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "websocket": websocket,
            "session_id": session_id,
        },
    )
    access_logger.handle(record)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def configure_logging(
    level: str,
    *,
    log_file: str | None = None,
    secrets: list[str] | None = None,
    log_format: str = "text",
) -> None:
    """Install the server's handlers on the root logger.

    Args:
        level: one of Kallichore's level names.
        log_file: also write every record to this file (truncated).
        secrets: strings replaced by ``[redacted]`` wherever they appear.
        log_format: ``"text"`` or ``"json"`` (:data:`LOG_FORMATS`).

    Raises:
        OSError: the log file cannot be created.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
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
