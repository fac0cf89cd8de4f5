"""sd_notify addresses and the activation variables (kallichore.systemd).

The end-to-end checks (a real server notifying a test-bound socket, a real
server on a passed listener) are in tests/integration/test_systemd.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from kallichore.systemd import ActivationError, Notifier, listen_sockets


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kc-sd-", dir="/tmp")
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/name", "\0abstract/name"),
        ("", None),
        ("vsock:2:1234", None),  # not a Unix address: ignored
    ],
)
def test_notify_socket_addresses(value: str, address: str | None) -> None:
    env = {"NOTIFY_SOCKET": value, "OTHER": "x"}
    notifier = Notifier.from_environ(env)
    assert notifier.address == address
    assert env == {"OTHER": "x"}  # kernels must not inherit it


def test_notify_sends_one_datagram_and_survives_a_missing_manager(short_dir: str) -> None:
    path = os.path.join(short_dir, "n.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with manager:
        manager.bind(path)
        assert Notifier(path).notify("READY=1", "STATUS=up")
        manager.settimeout(5)
        assert manager.recv(100) == b"READY=1\nSTATUS=up\n"
    os.unlink(path)
    assert not Notifier(path).notify("STOPPING=1")  # logged, not raised
    assert not Notifier(None).notify("READY=1")


def test_notify_abstract_namespace() -> None:
    name = f"kc-unit-{uuid.uuid4().hex}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with manager:
        manager.bind("\0" + name)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        manager.settimeout(5)
        assert manager.recv(100) == b"READY=1\n"


def test_activation_for_another_process_is_ignored_and_cleared() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "x"}
    assert listen_sockets(env) == []
    assert env == {}
    assert listen_sockets({}) == []


def test_malformed_listen_fds() -> None:
    env = {"LISTEN_FDS": "one", "LISTEN_PID": str(os.getpid())}
    with pytest.raises(ActivationError, match="LISTEN_FDS='one' is not a number"):
        listen_sockets(env)
