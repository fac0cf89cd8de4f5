"""Where this checkout is, and how processes the tests start find its code."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

#: The root of this checkout (``kallichore/``, ``tests/``, ``docs/`` live here).
REPO_ROOT = str(Path(__file__).resolve().parents[2])


def repo_python_path(existing: str | None) -> str:
    """A ``PYTHONPATH`` with the checkout first, then ``existing`` (if any)."""
    return os.pathsep.join(filter(None, (REPO_ROOT, existing)))


def with_repo_on_path(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Put the checkout first on ``env``'s ``PYTHONPATH`` (keeping what was there).

    So a child Python imports ``kallichore`` and ``tests.support`` from this
    checkout, installed or not. Returns ``env`` itself.
    """
    env["PYTHONPATH"] = repo_python_path(env.get("PYTHONPATH"))
    return env
