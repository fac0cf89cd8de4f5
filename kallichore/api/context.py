"""What the REST API's handlers may see and change of the running server.

The server root (:mod:`kallichore.server.root`) builds one :class:`ApiContext`
per server and hands it to :func:`kallichore.api.app.create_app`; handlers
get nothing else. It holds the sessions, the few configuration values the
API reads, the fixed facts ``GET /status`` reports, and small interfaces to
the services the API adjusts (idle shutdown, resource sampling, channel
sockets, the shutdown trigger), so the web layer never imports the server
root and a second API can be given a context of its own.

Nothing here imports the HTTP stack: building a context is cheap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

import attrs

from kallichore.config import Transport
from kallichore.supervisor.registry import SessionRegistry
from kallichore.supervisor.session import KernelSession

__all__ = [
    "ApiContext",
    "ChannelSocketOpener",
    "IdleControl",
    "SamplerControl",
    "ServerIdentity",
]


class IdleControl(Protocol):
    """The idle-shutdown timer, as ``/server_configuration`` and heartbeats use it."""

    def set_period(self, period: float | None) -> None:
        """Shut down after ``period`` seconds of idleness (``None``: never)."""

    def track_client(self, pid: int | None) -> None:
        """Stay up while the process ``pid`` (the client) lives."""

    def nudge(self) -> None:
        """Activity: start the idle period again."""


class SamplerControl(Protocol):
    """The resource-sampling clock, as ``/server_configuration`` shows and sets it."""

    @property
    def interval_ms(self) -> int:
        """Milliseconds between samples; 0 when sampling is off."""

    def set_interval(self, milliseconds: int) -> None:
        """Sample every ``milliseconds`` (0: stop sampling)."""


class ChannelSocketOpener(Protocol):
    """Per-session channel sockets (Unix-socket transport)."""

    def open(self, session: KernelSession) -> str:
        """The session's socket path, bound if needed; raises a 400 error if it cannot be."""


@attrs.frozen
class ServerIdentity:
    """Facts about this server that never change while it runs (``GET /status``).

    Attributes:
        server_id: this server instance's random id.
        process_id: the server's PID.
        started_at: trio time of start.
        started_wall: wall-clock time of start (UTC).
        api_version: the API version reported as ``version``.
    """

    server_id: str
    process_id: int
    started_at: float
    started_wall: dt.datetime
    api_version: str


@attrs.define(eq=False)
class ApiContext:
    """Everything the REST API's handlers use (see module docstring).

    Attributes:
        registry: every session.
        identity: what ``GET /status`` reports about the server itself.
        token: the bearer token, or ``None`` when authentication is off.
        transport: whether channels are TCP WebSockets or Unix sockets.
        log_level: the log level as configured (``GET /server_configuration``).
        idle: the idle-shutdown timer.
        sampler: the resource-sampling clock.
        channel_sockets: per-session channel sockets (Unix-socket transport).
        request_shutdown: asks the server to stop, with a reason for the log.
        idle_shutdown_hours: the idle setting as last given in hours
            (``GET /server_configuration`` shows it as given).
    """

    registry: SessionRegistry
    identity: ServerIdentity
    token: str | None = attrs.field(repr=False)
    transport: Transport
    log_level: str | None
    idle: IdleControl
    sampler: SamplerControl
    channel_sockets: ChannelSocketOpener
    request_shutdown: Callable[[str], None]
    idle_shutdown_hours: int | None
