"""Running under systemd: readiness notification and socket activation.

Both are plain, stable interfaces of the service manager, small enough to
speak directly (no libsystemd, no dependency):

* **sd_notify** (``Type=notify``): ``$NOTIFY_SOCKET`` names a Unix datagram
  socket, a path or, with a leading ``@``, a Linux abstract-namespace name.
  Each state change is one datagram of newline-separated ``KEY=VALUE``
  lines. We send ``READY=1`` once the listener is bound and the connection
  file written, and ``STOPPING=1`` when shutdown begins. A failed send is
  logged, never fatal: the service manager then times the unit out, which
  says more than a crash would.
* **Socket activation** (a ``.socket`` unit): the manager binds the
  listener and passes it as fd 3 (``SD_LISTEN_FDS_START``), with
  ``$LISTEN_FDS`` (how many) and ``$LISTEN_PID`` (for whom; a variable
  inherited by another process must be ignored). ``$LISTEN_FDNAMES`` names
  them (for logs only).

Both sets of variables are removed from our environment once read, as
``sd_notify(unset_environment=1)`` and ``sd_listen_fds(1)`` do, so kernels
started by the server do not inherit them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

import attrs

__all__ = [
    "LISTEN_FDS_START",
    "ActivatedSocket",
    "ActivationError",
    "Notifier",
    "listen_sockets",
]

logger = logging.getLogger(__name__)

#: The first file descriptor the service manager passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


@attrs.define(eq=False)
class Notifier:
    """Sends state changes to the service manager, if there is one.

    Attributes:
        address: the socket address (a path, or ``\\0``-prefixed abstract
            name), or ``None`` when ``$NOTIFY_SOCKET`` is unset: every
            :meth:`notify` is then a no-op.
    """

    address: str | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take ``$NOTIFY_SOCKET`` out of ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        value = env.pop("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        if value.startswith("@"):
            return cls("\0" + value[1:])
        if value.startswith("/"):
            return cls(value)
        logger.warning("Ignoring NOTIFY_SOCKET=%r: only Unix socket addresses are supported", value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; returns whether it was sent."""
        if self.address is None:
            return False
        data = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(data)
        except OSError as exc:
            logger.warning("Could not notify the service manager (%s): %s", lines[0], exc)
            return False
        logger.debug("Notified the service manager: %s", ", ".join(lines))
        return True


@attrs.frozen
class ActivatedSocket:
    """One listening socket the service manager passed to us.

    Attributes:
        sock: the socket (family and type detected from the descriptor).
        name: its ``FileDescriptorName=`` (``"unknown"`` when not named).
    """

    sock: socket.socket
    name: str


class ActivationError(Exception):
    """The passed descriptors cannot be used; the message is for the user."""


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[ActivatedSocket]:
    """The sockets passed by socket activation (none when not activated).

    Reads and removes ``$LISTEN_FDS``, ``$LISTEN_PID`` and ``$LISTEN_FDNAMES``.
    Variables meant for another process (``$LISTEN_PID`` is not ours) are
    removed and ignored. Each descriptor is made close-on-exec.

    Raises:
        ActivationError: a malformed count, or a descriptor that is not a
            listening stream socket.
    """
    env = os.environ if environ is None else environ
    count_text = env.pop("LISTEN_FDS", None)
    pid_text = env.pop("LISTEN_PID", None)
    names_text = env.pop("LISTEN_FDNAMES", None)
    if count_text is None or pid_text is None:
        return []
    if pid_text.strip() != str(os.getpid()):
        logger.debug("Ignoring LISTEN_FDS meant for process %s", pid_text)
        return []
    try:
        count = int(count_text)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number") from None
    names = names_text.split(":") if names_text else []
    sockets: list[ActivatedSocket] = []
    for i in range(count):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) else "unknown"
        sock = _adopt(fd, name)
        sockets.append(ActivatedSocket(sock, name))
    return sockets


def _adopt(fd: int, name: str) -> socket.socket:
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"passed descriptor {fd} ({name}) is not a socket: {exc}") from None
    listening = 0
    with contextlib.suppress(OSError):
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ActivationError(
            f"passed descriptor {fd} ({name}) is not a listening stream socket "
            "(use ListenStream= in the .socket unit)"
        )
    return sock
