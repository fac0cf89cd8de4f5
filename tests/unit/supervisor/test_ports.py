"""Kernel ports: distinct, free, and never from the OS's ephemeral range."""

from __future__ import annotations

import socket

import pytest

from kallichore.supervisor import ports as ports_module
from kallichore.supervisor.ports import (
    DYNAMIC_RANGE_START,
    PortPickError,
    PortReservations,
    ephemeral_port_range,
    is_port_conflict,
)


def test_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_port_range()
    reservations = PortReservations()
    picked = [p for _ in range(20) for p in reservations.reserve(5)]
    assert len(set(picked)) == 100, "never the same port twice while reserved"
    assert not [p for p in picked if low <= p <= high]
    assert max(picked) < DYNAMIC_RANGE_START, "pyzmq's random ports live up there"
    assert len(reservations) == 100
    for port in picked[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # the kernel will be able to bind it


def test_a_busy_port_is_skipped() -> None:
    reservations = PortReservations()
    first = reservations.reserve(1)[0]
    reservations.release([first])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        # Force the candidate list to offer the busy port first.
        again = PortReservations()
        original = ports_module._candidates
        ports_module._candidates = lambda rng: [first, *original(rng)]  # type: ignore[assignment]
        try:
            assert first not in again.reserve(3)
        finally:
            ports_module._candidates = original  # type: ignore[assignment]


def test_release_makes_ports_available_again() -> None:
    reservations = PortReservations()
    picked = reservations.reserve(5)
    reservations.release(picked)
    reservations.release([1, 2, 3])  # unknown ports are ignored
    assert len(reservations) == 0


def test_running_out_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports_module, "_candidates", lambda rng: [])
    monkeypatch.setattr(ports_module, "_os_assigned", lambda host: 5555)
    reservations = PortReservations()
    with pytest.raises(PortPickError, match="found only 1 of 2"):
        reservations.reserve(2)


def test_a_failed_bind_is_recognised_in_kernel_output() -> None:
    ipykernel = (
        "Traceback (most recent call last):\n"
        "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:23456')\n"
    )
    assert is_port_conflict(ipykernel)
    assert is_port_conflict(
        'Error: Os { code: 98, kind: AddrInUse, message: "Address already in use" }'
    )
    assert is_port_conflict("bind: EADDRINUSE")
    assert not is_port_conflict("ModuleNotFoundError: No module named 'ipykernel'")
    assert not is_port_conflict("")
    assert not is_port_conflict(None)
