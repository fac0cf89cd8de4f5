"""The ``kcserver`` command line (and ``python -m kallichore serve``).

Flags, defaults, validation messages and exit codes follow Kallichore's
``kcserver`` 0.1.64 (see docs/cli.md), so Positron can launch
us unchanged:

====  ==========================================================
code  when
====  ==========================================================
0     ``--help``, ``--version``; graceful exit after ``POST /shutdown``,
      SIGINT/SIGTERM or idle shutdown
1     invalid flag combination, bind failure, unreadable or bad token
      file, connection file or handshake failure, log file failure
2     usage error: unknown flag, malformed number
====  ==========================================================

Flags we add: ``--handshake-socket`` (newer Positron), ``--api-version``
(report another Kallichore version in ``/status`` for a newer client pin) and
``--log-format`` (``json`` for log shippers).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import attrs
import trio

from kallichore import API_VERSION, __version__, fd_limit, version_line
from kallichore.config import (
    DEFAULT_CLIENT_BUFFER_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_BUFFER_BYTES,
    MAX_TOKEN_CHARS,
    MIN_BUFFER_BYTES,
    ConfigError,
    ServerConfig,
    default_server_path,
    generate_token,
    parse_log_level,
    select_transport,
)
from kallichore.logs import LOG_FORMATS, configure_logging
from kallichore.process_name import set_process_name
from kallichore.server.listener import BoundListener, adopt_listener
from kallichore.settings import LayeredArgs, parse_layered
from kallichore.systemd import ActivationError, Notifier, listen_sockets

__all__ = ["CLIENT_SECTION", "build_parser", "main", "module_main"]

logger = logging.getLogger(__name__)

PROCESS_NAME = "kcserver"
#: The client's table in the shared config file (the server's is the top level).
CLIENT_SECTION = "client"
#: Kallichore's log-level variable: below ours and the file, lenient as before.
RUST_LOG_ENV = "RUST_LOG"
U16_MAX = 65535


def _u16(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= U16_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..={U16_MAX}")
    return value


def _byte_size(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of bytes") from None
    if not MIN_BUFFER_BYTES <= value <= MAX_BUFFER_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text} is not between {MIN_BUFFER_BYTES} and {MAX_BUFFER_BYTES} bytes"
        )
    return value


def build_parser(prog: str = "kcserver") -> argparse.ArgumentParser:
    """The argument parser; each flag has Kallichore's meaning and default."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A Jupyter kernel supervisor, compatible with Kallichore's kcserver.",
    )
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=version_line("kcserver"),
    )
    _add_endpoint_flags(parser)
    _add_logging_flags(parser)
    _add_announce_flags(parser)
    _add_lifetime_flags(parser)
    _add_transport_flags(parser)
    _add_limit_flags(parser)
    _add_kernel_flags(parser)
    parser.add_argument(
        "--api-version",
        default=API_VERSION,
        help=f"Kallichore version to report in /status (default {API_VERSION})",
    )
    return parser


def _add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
    """Where the server listens and who may talk to it."""
    parser.add_argument(
        "-p",
        "--port",
        type=_u16,
        default=0,
        help="TCP port to listen on at 127.0.0.1 (0, the default, lets the OS choose); TCP transport only",
    )
    parser.add_argument(
        "-t",
        "--token",
        help="file holding the bearer token (read, then deleted), or 'none' to disable "
        "authentication; by default a random token is generated",
    )


def _add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """Where the log goes, how much of it and in which format."""
    parser.add_argument("--log-file", help="also write the log to this file (truncated at start)")
    parser.add_argument(
        "-l",
        "--log-level",
        help="trace, debug, info, warn or error (default: $RUST_LOG, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, for log shippers",
    )


def _add_announce_flags(parser: argparse.ArgumentParser) -> None:
    """How the server tells its launcher where it listens."""
    parser.add_argument(
        "--connection-file",
        help="write connection details (JSON, mode 0600) to this file once listening; "
        "makes the socket transport the default on Unix",
    )
    parser.add_argument(
        "--handshake-socket",
        help="send the connection details once to this client-owned Unix socket",
    )


