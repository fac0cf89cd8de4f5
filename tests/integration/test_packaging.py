"""The package builds cleanly: no deprecation warnings, and the artefacts hold what they should.

Builds the sdist and, from it, the wheel with ``python -m build
--no-isolation``: the virtualenv's own setuptools (the ``dev`` extra pins one
new enough), so nothing is downloaded and the test works offline. The whole
build output is captured; any line that mentions a deprecation fails the
test (setuptools announces removals that way, months before builds break).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

#: Bound on building the sdist and the wheel (a few seconds when idle).
BUILD_TIMEOUT = 120.0  # seconds


def build(outdir: Path) -> str:
    """Build the sdist and wheel into ``outdir``; returns the combined output."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("the 'build' package is missing: pip install -e '.[test,dev]' (make test does)")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), REPO_ROOT],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    outdir = tmp_path_factory.mktemp("dist")
    return outdir, build(outdir)


def test_build_prints_no_deprecation_warning(built: tuple[Path, str]) -> None:
    _, output = built
    deprecations = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, "\n".join(deprecations)


def test_wheel_metadata_and_contents(built: tuple[Path, str]) -> None:
    outdir, _ = built
    (wheel,) = outdir.glob("kallichore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        (entry_points_name,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_name).decode()
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert {"kallichore/py.typed", "kallichore/pytest_plugin.py", "kallichore/embed.py"} <= names
    assert "kallichore = kallichore.pytest_plugin" in entry_points
    assert "kcserver = kallichore.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names), "the test suite is not shipped"


def test_sdist_carries_the_license(built: tuple[Path, str]) -> None:
    outdir, _ = built
    (sdist,) = outdir.glob("kallichore-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "pyproject.toml", "README.md", "kallichore/__init__.py"} <= names
