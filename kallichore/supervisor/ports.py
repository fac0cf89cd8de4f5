"""Picking the five ports of a classic (pre-JEP 66) kernel connection file.

The OS chooses each port (bind to ``127.0.0.1:0``, read it, close), and the
server remembers what it handed out until the session lets go, so two
kernels starting at the same moment never get the same port (Kallichore
f030826). A port the OS offers again while still reserved is skipped.
"""

from __future__ import annotations

import socket

import attrs

__all__ = ["PortPickError", "PortReservations"]

#: How many times the OS may offer an already-reserved port before we give up.
MAX_COLLISIONS = 50  # attempts


class PortPickError(Exception):
    """No free port could be found."""


@attrs.define(eq=False)
class PortReservations:
    """Ports handed to kernels that have not been released yet."""

    _reserved: set[int] = attrs.field(factory=set)

    def __len__(self) -> int:
        return len(self._reserved)

    def reserve(self, count: int, host: str = "127.0.0.1") -> list[int]:
        """Reserve ``count`` distinct free ports.

        Raises:
            PortPickError: the OS could not provide enough fresh ports.
        """
        picked: list[int] = []
        collisions = 0
        while len(picked) < count:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, 0))
                    port = int(sock.getsockname()[1])
            except OSError as exc:
                self.release(picked)
                raise PortPickError(f"could not bind a free port: {exc.strerror or exc}") from None
            if port in self._reserved:
                collisions += 1
                if collisions > MAX_COLLISIONS:
                    self.release(picked)
                    raise PortPickError("too many collisions with reserved ports")
                continue
            self._reserved.add(port)
            picked.append(port)
        return picked

    def release(self, ports: list[int] | tuple[int, ...]) -> None:
        """Give ports back (unknown ports are ignored)."""
        for port in ports:
            self._reserved.discard(port)
