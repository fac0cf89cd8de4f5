"""Server configuration: one frozen value built from flags, environment or code.

Everything the server needs to know before it binds lives in
:class:`ServerConfig`. It is immutable: settings that clients may change at
run time (``POST /server_configuration``) are held by the services that use
them (the idle watcher, the resource sampler), seeded from this value.

Units: flags and the REST API speak hours and milliseconds, as Kallichore
does; inside the server time is float seconds. The conversions live here and
nowhere else (:func:`idle_shutdown_period`, :func:`sample_interval`).

This module is pure: no trio, no sockets.
"""

from __future__ import annotations

import enum
import os
import secrets
import sys
import tempfile

import attrs

from kallichore import API_VERSION

__all__ = [
    "DEFAULT_CLIENT_BUFFER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "IDLE_ZERO_PERIOD",
    "LOG_LEVELS",
    "MAX_BUFFER_BYTES",
    "MAX_IDLE_SHUTDOWN_HOURS",
    "MAX_SAMPLE_INTERVAL_MS",
    "MIN_BUFFER_BYTES",
    "MIN_SAMPLE_INTERVAL_MS",
    "UNIX_SOCKET_PATH_LIMIT",
    "ConfigError",
    "ServerConfig",
    "Transport",
    "default_server_path",
    "default_socket_path",
    "generate_token",
    "idle_shutdown_period",
    "parse_log_level",
    "sample_interval",
    "select_transport",
]

#: What ``idle_shutdown_hours = 0`` means (Kallichore's rule).
IDLE_ZERO_PERIOD = 30.0  # seconds
#: Largest idle period a client may set (Kallichore stores it as u16 hours).
MAX_IDLE_SHUTDOWN_HOURS = 65535  # hours
#: Sample intervals below this are raised to it (Kallichore's API clamp).
MIN_SAMPLE_INTERVAL_MS = 100  # milliseconds
#: Largest sample interval we accept; larger values are almost surely a mistake.
MAX_SAMPLE_INTERVAL_MS = 24 * 3600 * 1000  # milliseconds (one day)
#: Longest Unix socket path we bind; the portable limit (macOS) Kallichore uses.
UNIX_SOCKET_PATH_LIMIT = 104  # bytes
#: Default largest WebSocket message a client may send (Kallichore: 64 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bytes
#: Default bound on the frames buffered per session for its client.
DEFAULT_CLIENT_BUFFER_BYTES = 64 * 1024 * 1024  # bytes
#: Smallest and largest values accepted for either of the two limits above.
MIN_BUFFER_BYTES = 64 * 1024  # bytes
MAX_BUFFER_BYTES = 16 * 1024 * 1024 * 1024  # bytes
#: Length of a generated bearer token.
TOKEN_HEX_CHARS = 64  # hex characters (32 random bytes, as Kallichore 0.1.68)
#: Longest token a token file may hold (Kallichore's limit).
MAX_TOKEN_CHARS = 64  # characters

#: Log level names accepted by ``--log-level`` and ``RUST_LOG``, in order.
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")


class ConfigError(Exception):
    """A configuration that cannot be served; the message is for the user.

    The CLI prints ``Error: <message>`` and exits with status 1.
    """


class Transport(enum.Enum):
    """How clients reach the server; values are the ``--transport`` names."""

    TCP = "tcp"
    SOCKET = "socket"
    NAMED_PIPE = "named-pipe"


