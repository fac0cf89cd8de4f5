"""ZeroMQ stays behind the transport seam.

Parses (never imports) every module of the package: only ``kallichore/transport/``
may import ``zmq`` -- plus the process-based fake kernel, which *is* a kernel
and binds its own ZeroMQ sockets -- and the seam itself (``transport/base.py``)
imports neither trio nor zmq, so both implementations and their users can
depend on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "kallichore"
#: Modules outside transport/ allowed to import zmq, and why.
ZMQ_ALLOWED = {
    PACKAGE_ROOT / "testing" / "fake_kernel.py": "a kernel of its own, run as a process",
}


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, anywhere in the file."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_transport_package_imports_zmq() -> None:
    offenders = [
        str(path.relative_to(PACKAGE_ROOT))
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        if "zmq" in _imported_roots(path)
        and (PACKAGE_ROOT / "transport") not in path.parents
        and path not in ZMQ_ALLOWED
    ]
    assert not offenders, f"zmq imported outside kallichore/transport/: {offenders}"


def test_the_seam_imports_neither_trio_nor_zmq() -> None:
    roots = _imported_roots(PACKAGE_ROOT / "transport" / "base.py")
    assert not roots & {"trio", "zmq"}
