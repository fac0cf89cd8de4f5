"""The repository's own text files carry no leftover merge-conflict markers.

A marker that slips into a document or a module is easy to miss in review
(docs are not imported, so nothing else fails); this test names the file and
the line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("<<<<<<< ", ">>>>>>> ", "=======\n")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".sh"}


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False
    ).stdout.split(b"\0")
    paths = [ROOT / name.decode() for name in listed if name]
    if not paths:  # not a git checkout (an sdist): scan what is there
        paths = [p for p in ROOT.rglob("*") if ".venv" not in p.parts]
    names = {"Makefile", "README"}
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in names)]


def test_no_merge_conflict_markers() -> None:
    found = []
    for path in tracked_text_files():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines, 1) if line.startswith(MARKERS[:2])]
        middles = {i for i, line in enumerate(lines, 1) if line == MARKERS[2]}
        # A marker pair: an opening or closing line, with a "=======" line in the file.
        if starts and middles:
            found += [f"{path.relative_to(ROOT)}:{i}" for i in starts]
    assert not found, f"merge-conflict markers left in: {', '.join(found)}"
