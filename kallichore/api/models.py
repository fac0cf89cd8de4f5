"""Request and response models, named after the schemas in ``kallichore.json``.

Field names are the spec's (snake_case on the wire and here). The models carry
no validation or serialisation logic: that lives in
:mod:`kallichore.api.converter`, at the edge (the cattrs principle). Optional
fields default to ``None``, and ``None`` fields are omitted from responses, as
Kallichore omits absent optional fields.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ClientHeartbeat",
    "LogLevel",
    "ServerConfiguration",
    "ServerStatus",
]


class LogLevel(enum.Enum):
    """The ``log_level`` enum of ``serverConfiguration``."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


@attrs.frozen
class ServerConfiguration:
    """``serverConfiguration``: runtime settings (request and response)."""

    idle_shutdown_hours: int | None = None
    resource_sample_interval_ms: int | None = None
    log_level: LogLevel | None = None


@attrs.frozen
class ClientHeartbeat:
    """``clientHeartbeat``: a client's periodic sign of life."""

    process_id: int | None = None


@attrs.frozen
class ServerStatus:
    """``serverStatus``: the unauthenticated server summary.

    ``server_id`` is our addition (a fresh id per server start).
    """

    sessions: int
    active: int
    busy: bool
    idle_seconds: int
    busy_seconds: int
    uptime_seconds: int
    version: str
    process_id: int
    started: str
    server_id: str
