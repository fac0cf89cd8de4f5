"""Telling the client where we are: the connection file and the handshake socket.

Both carry the same JSON object (Kallichore's connection file), built
by :func:`connection_details`, with our ``server_id`` added at the end:

* ``--connection-file PATH``: written atomically (a temporary file in the same
  directory, mode 0600 from creation, fsynced, then renamed), pretty-printed
  with two-space indentation, once the listener is bound. A reader never sees
  a half-written file, and a failed write leaves nothing behind.
* ``--handshake-socket PATH``: newer Positron listens on a Unix socket it owns;
  we connect once, write the object and a newline, and close.

The connection file holds the bearer token, so it does not outlive the
server: :func:`remove_connection_file` deletes it when the server stops
(``POST /shutdown``, SIGTERM, SIGINT, idle timeout, or a failure after it was
written), unless another server has replaced it meanwhile: the file must
still be the one we wrote (same device and inode; each write is a rename, so
a rewrite is a new inode) and still carry our ``server_id``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from typing import Any

import attrs

from kallichore.config import ConfigError, ServerConfig, Transport
from kallichore.server.listener import BoundListener

__all__ = [
    "WrittenFile",
    "connection_details",
    "remove_connection_file",
    "send_handshake",
    "write_connection_file",
]

logger = logging.getLogger(__name__)

#: How long a client-owned handshake socket may take to accept us.
HANDSHAKE_CONNECT_TIMEOUT = 10.0  # seconds


def connection_details(
    config: ServerConfig, listener: BoundListener, *, server_id: str
) -> dict[str, Any]:
    """The connection object, keys in Kallichore's order."""
    details: dict[str, Any] = {}
    if listener.transport is Transport.TCP:
        details["port"] = listener.port
        details["base_path"] = listener.base_url
    else:
        details["socket_path"] = listener.socket_path
    details["transport"] = listener.transport.value
    details["server_path"] = config.server_path
    details["server_pid"] = os.getpid()
    details["bearer_token"] = config.token
    details["log_path"] = config.log_file
    details["server_id"] = server_id
    return details


@attrs.frozen
class WrittenFile:
    """A connection file as we wrote it, to recognise it at exit.

    Attributes:
        path: absolute path.
        device: ``st_dev`` of the file we renamed into place.
        inode: its ``st_ino``.
        server_id: the ``server_id`` it carries.
    """

    path: str
    device: int
    inode: int
    server_id: str | None


def write_connection_file(path: str, details: dict[str, Any]) -> WrittenFile:
    """Write ``details`` to ``path`` atomically with mode 0600.

    Raises:
        ConfigError: the directory does not exist or is not writable.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    data = (json.dumps(details, indent=2) + "\n").encode()
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=".kallichore-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"Failed to write connection file {path}: {exc.strerror or exc}"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            written = os.fstat(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise ConfigError(
            f"Failed to write connection file {path}: {exc.strerror or exc}"
        ) from None
    return WrittenFile(path, written.st_dev, written.st_ino, details.get("server_id"))


def remove_connection_file(written: WrittenFile) -> bool:
    """Delete the connection file if it is still the one we wrote.

    Returns:
        Whether it was removed. A file another server has written since, a
        file already gone, or one we cannot read is left alone (logged).
    """
    try:
        now = os.stat(written.path)
        if (now.st_dev, now.st_ino) != (written.device, written.inode):
            logger.info("Connection file %s was replaced; leaving it", written.path)
            return False
        with open(written.path, encoding="utf-8") as f:
            server_id = json.load(f).get("server_id")
        if server_id != written.server_id:
            logger.info("Connection file %s belongs to another server; leaving it", written.path)
            return False
        os.unlink(written.path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("Could not remove connection file %s: %s", written.path, exc)
        return False
    logger.info("Removed connection file %s", written.path)
    return True


def send_handshake(path: str, details: dict[str, Any]) -> None:
    """Connect to the client's handshake socket, send ``details``, close.

    Raises:
        ConfigError: the socket cannot be reached or written.
    """
    data = (json.dumps(details) + "\n").encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_CONNECT_TIMEOUT)
        sock.connect(path)
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        raise ConfigError(
            f"Failed to send connection details to handshake socket {path}: {exc.strerror or exc}"
        ) from None
    finally:
        sock.close()
