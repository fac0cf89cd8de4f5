"""Binding the server's listening socket, before anything else happens.

The socket is bound and listening before the connection file is written, so a
client that reads the file can connect at once. Binding is synchronous and
happens before the HTTP server starts; the HTTP layer takes the bound socket.

Unix sockets are created with mode 0600 (the umask is narrowed around
``bind``, so there is no window where the file is wider), their directory is
created (0700) when missing, the path length is checked up front with a clear
message, and :meth:`BoundListener.close` removes the file. Unlike Kallichore,
which unlinks whatever is at the path, we only replace a *stale* socket: a
live server's socket or a regular file is an error, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

import attrs

from kallichore.config import UNIX_SOCKET_PATH_LIMIT, ConfigError, ServerConfig, Transport
from kallichore.config import default_socket_path as _default_socket_path

__all__ = [
    "LISTEN_BACKLOG",
    "BoundListener",
    "adopt_listener",
    "bind_listener",
    "check_socket_path",
]

logger = logging.getLogger(__name__)

#: Pending-connection queue length for the main socket.
LISTEN_BACKLOG = 128  # connections
#: Idle seconds before keepalive probes start, and between probes.
DEAD_PEER_IDLE = 10  # seconds
#: Unacknowledged data older than this aborts a connection.
DEAD_PEER_TIMEOUT = 40.0  # seconds
#: Host the TCP transport binds; never anything but loopback.
TCP_HOST = "127.0.0.1"


@attrs.define(eq=False)
class BoundListener:
    """A listening socket and how clients reach it.

    Attributes:
        sock: the bound, listening socket (owned; closed by :meth:`close`).
        transport: TCP or Unix socket.
        port: the TCP port (TCP only).
        socket_path: the socket file (Unix only); removed by :meth:`close`
            if ``owns_path``.
        host: the address clients connect to (TCP only).
        owns_path: whether we created ``socket_path`` (not so for a socket
            the service manager bound and will reuse).
    """

    sock: socket.socket
    transport: Transport
    port: int | None = None
    socket_path: str | None = None
    host: str = TCP_HOST
    owns_path: bool = True
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def base_url(self) -> str | None:
        """``http://HOST:PORT`` (TCP only)."""
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        """The line printed on stdout once bound (Kallichore's wording)."""
        if self.transport is Transport.TCP:
            return f"Listening at {self.host}:{self.port}"
        return f"Listening on Unix socket: {self.socket_path}"

    def close(self) -> None:
        """Close the socket and remove its file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.socket_path is not None and self.owns_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


def check_socket_path(path: str) -> None:
    """Raise :class:`ConfigError` if ``path`` is too long to bind."""
    length = len(os.fsencode(path))
    if length > UNIX_SOCKET_PATH_LIMIT:
        raise ConfigError(
            f"Unix socket path too long: {length} characters "
            f"(maximum: {UNIX_SOCKET_PATH_LIMIT}). Path: {path}"
        )


def bind_listener(config: ServerConfig) -> BoundListener:
    """Bind the server socket described by ``config``.

    Raises:
        ConfigError: the port is in use, the socket path is too long or taken
            by a live server or another file, the directory cannot be made.
    """
    if config.transport is Transport.TCP:
        return _bind_tcp(config.port)
    if config.transport is Transport.SOCKET:
        path = config.unix_socket or _default_socket_path(config.socket_dir, pid=os.getpid())
        return bind_unix(path)
    raise ConfigError(f"Transport {config.transport.value} is not supported on this platform")


#: Addresses of a passed TCP socket that clients reach as 127.0.0.1.
_LOOPBACK_REACHABLE = frozenset({"0.0.0.0", "127.0.0.1", "::", "::ffff:127.0.0.1"})


def adopt_listener(sock: socket.socket) -> BoundListener:
    """A listener from a socket someone else bound and set listening.

    For systemd socket activation: the family decides the transport. A Unix
    socket's file belongs to the socket unit, so :meth:`BoundListener.close`
    leaves it in place. A TCP socket bound to a wildcard address is
    announced as 127.0.0.1; one on a non-loopback address is announced as
    is, with a warning (the bearer token is then all that protects it).

    Raises:
        ConfigError: neither a TCP nor a Unix socket.
    """
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        path = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return BoundListener(
            sock=sock, transport=Transport.SOCKET, socket_path=path, owns_path=False
        )
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        address, port = sock.getsockname()[:2]
        host = TCP_HOST if address in _LOOPBACK_REACHABLE else address
        if host != TCP_HOST and address != "::1":
            logger.warning(
                "The passed socket listens on %s, not on loopback: anyone who can reach it "
                "needs only the bearer token",
                address,
            )
        _detect_dead_peers(sock)
        return BoundListener(sock=sock, transport=Transport.TCP, port=port, host=host)
    raise ConfigError(f"Cannot serve on a passed socket of family {sock.family!r}")


def _detect_dead_peers(sock: socket.socket) -> None:
    """Make the kernel notice a vanished peer (lid closed, cable pulled).

    Set on the listener, inherited by every accepted connection (Linux):
    keepalive probes an idle connection after DEAD_PEER_IDLE seconds, and
    TCP_USER_TIMEOUT aborts one whose sent data (say, a WebSocket ping) goes
    unacknowledged for DEAD_PEER_TIMEOUT. Either way the connection errors,
    the client counts as disconnected, and its session is left running.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [
        ("TCP_KEEPIDLE", DEAD_PEER_IDLE),
        ("TCP_KEEPINTVL", DEAD_PEER_IDLE),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(DEAD_PEER_TIMEOUT * 1000)),
    ]
    for name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _bind_tcp(port: int) -> BoundListener:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _detect_dead_peers(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((TCP_HOST, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Failed to bind {TCP_HOST}:{port}: {exc.strerror or exc}") from None
    return BoundListener(sock=sock, transport=Transport.TCP, port=sock.getsockname()[1])


def bind_unix(path: str) -> BoundListener:
    """Bind a Unix socket at ``path`` with mode 0600 (see module docstring)."""
    path = os.path.abspath(path)
    check_socket_path(path)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Failed to create socket directory {directory}: {exc.strerror or exc}"
        ) from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Failed to bind Unix socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return BoundListener(sock=sock, transport=Transport.SOCKET, socket_path=path)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"Failed to bind Unix socket {path}: a file that is not a socket is there"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(f"Failed to bind Unix socket {path}: {exc.strerror}") from None
        logger.info("Removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        raise ConfigError(f"Failed to bind Unix socket {path}: another server is listening there")
    finally:
        probe.close()
