"""Telling the client where we are: the connection file and the handshake socket.

Both carry the same JSON object (kallichore-behaviour.md section 1.6), built
by :func:`connection_details`, with our ``server_id`` added at the end:

* ``--connection-file PATH``: written atomically (a temporary file in the same
  directory, mode 0600 from creation, fsynced, then renamed), pretty-printed
  with two-space indentation, once the listener is bound. A reader never sees
  a half-written file, and a failed write leaves nothing behind.
* ``--handshake-socket PATH``: newer Positron listens on a Unix socket it owns;
  we connect once, write the object and a newline, and close.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from typing import Any

from kallichore.config import ConfigError, ServerConfig, Transport
from kallichore.listener import TCP_HOST, BoundListener

__all__ = ["connection_details", "send_handshake", "write_connection_file"]

#: How long a client-owned handshake socket may take to accept us.
HANDSHAKE_CONNECT_TIMEOUT = 10.0  # seconds


def connection_details(
    config: ServerConfig, listener: BoundListener, *, server_id: str
) -> dict[str, Any]:
    """The connection object, keys in Kallichore's order."""
    details: dict[str, Any] = {}
    if listener.transport is Transport.TCP:
        details["port"] = listener.port
        details["base_path"] = f"http://{TCP_HOST}:{listener.port}"
    else:
        details["socket_path"] = listener.socket_path
    details["transport"] = listener.transport.value
    details["server_path"] = config.server_path
    details["server_pid"] = os.getpid()
    details["bearer_token"] = config.token
    details["log_path"] = config.log_file
    details["server_id"] = server_id
    return details


def write_connection_file(path: str, details: dict[str, Any]) -> None:
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
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise ConfigError(
            f"Failed to write connection file {path}: {exc.strerror or exc}"
        ) from None


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
