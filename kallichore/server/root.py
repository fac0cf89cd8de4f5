"""``serve()``: the root of the task tree.

::

    serve(config)                          root nursery
    ├── SessionRegistry.run                sessions' nursery (one task per session)
    ├── IdleWatcher.run                    moving-deadline idle timer
    ├── ResourceSampler.run                moving-deadline sampling clock
    └── http nursery
        └── serve_http (hypercorn worker)  REST + WebSocket, drains on shutdown

Shutdown has one trigger, :attr:`Server.shutdown_requested` (a
:class:`trio.Event`), set by ``POST /shutdown``, SIGINT/SIGTERM (the CLI
installs the handlers) or the idle watcher. Once it is set:

1. hypercorn stops accepting connections and gives in-flight requests
   ``HTTP_GRACEFUL_TIMEOUT`` to finish (so ``/shutdown`` gets its reply);
2. at the same time every session runs its shutdown ladder
   (``shutdown_request``, SIGTERM, SIGKILL), each bounded;
3. the root nursery is cancelled, which ends the timers;
4. the listener is closed and its socket file removed.

Cancelling :func:`serve` from outside (an embedding application) takes the
same path through cancellation: sessions shut down shielded and bounded, the
socket file is removed, nothing is left running when ``serve`` returns.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from functools import partial

import attrs
import trio

from kallichore import fd_limit
from kallichore.channels.channel_socket import ChannelSockets, channel_socket_dir
from kallichore.config import ServerConfig, Transport, idle_shutdown_period
from kallichore.server.announce import (
    WrittenFile,
    connection_details,
    remove_connection_file,
    send_handshake,
    write_connection_file,
)
from kallichore.server.idle import IdleWatcher
from kallichore.server.listener import BoundListener, bind_listener
from kallichore.server.memory import MemoryTrimmer
from kallichore.server.priority import RequestPriority
from kallichore.server.resources import ResourceSampler
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.registry import SessionRegistry

__all__ = ["Server", "ServerAddress", "serve"]

logger = logging.getLogger(__name__)


@attrs.frozen
class ServerAddress:
    """Where a running server can be reached; what ``serve`` reports on start.

    Attributes:
        transport: ``"tcp"`` or ``"socket"``.
        port: TCP port (TCP only).
        socket_path: Unix socket path (socket only).
        base_url: ``http://127.0.0.1:<port>`` (TCP only).
        token: the bearer token, or ``None`` when authentication is off.
        server_id: this server instance's id.
    """

    transport: str
    port: int | None
    socket_path: str | None
    base_url: str | None
    token: str | None = attrs.field(repr=False)
    server_id: str


@attrs.define(eq=False)
class Server:
    """The state one running server shares between its tasks and handlers.

    Attributes:
        config: the frozen start-up configuration.
        server_id: a fresh random id for this server instance (``/status``
            and the connection file), so a client can tell a replaced server
            from the one it knew even if the PID was recycled.
        registry: every session.
        priority: REST requests before output floods (given to the registry).
        idle: the idle-shutdown watcher.
        sampler: the resource-sampling clock.
        trimmer: gives the heap back to the system after output floods.
        shutdown_requested: set once, by whatever asks the server to stop.
        started_at: trio time of start.
        started_wall: wall-clock time of start (UTC).
    """

    config: ServerConfig
    server_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    registry: SessionRegistry = attrs.field(factory=SessionRegistry)
    #: REST requests before output floods (the sessions' pumps wait on it).
    priority: RequestPriority = attrs.field(factory=RequestPriority)
    shutdown_requested: trio.Event = attrs.field(factory=trio.Event)
    started_at: float = attrs.field(factory=trio.current_time)
    started_wall: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.UTC))
    process_id: int = attrs.field(factory=os.getpid)
    shutdown_reason: str | None = attrs.field(default=None, init=False)
    # The idle setting as last given in hours (GET /server_configuration).
    idle_shutdown_hours: int | None = attrs.field(init=False)
    idle: IdleWatcher = attrs.field(init=False)
    sampler: ResourceSampler = attrs.field(init=False)
    # Per-session channel sockets (Unix-socket transport).
    channels: ChannelSockets = attrs.field(init=False)
    trimmer: MemoryTrimmer = attrs.field(factory=MemoryTrimmer)

    def __attrs_post_init__(self) -> None:
        self.channels = ChannelSockets(
            channel_socket_dir(self.config), max_message_bytes=self.config.max_message_bytes
        )
        self.registry.client_buffer_bytes = self.config.client_buffer_bytes
        self.registry.priority = self.priority
        self.registry.kernel_policy = KernelPolicy(
            allow_unsigned_messages=self.config.allow_unsigned_kernel_messages,
            outlive_server=self.config.kernels_outlive_server,
        )
        self.idle_shutdown_hours = self.config.idle_shutdown_hours
        self.registry.on_activity = lambda: self.idle.nudge()
        self.idle = IdleWatcher(
            idle_shutdown_period(self.config.idle_shutdown_hours),
            self.registry.is_active,
            partial(self.request_shutdown, "idle timeout"),
        )
        self.sampler = ResourceSampler(
            self.config.resource_sample_interval_ms, self.registry.sample_resources
        )

    def request_shutdown(self, reason: str) -> None:
        """Ask the server to stop; the first reason given is kept."""
        if not self.shutdown_requested.is_set():
            logger.info("Shutdown requested: %s", reason)
            self.shutdown_reason = reason
            self.shutdown_requested.set()

    def uptime(self) -> float:
        """Seconds since the server started."""
        return trio.current_time() - self.started_at


async def serve(
    config: ServerConfig,
    *,
    server: Server | None = None,
    listener: BoundListener | None = None,
    task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a kallichore server until it is asked to shut down.

    Binds the listener, starts the registry and timers, serves HTTP, writes
    the connection file (and sends the handshake) if configured, then reports
    :class:`ServerAddress` through ``task_status``.

    Args:
        config: what to serve and how.
        server: the shared state to use; a fresh one by default. Passing one
            lets an embedding application request shutdown or inspect
            sessions.
        listener: an already listening socket to serve on (systemd socket
            activation); by default one is bound as ``config`` says. Either
            way it is closed when ``serve`` returns.

    **Errors:** :class:`~kallichore.config.ConfigError` before ``started()``
    for anything the user can fix (port in use, socket path too long,
    connection-file directory missing); nothing is left behind then.

    **Cancellation:** cancelling the task shuts everything down (sessions
    included, each within its bound) and removes the socket file.
    """
    # Import here: the HTTP stack is the heaviest import and pure-library
    # users of kallichore.server (tests of the idle logic) don't need it.
    from kallichore.api.app import create_app
    from kallichore.api.http import serve_http
    from kallichore.api.server_refusals import install_refusal_bodies
    from kallichore.channels.tcp_channels import TcpChannelUpgrades

    install_refusal_bodies()
    listener = listener if listener is not None else bind_listener(config)
    written: list[WrittenFile] = []
    fd_limit.log_limits()
    try:
        server = server if server is not None else Server(config)
        async with trio.open_nursery() as root:
            await root.start(server.registry.run)
            await root.start(server.channels.run)
            root.start_soon(server.idle.run)
            root.start_soon(server.sampler.run)
            root.start_soon(server.trimmer.run)
            async with trio.open_nursery() as http:
                await http.start(
                    partial(
                        serve_http,
                        create_app(server),
                        listener,
                        shutdown_trigger=server.shutdown_requested.wait,
                        max_message_bytes=config.max_message_bytes,
                        take_connection=(
                            TcpChannelUpgrades(server)
                            if config.transport is Transport.TCP
                            else None
                        ),
                        priority=server.priority,
                    )
                )
                _announce(config, listener, server, written)
                task_status.started(_address(config, listener, server))
                logger.info("Server %s ready", server.server_id)
                await server.shutdown_requested.wait()
                logger.info("Shutting down: stopping sessions")
                await server.registry.shutdown_all()
            root.cancel_scope.cancel()
        logger.info("Server stopped")
    finally:
        # First, so no client reads an address that is about to go away.
        for file in written:
            remove_connection_file(file)
        if server is not None:
            server.channels.close_all()
            server.priority.close()
        listener.close()


def _announce(
    config: ServerConfig, listener: BoundListener, server: Server, written: list[WrittenFile]
) -> None:
    """Write the connection file (recorded in ``written``) and send the handshake."""
    if config.connection_file is None and config.handshake_socket is None:
        return
    details = connection_details(config, listener, server_id=server.server_id)
    if config.connection_file is not None:
        written.append(write_connection_file(config.connection_file, details))
        logger.info("Wrote connection details to %s", config.connection_file)
    if config.handshake_socket is not None:
        send_handshake(config.handshake_socket, details)
        logger.info("Sent connection details to handshake socket %s", config.handshake_socket)


def _address(config: ServerConfig, listener: BoundListener, server: Server) -> ServerAddress:
    return ServerAddress(
        transport=listener.transport.value,
        port=listener.port,
        socket_path=listener.socket_path,
        base_url=listener.base_url,
        token=config.token,
        server_id=server.server_id,
    )