def generate_token() -> str:
    """A fresh bearer token: 16 lowercase hex characters from :mod:`secrets`."""
    return secrets.token_hex(TOKEN_HEX_CHARS // 2)


def idle_shutdown_period(hours: int | None) -> float | None:
    """Seconds of inactivity before idle shutdown, or ``None`` for never.

    ``None`` and negative hours mean never; ``0`` means 30 seconds.
    """
    if hours is None or hours < 0:
        return None
    if hours == 0:
        return IDLE_ZERO_PERIOD
    return hours * 3600.0


def sample_interval(milliseconds: int) -> float | None:
    """Seconds between resource samples, or ``None`` when sampling is off (0)."""
    if milliseconds <= 0:
        return None
    return milliseconds / 1000.0


def parse_log_level(flag: str | None, env: str | None) -> tuple[str, str | None, str | None]:
    """Resolve the log level as Kallichore does.

    Args:
        flag: the ``--log-level`` value, if given.
        env: the ``RUST_LOG`` environment variable, if set.

    Returns:
        ``(effective, reported, warning)``: the level to log at; the level to
        report in ``GET /server_configuration`` (``None`` when neither source
        named a valid level, so the default is not reported); and a warning to
        print for an invalid name, or ``None``.
    """
    source = flag if flag is not None else env
    if source is None:
        return "info", None, None
    if source in LOG_LEVELS:
        return source, source, None
    return "info", None, f"Invalid log level '{source}'; using 'info'"


def select_transport(
    *,
    transport: str | None,
    unix_socket: str | None,
    connection_file: str | None,
    port: int,
    platform: str = sys.platform,
) -> Transport:
    """Choose and validate the transport (the rules are in docs/cli.md).

    Raises:
        ConfigError: with Kallichore's message for each invalid combination.
    """
    windows = platform.startswith("win")
    if transport is not None:
        try:
            chosen = Transport(transport)
        except ValueError:
            raise ConfigError(
                f"Invalid transport type '{transport}'. Valid values are 'tcp', "
                "'socket' (Unix only), and 'named-pipe' (Windows only)."
            ) from None
    elif unix_socket is not None:
        chosen = Transport.SOCKET
    elif connection_file is not None:
        chosen = Transport.NAMED_PIPE if windows else Transport.SOCKET
    else:
        chosen = Transport.TCP

    if port != 0 and chosen is not Transport.TCP:
        raise ConfigError(
            "The --port argument can only be used with TCP transport. Current transport: "
            f"{chosen.value}. Either remove --port or use --transport tcp."
        )
    if unix_socket is not None and chosen is not Transport.SOCKET:
        raise ConfigError(
            "The --unix-socket argument can only be used with socket transport. Current "
            f"transport: {chosen.value}. Either remove --unix-socket or use --transport socket."
        )
    if chosen is Transport.NAMED_PIPE and not windows:
        raise ConfigError(
            "Named pipes (--transport named-pipe) are not supported on Unix systems. "
            "Use --transport socket or --transport tcp instead."
        )
    if chosen is Transport.SOCKET and windows:
        raise ConfigError(
            "Unix domain sockets (--transport socket) are not supported on Windows. "
            "Use --transport named-pipe or --transport tcp instead."
        )
    return chosen


def default_server_path(argv0: str | None = None, executable: str | None = None) -> str:
    """The executable path to report as ``server_path`` in the connection file.

    Clients treat it as the program that serves (Kallichore writes its own
    binary's path). Run as ``kcserver``, that is ``argv[0]``. Run as
    ``python -m kallichore serve``, ``argv[0]`` is ``kallichore/__main__.py``,
    which is not executable: we report the ``kcserver`` console script
    installed beside the interpreter if there is one (the same installation,
    so the same version), else the interpreter itself (executable, and the
    program that actually runs the server).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if argv0 and not argv0.endswith(".py") and _is_executable(argv0):
        return os.path.abspath(argv0)
    if executable:
        script = os.path.join(os.path.dirname(executable), "kcserver")
        if _is_executable(script):
            return script
        return executable
    return os.path.abspath(argv0)


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def default_socket_path(
    socket_dir: str | None, *, pid: int, environ: dict[str, str] | None = None
) -> str:
    """Where to put the main socket when ``--unix-socket`` is not given.

    ``<dir>/kc-<pid>.sock`` with dir = ``--socket-dir``, else
    ``$XDG_RUNTIME_DIR``, else the temporary directory. A path from
    ``XDG_RUNTIME_DIR`` that is too long falls back to the temporary directory.
    """
    env = os.environ if environ is None else environ
    name = f"kc-{pid}.sock"
    if socket_dir is not None:
        return os.path.join(socket_dir, name)
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        path = os.path.join(runtime_dir, name)
        if len(os.fsencode(path)) <= UNIX_SOCKET_PATH_LIMIT:
            return path
    return os.path.join(tempfile.gettempdir(), name)


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything a server needs before it binds.

    Attributes:
        transport: TCP on 127.0.0.1, or a Unix domain socket.
        port: TCP port; 0 lets the OS choose.
        unix_socket: explicit socket path (socket transport); ``None`` to
            generate one from ``socket_dir``.
        socket_dir: directory for generated sockets (main and per-session).
        token: the bearer token clients must send, or ``None`` to disable
            authentication.
        connection_file: where to write the connection details after binding.
        handshake_socket: a client-owned Unix socket to send the same details
            to, once.
        log_file: the ``--log-file`` path, reported in the connection file.
        log_level: the level to report in ``GET /server_configuration``
            (``None`` when the default is in effect).
        idle_shutdown_hours: initial idle-shutdown setting (see
            :func:`idle_shutdown_period`).
        resource_sample_interval_ms: initial resource sampling interval.
        api_version: the Kallichore API level reported by ``GET /status``.
        server_path: the launcher path written to the connection file.
        max_message_bytes: largest WebSocket message a client may send.
        client_buffer_bytes: bound on the frames buffered per session while
            its client is away or slow; the oldest output is dropped beyond
            it (and the client told how many).
        allow_unsigned_kernel_messages: accept messages with an empty
            signature from kernels although the session has a key (for
            kernels that do not sign); by default they are dropped.
        kernels_outlive_server: leave kernels running when the server dies
            without stopping them (SIGKILL, crash), so that a new server can
            adopt them; by default they die with it.
    """

    transport: Transport = Transport.TCP
    port: int = 0
    unix_socket: str | None = None
    socket_dir: str | None = None
    token: str | None = attrs.field(factory=generate_token, repr=False)
    connection_file: str | None = None
    handshake_socket: str | None = None
    log_file: str | None = None
    log_level: str | None = None
    idle_shutdown_hours: int | None = None
    resource_sample_interval_ms: int = 1000
    api_version: str = API_VERSION
    server_path: str = attrs.field(factory=default_server_path)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    client_buffer_bytes: int = DEFAULT_CLIENT_BUFFER_BYTES
    allow_unsigned_kernel_messages: bool = False
    kernels_outlive_server: bool = False
