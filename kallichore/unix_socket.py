"""Unix socket files: checked up front, private, and never someone else's.

Both the server's own listening socket (:mod:`kallichore.server.listener`)
and the per-session channel sockets (:mod:`kallichore.channels.channel_socket`)
are bound here, with the same rules:

* the path length is checked before anything is created, with a clear
  message (:func:`check_socket_path`);
* the directory is created (0700) when missing;
* the socket is created with mode 0600 (the umask is narrowed around
  ``bind``, so there is no window where the file is wider);
* only a *stale* socket at the path is replaced; a live server's socket or a
  file that is not a socket is an error, never deleted (Kallichore unlinks
  whatever is there).

Errors are :class:`~kallichore.config.ConfigError`\\ s: the caller decides
whether that is a start-up failure or a 400.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

from kallichore.config import UNIX_SOCKET_PATH_LIMIT, ConfigError

__all__ = ["LISTEN_BACKLOG", "bind_unix_socket", "check_socket_path", "remove_socket_file"]

logger = logging.getLogger(__name__)

#: Pending-connection queue length of a listening socket.
LISTEN_BACKLOG = 128  # connections


def check_socket_path(path: str) -> None:
    """Raise :class:`ConfigError` if ``path`` is too long to bind."""
    length = len(os.fsencode(path))
    if length > UNIX_SOCKET_PATH_LIMIT:
        raise ConfigError(
            f"Unix socket path too long: {length} characters "
            f"(maximum: {UNIX_SOCKET_PATH_LIMIT}). Path: {path}"
        )


def bind_unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` (made absolute), mode 0600.

    Raises:
        ConfigError: the path is too long, its directory cannot be made, a
            live server or a file that is not a socket is there, or ``bind``
            failed.
    """
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
    return sock


def remove_socket_file(path: str) -> None:
    """Remove a socket file we created; gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
        remove_socket_file(path)
    else:
        raise ConfigError(f"Failed to bind Unix socket {path}: another server is listening there")
    finally:
        probe.close()
