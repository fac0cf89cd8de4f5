"""Picking the five ports of a classic (pre-JEP 66) kernel connection file.

A port handed to a kernel must stay free until the kernel binds it, which
can be a second or more later. Two things can take it meanwhile:

* another kernel starting at the same moment -- so the server remembers
  what it handed out until the session lets go, and never hands a port out
  twice (Kallichore f030826);
* an *outgoing* connection: the OS gives every outgoing TCP connection a
  local port from its ephemeral range (Linux: 32768-60999). Asking the OS
  for "any free port" (bind to port 0) also returns a port from that range,
  so with many connections being made -- our own ZeroMQ sockets connect to
  every kernel -- a port we reserved can become some connection's local
  port before the kernel binds it, and the kernel fails with "Address
  already in use". Kallichore has this race. We pick ports *outside* the
  ephemeral range, where the OS never assigns them on its own, and check
  each one is free by binding it. We also stay below the IANA dynamic range
  (49152-65535): pyzmq's ``bind_to_random_port``, which every ipykernel
  uses for its subprocess-output pipe, picks its ports there.

Neither rule closes the race with *another program* that picks ports the
same way (a second supervisor on the machine) between our check and the
kernel's bind: the kernel then exits with "Address already in use". A
start that fails so (:func:`is_port_conflict`) is tried again with new
ports (see ``KernelSession.start``).
"""

from __future__ import annotations

import random
import socket

import attrs

__all__ = ["PortPickError", "PortReservations", "ephemeral_port_range", "is_port_conflict"]

#: Lowest port we hand to a kernel (well clear of registered service ports).
LOWEST_PORT = 10_000  # port number
#: First port of the IANA dynamic range, where pyzmq picks random ports.
DYNAMIC_RANGE_START = 49_152  # port number
#: How many candidates to try before falling back to an OS-assigned port.
MAX_ATTEMPTS = 200  # attempts
#: Where Linux keeps the ephemeral range, and its usual value.
_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
#: How a failed bind reads in a kernel's output: the POSIX text of EADDRINUSE
#: (Python, Rust, R and libzmq all print it), its name, and Windows' text.
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "only one usage of each socket address")


class PortPickError(Exception):
    """No free port could be found."""


def ephemeral_port_range() -> tuple[int, int]:
    """The OS's range for automatically assigned local ports (inclusive)."""
    try:
        with open(_EPHEMERAL_RANGE_FILE) as f:
            low, high = (int(part) for part in f.read().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL_RANGE
    return low, high


def _candidates(rng: random.Random) -> list[int]:
    low, high = ephemeral_port_range()
    ranges = [(LOWEST_PORT, low - 1), (high + 1, DYNAMIC_RANGE_START - 1)]
    ranges = [(a, b) for a, b in ranges if a <= b]
    if not ranges:
        return []
    weights = [b - a + 1 for a, b in ranges]
    picked = []
    for _ in range(MAX_ATTEMPTS):
        a, b = rng.choices(ranges, weights)[0]
        picked.append(rng.randint(a, b))
    return picked


def is_port_conflict(output: str | None) -> bool:
    """Whether a kernel's startup output says a port it was given was in use."""
    text = (output or "").lower()
    return any(marker in text for marker in _ADDRESS_IN_USE)


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _os_assigned(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class PortReservations:
    """Ports handed to kernels that have not been released yet."""

    _reserved: set[int] = attrs.field(factory=set)
    _rng: random.Random = attrs.field(factory=random.SystemRandom)

    def __len__(self) -> int:
        return len(self._reserved)

    def reserve(self, count: int, host: str = "127.0.0.1") -> list[int]:
        """Reserve ``count`` distinct free ports outside the ephemeral range.

        Falls back to OS-assigned ports only if no candidate outside the range
        is free (a machine whose ephemeral range covers nearly every port).

        Raises:
            PortPickError: not enough free ports could be found.
        """
        picked: list[int] = []
        for port in _candidates(self._rng):
            if len(picked) == count:
                break
            if port in self._reserved or port in picked or not _is_free(host, port):
                continue
            picked.append(port)
        for _ in range(MAX_ATTEMPTS):
            if len(picked) == count:
                break
            try:
                port = _os_assigned(host)
            except OSError as exc:
                raise PortPickError(f"could not bind a free port: {exc.strerror or exc}") from None
            if port not in self._reserved and port not in picked:
                picked.append(port)
        if len(picked) < count:
            raise PortPickError(f"found only {len(picked)} of {count} free ports")
        self._reserved.update(picked)
        return picked

    def release(self, ports: list[int] | tuple[int, ...]) -> None:
        """Give ports back (unknown ports are ignored)."""
        for port in ports:
            self._reserved.discard(port)
