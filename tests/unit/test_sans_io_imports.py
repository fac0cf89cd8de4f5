"""The sans-io layer stays sans-io: no event loop, sockets or web framework.

Parses (never imports) every module under ``kallichore/wire/`` plus
``kallichore/errors.py``, the WebSocket frame codec (``protocol/ws_frames.py``), the execution
result builder (``protocol/execution.py``), the client envelope encoder (``protocol/envelope.py``),
the flag layering (``settings.py``, ``flag_values.py``) and the kernel policy
(``supervisor/policy.py``, ``supervisor/dropped_messages.py``), and fails on an import of trio,
zmq, quart, quart_trio
or hypercorn -- at module level or inside a function, absolute or relative.
``kallichore/__init__.py`` is checked too: it runs whenever any of these modules
is imported, so a trio import there would leak into the sans-io layer.
Imports of other ``kallichore`` modules must stay inside the checked set, so the
rule cannot be dodged through an internal module that does the I/O import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import PACKAGE_ROOT, imports_in, module_name, package_of

FORBIDDEN = frozenset({"trio", "zmq", "quart", "quart_trio", "hypercorn"})
SANS_IO_FILES = sorted(
    [
        *(PACKAGE_ROOT / "wire").rglob("*.py"),
        *(PACKAGE_ROOT / "protocol").rglob("*.py"),
        *(PACKAGE_ROOT / "session").rglob("*.py"),
        PACKAGE_ROOT / "errors.py",
        PACKAGE_ROOT / "__init__.py",
        PACKAGE_ROOT / "settings.py",
        PACKAGE_ROOT / "flag_values.py",
        PACKAGE_ROOT / "supervisor" / "policy.py",
        PACKAGE_ROOT / "supervisor" / "dropped_messages.py",
    ]
)
SANS_IO_MODULES = frozenset(module_name(p) for p in SANS_IO_FILES)


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of the modules ``source`` imports, anywhere in its body.

    ``from m import x`` yields ``m``, plus ``m.x`` when that is a module of this
    source tree (otherwise ``x`` is just an attribute of ``m``).
    """
    return {imp.module for imp in imports_in(source, package, package)}


def _imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(encoding="utf-8"), package_of(path))


def test_the_sans_io_set_is_found() -> None:
    assert {
        "kallichore",
        "kallichore.errors",
        "kallichore.wire",
        "kallichore.wire.codec",
        "kallichore.wire.message",
        "kallichore.wire.connection_file",
    } <= SANS_IO_MODULES


@pytest.mark.parametrize("path", SANS_IO_FILES, ids=module_name)
def test_no_io_imports(path: Path) -> None:
    offending = sorted(name for name in _imports_of(path) if name.split(".")[0] in FORBIDDEN)
    assert not offending, f"{module_name(path)} imports {offending}"


@pytest.mark.parametrize("path", SANS_IO_FILES, ids=module_name)
def test_internal_imports_stay_sans_io(path: Path) -> None:
    outside = sorted(
        name
        for name in _imports_of(path)
        if name.split(".")[0] == "kallichore" and name not in SANS_IO_MODULES
    )
    assert not outside, f"{module_name(path)} imports non-sans-io modules {outside}"


def test_the_checker_catches_violations() -> None:
    source = (
        "import trio.lowlevel\n"
        "from zmq import Context\n"
        "from . import codec\n"
        "from ..transport import base\n"
        "def f():\n"
        "    import hypercorn.trio\n"
    )
    names = imported_modules(source, "kallichore.wire")
    assert {"trio.lowlevel", "zmq", "hypercorn.trio"} <= names
    assert {"kallichore.wire", "kallichore.wire.codec", "kallichore.transport"} <= names
    assert "kallichore.transport" not in SANS_IO_MODULES
