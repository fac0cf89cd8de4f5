"""The client library stays a client (``kallichore/client/``).

From the rest of the package it imports only the pure layers (``protocol/``,
``session/``, ``wire/``), ``transport/`` and the base modules, never the
server, the supervisor, the channels or the HTTP API, so ``import
kallichore.client`` loads neither the web stack nor ZeroMQ. The package root
(``kallichore/__init__.py``, which runs for any import anyway) counts as base.
Its own modules import one another without a cycle. Imports are read from
the source (module level and inside functions); a subprocess also checks what
importing the client actually loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[2] / "kallichore" / "client"
CLIENT_FILES = sorted(CLIENT_DIR.glob("*.py"))
ALLOWED_PACKAGES = ("kallichore.protocol", "kallichore.session", "kallichore.wire")
ALLOWED_MODULES = frozenset(
    {
        "kallichore",
        "kallichore.transport",
        "kallichore.config",
        "kallichore.settings",
        "kallichore.flag_values",
        "kallichore.errors",
        "kallichore.logs",
        "kallichore.fd_limit",
    }
)
ALLOWED_PREFIXES = (*ALLOWED_PACKAGES, "kallichore.transport", "kallichore.client")


def _kallichore_imports(path: Path) -> set[str]:
    """The ``kallichore`` modules ``path`` imports by absolute name, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "kallichore")
    return found


def _allowed(name: str) -> bool:
    return name in ALLOWED_MODULES or any(
        name == prefix or name.startswith(prefix + ".") for prefix in ALLOWED_PREFIXES
    )


@pytest.mark.parametrize("path", CLIENT_FILES, ids=lambda p: p.name)
def test_client_imports_only_pure_layers_transport_and_base(path: Path) -> None:
    outside = sorted(name for name in _kallichore_imports(path) if not _allowed(name))
    assert not outside, f"kallichore/client/{path.name} imports {outside}"


def test_client_modules_form_no_cycle() -> None:
    graph = {
        f"kallichore.client.{path.stem}": {
            name for name in _kallichore_imports(path) if name.startswith("kallichore.client.")
        }
        for path in CLIENT_FILES
    }
    graph["kallichore.client"] = graph.pop("kallichore.client.__init__")
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_importing_the_client_loads_no_server_side_code() -> None:
    probe = (
        "import json, sys\n"
        "import kallichore.client, kallichore.client.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    )
    ours = [name for name in loaded if name.split(".")[0] == "kallichore"]
    assert [name for name in ours if not _allowed(name)] == []
    assert not {"quart", "quart_trio", "hypercorn", "zmq"} & set(loaded)
