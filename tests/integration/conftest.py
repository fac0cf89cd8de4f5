"""Fixtures shared by the integration modules that start servers themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.integration.helpers import kill_tree, marked_processes


@pytest.fixture(scope="module")
def marker() -> Iterator[str]:
    """A value for ``MARKER_VAR``; nothing carrying it may outlive the module."""
    value = uuid.uuid4().hex
    yield value
    leftovers = marked_processes(value)
    if leftovers:
        kill_tree(leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"
