"""Fixtures shared by the integration modules that start servers themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel_server import kill_tree, marked_processes
from tests.support.server_process import ServerFactory


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Starts servers for one test; every one is stopped (killed if need be) after it."""
    servers = ServerFactory(tmp_path / "servers")
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def marker() -> Iterator[str]:
    """A value for ``MARKER_VAR``; nothing carrying it may outlive the module."""
    value = uuid.uuid4().hex
    yield value
    leftovers = marked_processes(value)
    if leftovers:
        kill_tree(leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"