def _add_lifetime_flags(parser: argparse.ArgumentParser) -> None:
    """When the server exits by itself, and how often it samples resources."""
    parser.add_argument(
        "-i",
        "--idle-shutdown-hours",
        type=_u16,
        help="exit after this many hours without activity (0 means 30 seconds; default: never)",
    )
    parser.add_argument(
        "-r",
        "--resource-sample-interval",
        type=_u16,
        default=1000,
        help="milliseconds between resource-usage samples (0 disables; default 1000)",
    )


def _add_transport_flags(parser: argparse.ArgumentParser) -> None:
    """Which transport the server listens on, and where its sockets go."""
    parser.add_argument(
        "--socket-dir",
        help="directory for server-created sockets (default: $XDG_RUNTIME_DIR, else the temp dir)",
    )
    parser.add_argument(
        "--unix-socket", help="listen on this Unix socket (implies --transport socket)"
    )
    parser.add_argument(
        "--transport",
        help="tcp, socket (Unix) or named-pipe (Windows); default tcp, or socket "
        "when --connection-file or --unix-socket is given",
    )


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Bounds on what clients send and on what is kept for them."""
    parser.add_argument(
        "--max-message-size",
        type=_byte_size,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="BYTES",
        help="largest WebSocket message a client may send "
        f"(default {DEFAULT_MAX_MESSAGE_BYTES}; at least {MIN_BUFFER_BYTES})",
    )
    parser.add_argument(
        "--client-buffer-size",
        type=_byte_size,
        default=DEFAULT_CLIENT_BUFFER_BYTES,
        metavar="BYTES",
        help="per-session bound on output buffered for an absent or slow client; the "
        f"oldest output is dropped beyond it (default {DEFAULT_CLIENT_BUFFER_BYTES})",
    )


def _add_kernel_flags(parser: argparse.ArgumentParser) -> None:
    """How the server treats its kernels."""
    parser.add_argument(
        "--allow-unsigned-kernel-messages",
        action="store_true",
        help="accept kernel messages with an empty signature (for kernels that do not "
        "sign); by default they are dropped and counted in the log",
    )
    parser.add_argument(
        "--kernels-outlive-server",
        action="store_true",
        help="leave kernels running if the server dies without stopping them, so a new "
        "server can adopt them; by default they die with it",
    )


def _read_token(spec: str | None, *, delete: bool = True) -> tuple[str | None, bool]:
    """Resolve ``--token``: ``(token, generated)``.

    A token file named on the command line is deleted once read, as
    Kallichore does (its launcher writes a one-time file). One named by the
    environment or the config file is standing configuration, so it is kept:
    deleting it would make the next start fail.

    Raises:
        ConfigError: the file cannot be read, is empty, or is too long.
    """
    if spec is None:
        return generate_token(), True
    if spec == "none":
        return None, False
    try:
        with open(spec, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"Failed to read token file {spec}: {reason}") from None
    if not token:
        raise ConfigError(f"Token file {spec} is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(
            f"Token in {spec} is {len(token)} characters long (maximum: {MAX_TOKEN_CHARS})"
        )
    if not delete:
        return token, False
    try:
        os.unlink(spec)
    except OSError as exc:
        print(f"Warning: could not delete token file {spec}: {exc.strerror}", file=sys.stderr)
    return token, False


def _config_from_args(parsed: LayeredArgs, log_level: str | None) -> tuple[ServerConfig, bool]:
    """The server configuration from the parsed (and layered) arguments.

    Raises:
        ConfigError: an invalid combination, or an unusable token file; the
            message says which values came from the environment or file.
    """
    try:
        return _build_config(parsed, log_level)
    except ConfigError as exc:
        raise ConfigError(str(exc) + _origin_note(parsed, str(exc))) from None


def _origin_note(parsed: LayeredArgs, message: str) -> str:
    """`` (--port came from environment variable KALLICHORE_PORT)`` for flags named in ``message``."""
    notes = [
        f"{setting.flag} came from {setting.source}"
        for setting in parsed.settings.values()
        if setting.source.kind in ("environment", "file") and setting.flag in message
    ]
    return f" ({'; '.join(notes)})" if notes else ""


def _build_config(parsed: LayeredArgs, log_level: str | None) -> tuple[ServerConfig, bool]:
    args = parsed.namespace
    transport = select_transport(
        transport=args.transport,
        unix_socket=args.unix_socket,
        connection_file=args.connection_file,
        port=args.port,
    )
    token, generated = _read_token(args.token, delete=parsed.source("token").kind == "flag")
    config = ServerConfig(
        transport=transport,
        port=args.port,
        unix_socket=args.unix_socket,
        socket_dir=args.socket_dir,
        token=token,
        connection_file=args.connection_file,
        handshake_socket=args.handshake_socket,
        log_file=args.log_file,
        log_level=log_level,
        idle_shutdown_hours=args.idle_shutdown_hours,
        resource_sample_interval_ms=args.resource_sample_interval,
        api_version=args.api_version,
        server_path=default_server_path(),
        max_message_bytes=args.max_message_size,
        client_buffer_bytes=args.client_buffer_size,
        allow_unsigned_kernel_messages=args.allow_unsigned_kernel_messages,
        kernels_outlive_server=args.kernels_outlive_server,
    )
    return config, generated


def _fail(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: Sequence[str] | None = None, *, prog: str = "kcserver") -> NoReturn:
    """Run the server from the command line; never returns."""
    parser = build_parser(prog)
    parsed = parse_layered(
        parser, argv, reserved=(CLIENT_SECTION,), legacy={"log_level": RUST_LOG_ENV}
    )
    args = parsed.namespace
    level, reported_level, level_warning = parse_log_level(
        args.log_level, os.environ.get(RUST_LOG_ENV)
    )
    log_level_source = parsed.source("log_level")
    if level_warning and log_level_source.where not in (None, "--log-level", RUST_LOG_ENV):
        # Kallichore's leniency is for its own flag and RUST_LOG; a standing
        # setting of ours that is wrong should be fixed, not silently replaced.
        parser.exit(
            2,
            f"{parser.prog}: error: {log_level_source}: bad value for --log-level: "
            f"{args.log_level!r} (choose from trace, debug, info, warn, error)\n",
        )
    if level_warning:
        print(level_warning)
    try:
        config, generated = _config_from_args(parsed, reported_level)
    except ConfigError as exc:
        _fail(str(exc))
    secrets = [config.token] if config.token else []
    try:
        configure_logging(
            level, log_file=config.log_file, secrets=secrets, log_format=args.log_format
        )
    except OSError as exc:
        _fail(f"Failed to create log file {config.log_file}: {exc.strerror or exc}")
    set_process_name(PROCESS_NAME)
    _raise_fd_limit()
    if config.token is None:
        logger.warning("Authentication is disabled (--token none): any local client is trusted")
    notifier = Notifier.from_environ()
    try:
        config, listener = _activated_listener(config)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        trio.run(_run_until_shutdown, config, generated, listener, notifier)
    except* ConfigError as group:
        # Raised before the server started listening (bind, connection file,
        # handshake); nurseries wrap it in a group, the user sees one line.
        message = str(_first_leaf(group))
        logger.debug("Start-up failed: %s", message)
        _fail(message)
    except* KeyboardInterrupt:
        pass
    sys.exit(0)


def _activated_listener(config: ServerConfig) -> tuple[ServerConfig, BoundListener | None]:
    """The socket systemd passed us, if any, and the configuration to match it.

    The passed socket decides the transport; ``--port``, ``--unix-socket``
    and ``--transport`` are then not used for binding. A passed Unix
    socket's directory also holds the per-session sockets (unless
    ``--socket-dir`` says otherwise).

    Raises:
        ConfigError: unusable descriptors, or more than one.
    """
    try:
        activated = listen_sockets()
    except ActivationError as exc:
        raise ConfigError(f"Socket activation failed: {exc}") from None
    if not activated:
        return config, None
    if len(activated) > 1:
        for extra in activated:
            extra.sock.close()
        names = ", ".join(a.name for a in activated)
        raise ConfigError(
            f"systemd passed {len(activated)} sockets ({names}); kcserver serves exactly one"
        )
    listener = adopt_listener(activated[0].sock)
    unix_socket = listener.socket_path if listener.socket_path else None
    if unix_socket is not None and unix_socket.startswith("\0"):
        unix_socket = None  # abstract: no directory to share
    logger.info("Serving on the socket passed by systemd (%s)", activated[0].name)
    return attrs.evolve(config, transport=listener.transport, unix_socket=unix_socket), listener


def _raise_fd_limit() -> None:
    """Raise the open-file limit for the many sessions a server holds.

    Here and not in :func:`kallichore.server.serve`: an application that
    embeds the server owns its process's limits (see :mod:`kallichore.fd_limit`).
    """
    before, after = fd_limit.raise_soft_limit()
    if after != before:
        logger.info("Raised the open-file soft limit from %s to %s", before.soft, after.soft)
    fd_limit.size_zmq_context()
    fd_limit.quiet_accept_errors()


def _first_leaf(group: BaseExceptionGroup[ConfigError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _run_until_shutdown(
    config: ServerConfig,
    token_generated: bool,
    listener: BoundListener | None,
    notifier: Notifier,
) -> None:
    from kallichore.server.root import Server, ServerAddress, serve

    server = Server(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def forward_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if server.shutdown_requested.is_set():
                        logger.info("Received %s; already shutting down", name)
                    else:
                        server.request_shutdown(f"received {name}")

            async def serve_then_stop(
                task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await serve(config, server=server, listener=listener, task_status=task_status)
                nursery.cancel_scope.cancel()

            async def notify_stopping() -> None:
                await server.shutdown_requested.wait()
                notifier.notify("STOPPING=1", "STATUS=Shutting down")

            nursery.start_soon(forward_signals)
            address = await nursery.start(serve_then_stop)
            _print_banner(address, config, token_generated)
            if notifier.enabled:
                nursery.start_soon(notify_stopping)
                where = address.socket_path or address.base_url
                notifier.notify("READY=1", f"STATUS=Listening on {where}")
            # Everything built so far lives as long as the process: keep it
            # out of the cyclic GC's full collections, which otherwise scan
            # it again and again under a flood of output (30-40 ms pauses were
            # measured). Only here: a library caller's heap is its own.
            gc.freeze()


def _print_banner(address: object, config: ServerConfig, token_generated: bool) -> None:
    from kallichore.server.root import ServerAddress

    assert isinstance(address, ServerAddress)
    if address.transport == "tcp":
        assert address.base_url is not None
        print(f"Listening at {address.base_url.removeprefix('http://')}")
    else:
        print(f"Listening on Unix socket: {address.socket_path}")
    print(
        f"kallichore: a Jupyter kernel supervisor. Version {config.api_version} (kallichore {__version__})."
    )
    if token_generated and config.connection_file is None and config.handshake_socket is None:
        # Printed, never logged: the log file must not hold the token.
        print(f"Bearer token: {config.token}")
    sys.stdout.flush()


def module_main(argv: Sequence[str] | None = None) -> NoReturn:
    """``python -m kallichore <command>``: ``serve`` runs the server."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "client":
        # Imported here: the server never needs the client's HTTP stack.
        from kallichore.client.cli import main as client_main

        sys.exit(client_main(args[1:], prog="python -m kallichore client"))
    if args and args[0] == "serve":
        main(args[1:], prog="python -m kallichore serve")
    if args and args[0] in ("-V", "--version"):
        print(version_line("python -m kallichore"))
        sys.exit(0)
    # Asked-for help goes to stdout (so it can be paged); a usage error to stderr.
    asked = bool(args) and args[0] in ("-h", "--help")
    out = sys.stdout if asked else sys.stderr
    print("usage: python -m kallichore serve [kcserver flags]", file=out)
    print("       python -m kallichore client <command> [options]", file=out)
    print("       python -m kallichore serve --help | client --help", file=out)
    print("       python -m kallichore --version", file=out)
    with contextlib.suppress(Exception):
        out.flush()
    sys.exit(0 if asked else 2)
