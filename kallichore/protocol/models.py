"""Request and response models, named after the schemas in ``kallichore.json``.

Field names are the spec's (snake_case on the wire and here). The models carry
no validation or serialisation logic: that lives in
:mod:`kallichore.protocol.converter`, at the edge (the cattrs principle). Optional
fields default to ``None``, and ``None`` fields are omitted from responses, as
Kallichore omits absent optional fields.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ClientHeartbeat",
    "ConnectionInfo",
    "InterruptMode",
    "LogLevel",
    "NewSession",
    "RestartSession",
    "ServerConfiguration",
    "ServerStatus",
    "SessionMode",
    "StartupEnvironment",
    "VarAction",
    "VarActionType",
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

    ``server_id`` is our addition (a fresh id per server start); it is
    optional so that the client library can read Kallichore's own servers,
    which do not send it. Ours always does.
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
    server_id: str | None = None


class VarActionType(enum.Enum):
    """How an environment action changes a variable."""

    REPLACE = "replace"
    APPEND = "append"
    PREPEND = "prepend"


class InterruptMode(enum.Enum):
    """``interrupt_mode``: SIGINT to the kernel, or an ``interrupt_request``."""

    SIGNAL = "signal"
    MESSAGE = "message"


class SessionMode(enum.Enum):
    """``session_mode``: what the session is for (stored and echoed only)."""

    CONSOLE = "console"
    NOTEBOOK = "notebook"
    BACKGROUND = "background"


class StartupEnvironment(enum.Enum):
    """``startup_environment``: how the kernel's environment is prepared."""

    NONE = "none"
    SHELL = "shell"
    COMMAND = "command"
    SCRIPT = "script"


@attrs.frozen
class VarAction:
    """``varAction``: one change to the kernel's environment."""

    action: VarActionType
    name: str
    value: str


@attrs.frozen
class NewSession:
    """``newSession``: the body of ``PUT /sessions``.

    ``session_mode`` and ``startup_environment`` are optional here although
    the spec requires them: older Positron builds omit them (and send
    ``run_in_shell`` instead of ``startup_environment``).
    """

    session_id: str
    display_name: str
    language: str
    username: str
    input_prompt: str
    continuation_prompt: str
    argv: list[str]
    working_directory: str
    env: list[VarAction]
    interrupt_mode: InterruptMode
    session_mode: SessionMode = SessionMode.CONSOLE
    startup_environment: StartupEnvironment | None = None
    startup_environment_arg: str | None = None
    notebook_uri: str | None = None
    connection_timeout: int | None = None
    protocol_version: str | None = None
    run_in_shell: bool | None = None


@attrs.frozen
class RestartSession:
    """``restartSession``: optional new settings for a restart."""

    working_directory: str | None = None
    env: list[VarAction] | None = None


@attrs.frozen
class ConnectionInfo:
    """``connectionInfo``: where a kernel's five sockets are (for adopt)."""

    control_port: int
    shell_port: int
    stdin_port: int
    hb_port: int
    iopub_port: int
    signature_scheme: str
    key: str
    transport: str
    ip: str
