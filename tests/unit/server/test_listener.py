"""Binding the server socket: modes, stale sockets, limits, dead-peer options."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest

from kallichore.config import ConfigError, ServerConfig, Transport
from kallichore.server.listener import DEAD_PEER_TIMEOUT, bind_listener, bind_unix


@pytest.fixture
def short_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 104-byte socket path limit.
    path = tempfile.mkdtemp(prefix="kc-l-", dir="/tmp")
    yield path
    shutil.rmtree(path)


def test_accepted_tcp_connections_detect_dead_peers() -> None:
    listener = bind_listener(ServerConfig(token=None))
    try:
        client = socket.create_connection(("127.0.0.1", listener.port))
        accepted, _ = listener.sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                timeout = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert timeout == int(DEAD_PEER_TIMEOUT * 1000)
    finally:
        listener.close()


def test_unix_socket_is_private_and_removed_on_close(short_dir: str) -> None:
    path = os.path.join(short_dir, "new", "s.sock")
    listener = bind_unix(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    listener.close()
    listener.close()  # idempotent
    assert not os.path.exists(path)


def test_a_stale_socket_is_replaced_but_a_live_one_is_not(short_dir: str) -> None:
    path = os.path.join(short_dir, "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    listener = bind_unix(path)
    try:
        with pytest.raises(ConfigError, match="another server is listening there"):
            bind_unix(path)
    finally:
        listener.close()


def test_a_regular_file_is_never_deleted(short_dir: str) -> None:
    path = os.path.join(short_dir, "precious.txt")
    with open(path, "w") as f:
        f.write("keep me")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_unix(path)
    with open(path) as f:
        assert f.read() == "keep me"


def test_too_long_a_path_is_refused_before_binding(short_dir: str) -> None:
    path = os.path.join(short_dir, "x" * 120 + ".sock")
    with pytest.raises(ConfigError, match=r"Unix socket path too long: \d+ characters"):
        bind_unix(path)
    assert not os.path.exists(path)


def test_port_in_use_is_a_clear_error() -> None:
    first = bind_listener(ServerConfig(token=None))
    try:
        with pytest.raises(ConfigError, match=r"Failed to bind 127\.0\.0\.1"):
            bind_listener(ServerConfig(token=None, port=first.port or 0))
    finally:
        first.close()


def test_socket_transport_uses_the_socket_dir(short_dir: str) -> None:
    listener = bind_listener(
        ServerConfig(token=None, transport=Transport.SOCKET, socket_dir=short_dir)
    )
    try:
        assert listener.socket_path == os.path.join(short_dir, f"kc-{os.getpid()}.sock")
        assert listener.describe() == f"Listening on Unix socket: {listener.socket_path}"
    finally:
        listener.close()
