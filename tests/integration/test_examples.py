"""The programs in ``examples/`` run, print what they promise, and leave nothing behind.

Each example runs as a subprocess (bounded) from a scratch directory, with
the repository on ``PYTHONPATH`` and a per-test marker in its environment;
kernels inherit the environment, so any marked process still alive after the
example exits is a leak.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import MARKER_VAR, REPO_ROOT, kill_tree, marked_processes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
]

EXAMPLES = Path(REPO_ROOT, "examples")
#: Bound on one example run (an ipykernel start included).
EXAMPLE_TIMEOUT = 90.0  # seconds


@pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="needs ipykernel")
def test_embedded_app(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        MARKER_VAR: marker,
        "PYTHONPATH": os.pathsep.join(filter(None, (REPO_ROOT, os.environ.get("PYTHONPATH")))),
    }
    try:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "embedded_app.py")],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    finally:
        leftovers = marked_processes(marker)
        kill_tree(leftovers)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    assert "[app] result: 42" in lines, output
    assert any(line.startswith("[app] kallichore serving at http://127.0.0.1:") for line in lines)
    assert any(line.startswith("[status] sessions=") for line in lines), output
    assert lines[-1].endswith("status: exited"), output
    assert not leftovers, f"processes left behind: {leftovers}"
