"""Every example runs: the programs in ``examples/`` and the Python blocks of the docs.

* ``examples/*.py`` run as subprocesses (bounded) from a scratch directory,
  and must exit 0 and print what they promise.
* The Python blocks of docs/embedding.md and docs/testing.md are taken from
  the Markdown as they are and run by kind: a block with ``trio.run(`` is a
  program (run like an example); one defining ``test_`` functions is a test
  module, and one defining fixtures or ``pytest_configure`` a ``conftest.py``,
  of a mini project that pytest runs in a subprocess with ``trio_mode = true``
  (the way docs/testing.md tells a user to). A block of no known kind fails
  the test, so the docs cannot grow an example nobody runs.

Everything runs with the repository on ``PYTHONPATH`` and a per-test marker
in its environment; kernels inherit the environment, so any marked process
still alive afterwards is a leak.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.kernel_server import MARKER_VAR, kill_tree, marked_processes
from tests.support.paths import REPO_ROOT, with_repo_on_path

pytest_plugins = ["pytester"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
    pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="needs ipykernel"),
]

EXAMPLES = Path(REPO_ROOT, "examples")
DOCS = Path(REPO_ROOT, "docs")
#: Bound on one example run (an ipykernel start included).
EXAMPLE_TIMEOUT = 90.0  # seconds
#: Bound on the pytest run of docs/testing.md's blocks (several kernels).
DOC_TESTS_TIMEOUT = 240.0  # seconds

#: What an example must print (besides exiting 0): each pattern matches a line.
EXPECTED_LINES = {
    "embedded_app.py": [
        r"\[app\] kallichore serving at http://127\.0\.0\.1:\d+",
        r"\[status\] sessions=\d+ active=\d+ busy=(True|False)",
        r"\[kernel\] 42",
        r"\[app\] result: 42",
        r"\[app\] shut down; kernel \d+ status: exited",
    ],
}
#: In a doc program, ``print(...)  # text`` promises that ``text`` is printed.
_PROMISE = re.compile(r"print\(.*#\s*(\S+)\s*$", re.MULTILINE)

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(doc: str) -> list[str]:
    return _BLOCK.findall((DOCS / doc).read_text(encoding="utf-8"))


def block_kind(block: str) -> str:
    if "trio.run(" in block:
        return "program"
    if re.search(r"^(async )?def test_", block, re.MULTILINE):
        return "test"
    if "@pytest.fixture" in block or "def pytest_configure" in block:
        return "conftest"
    return "unknown"


def marked_env(marker: str) -> dict[str, str]:
    return dict(with_repo_on_path({**os.environ, MARKER_VAR: marker}))


def run_program(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a program with a fresh marker; fail if any process it caused outlives it."""
    marker = uuid.uuid4().hex
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=marked_env(marker),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        leftovers = marked_processes(marker)
        kill_tree(leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"
    return result


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(example: str, tmp_path: Path) -> None:
    result = run_program([sys.executable, str(EXAMPLES / example)], tmp_path, EXAMPLE_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    for pattern in EXPECTED_LINES.get(example, []):
        assert any(re.fullmatch(pattern, line) for line in lines), f"{pattern}:\n{output}"


@pytest.mark.parametrize("doc", ["embedding.md", "testing.md"])
def test_every_doc_block_is_of_a_known_kind(doc: str) -> None:
    blocks = python_blocks(doc)
    assert blocks, f"no python blocks found in {doc}"
    unknown = [b for b in blocks if block_kind(b) == "unknown"]
    assert not unknown, f"{doc} has python blocks the tests cannot run:\n" + "\n---\n".join(unknown)


PROGRAMS = [b for b in python_blocks("embedding.md") if block_kind(b) == "program"]


@pytest.mark.parametrize("index", range(len(PROGRAMS)))
def test_embedding_doc_program_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(PROGRAMS[index], encoding="utf-8")
    result = run_program([sys.executable, str(script)], tmp_path, EXAMPLE_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    for promised in _PROMISE.findall(PROGRAMS[index]):
        assert promised in lines, result.stdout


def test_testing_doc_blocks_pass_as_a_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks("testing.md")
    tests = [b for b in blocks if block_kind(b) == "test"]
    # The fixture override goes into a sub-project of its own, so the other
    # tests keep the default configuration; a probe test shows it applied.
    override = [b for b in blocks if "def kallichore_server_config" in b]
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest("\n\n".join(b for b in blocks if "def pytest_configure" in b))
    pytester.makepyfile(**{f"test_doc_{i}": block for i, block in enumerate(tests)})
    sub = pytester.mkpydir("override")
    (sub / "conftest.py").write_text("\n\n".join(override), encoding="utf-8")
    (sub / "test_probe.py").write_text(
        "async def test_override_applies(kallichore_server):\n"
        "    assert kallichore_server.transport == 'tcp'\n"
        "    assert kallichore_server.token is None\n",
        encoding="utf-8",
    )
    marker = uuid.uuid4().hex
    for name, value in marked_env(marker).items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=DOC_TESTS_TIMEOUT)
    finally:
        leftovers = marked_processes(marker)
        kill_tree(leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"
    # Every doc test, the two transports of the parametrized one, and the probe.
    result.assert_outcomes(passed=len(tests) + 2)
