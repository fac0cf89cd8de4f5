"""The package's layering rules, checked on the source (parsed, never imported).

Every import statement of every module under ``kallichore/`` counts: at module level,
inside a function, and under ``if TYPE_CHECKING:``. A type-only import is still a
dependency of the design -- the module is written against the other one's type, and
the server↔api circle this test exists to keep away was made entirely of such imports
-- so it counts both for the layer rules and for cycles. A module that needs a type
from a layer above takes a small ``Protocol`` of its own instead.

The rules (docs/architecture.md draws them):

* ``protocol/``, ``session/`` and ``wire/`` are pure: no trio, zmq, quart or hypercorn.
* ``channels/`` imports neither quart nor ``kallichore.server``.
* ``api/`` does not import ``kallichore.server``.
* ``supervisor/`` imports none of ``api/``, ``channels/``, ``kallichore.server``.
* ``client/`` imports from the rest of the package only the pure packages,
  ``transport/`` and the base modules.
* No import cycle between modules. Importing ``a.b.c`` from outside ``a.b`` runs
  ``a/b/__init__.py`` too, so it is an edge to that package as well.
* No module over :data:`MAX_FILE_LINES` lines of code, no function over
  :data:`MAX_FUNCTION_LINES` (blank lines, comments and docstrings not counted).

There are no exemptions: a change that breaks a rule fixes the design (a small
``Protocol`` in the lower layer, a module split by object), not this file.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs
import pytest

from tests.support.imports import (
    SOURCE_ROOT,
    Import,
    imports_in,
    imports_of,
    module_name,
    package_files,
)
from tests.support.layers import (
    IO_LIBRARIES,
    LAYER_ORDER,
    PURE,
    SERVER,
    client_may_import,
    layer_of,
    under,
)

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60

ALL_IMPORTS = [imp for path in package_files() for imp in imports_of(path)]
MODULES = frozenset(module_name(path) for path in package_files())


@attrs.frozen
class Rule:
    """Modules under ``importers`` must not import what ``forbidden`` accepts."""

    name: str
    importers: tuple[str, ...]
    forbidden: Callable[[str], bool]
    says: str

    def violations(self, imports: Iterable[Import]) -> list[Import]:
        return [
            imp
            for imp in imports
            if under(imp.importer, self.importers) and self.forbidden(imp.module)
        ]


RULES = [
    Rule(
        "pure-packages-do-no-io",
        PURE,
        lambda m: under(m, IO_LIBRARIES),
        "protocol/, session/ and wire/ never import trio, zmq, quart or hypercorn",
    ),
    Rule(
        "channels-without-quart",
        ("kallichore.channels",),
        lambda m: under(m, ("quart", "quart_trio")),
        "channels/ never imports quart",
    ),
    Rule(
        "channels-below-server",
        ("kallichore.channels",),
        lambda m: under(m, SERVER),
        "channels/ never imports kallichore.server",
    ),
    Rule(
        "api-below-server",
        ("kallichore.api",),
        lambda m: under(m, SERVER),
        "api/ never imports kallichore.server",
    ),
    Rule(
        "supervisor-below-api-channels-server",
        ("kallichore.supervisor",),
        lambda m: under(m, ("kallichore.api", "kallichore.channels", *SERVER)),
        "supervisor/ never imports api/, channels/ or kallichore.server",
    ),
    Rule(
        "client-uses-only-lower-layers",
        ("kallichore.client",),
        lambda m: under(m, ("kallichore",)) and not client_may_import(m),
        "client/ imports only protocol/, session/, wire/, transport/ and the base",
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_layer_rule(rule: Rule) -> None:
    broken = rule.violations(ALL_IMPORTS)
    assert not broken, f"{rule.says}; these imports break it:\n" + "\n".join(map(str, broken))


def test_layers_import_only_downward() -> None:
    """Below the facades, a module imports only its own layer and the layers under it."""
    rank = {layer: n for n, layer in enumerate(LAYER_ORDER)}
    upward = [
        f"{imp} ({layer_of(imp.importer)} -> {layer_of(imp.module)})"
        for imp in ALL_IMPORTS
        if imp.module.startswith("kallichore.")
        and layer_of(imp.importer) != "facades"
        and rank[layer_of(imp.module)] > rank[layer_of(imp.importer)]
    ]
    assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)


# --- cycles ----------------------------------------------------------------


def _package_edges(imp: Import) -> list[str]:
    """The modules ``imp`` makes run: the module and each package that holds it.

    Packages that also hold the importer have started already and add nothing.
    """
    parts = imp.module.split(".")
    targets = [".".join(parts[:n]) for n in range(2, len(parts) + 1)]
    return [
        t
        for t in targets
        if t in MODULES and t != imp.importer and not imp.importer.startswith(t + ".")
    ]


def import_graph(imports: Iterable[Import]) -> dict[str, dict[str, list[Import]]]:
    """importer -> imported module -> the imports that make the edge."""
    graph: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        for target in _package_edges(imp):
            graph[imp.importer][target].append(imp)
    return graph


def cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = itertools.count()

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(component: list[str], graph: Mapping[str, Mapping[str, list[Import]]]) -> str:
    members = set(component)
    lines = [f"cycle between {', '.join(component)}:"]
    for importer in component:
        for target, imps in sorted(graph.get(importer, {}).items()):
            if target in members:
                lines.extend(f"  {imp}  [-> {target}]" for imp in imps)
    return "\n".join(lines)


PACKAGES = sorted(module_name(path) for path in package_files() if path.name == "__init__.py")


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "kallichore"])
def test_no_import_cycle_within(package: str) -> None:
    """Cycles inside one package, checked apart so each package's holds on its own."""
    graph = {
        importer: {t: imps for t, imps in targets.items() if under(t, [package])}
        for importer, targets in import_graph(ALL_IMPORTS).items()
        if under(importer, [package])
    }
    found = cycles(graph)
    assert not found, "\n".join(_describe(c, graph) for c in found)


def test_no_import_cycles() -> None:
    graph = import_graph(ALL_IMPORTS)
    found = cycles(graph)
    assert not found, "\n".join(_describe(c, graph) for c in found)


# --- sizes -----------------------------------------------------------------


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str, first: int, last: int, docstrings: set[int]) -> int:
    """Lines ``first..last`` of ``source`` that are code: not blank, comment or docstring."""
    lines = source.splitlines()[first - 1 : last]
    return sum(
        1
        for number, line in enumerate(lines, first)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, line, code lines) of every function of ``source`` over the limit."""
    tree = ast.parse(source)
    docs = _docstring_lines(tree)
    return [
        (node.name, node.lineno, size)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (size := code_lines(source, node.lineno, node.end_lineno or node.lineno, docs))
        > MAX_FUNCTION_LINES
    ]


def file_code_lines(source: str) -> int:
    return code_lines(source, 1, len(source.splitlines()), _docstring_lines(ast.parse(source)))


def _relative(path: Path) -> str:
    return path.relative_to(SOURCE_ROOT).as_posix()


@pytest.mark.parametrize("path", package_files(), ids=_relative)
def test_file_size(path: Path) -> None:
    size = file_code_lines(path.read_text(encoding="utf-8"))
    assert size <= MAX_FILE_LINES, (
        f"{_relative(path)} has {size} lines of code (limit {MAX_FILE_LINES})"
    )


@pytest.mark.parametrize("path", package_files(), ids=_relative)
def test_function_sizes(path: Path) -> None:
    long = long_functions(path.read_text(encoding="utf-8"))
    assert not long, "\n".join(
        f"{_relative(path)}:{line}: {name} has {size} lines of code (limit {MAX_FUNCTION_LINES})"
        for name, line, size in long
    )


# --- the checker itself ------------------------------------------------------

SAMPLE = """\
from __future__ import annotations
from typing import TYPE_CHECKING
import trio.lowlevel
from . import codec
from ..server import priority
if TYPE_CHECKING:
    from kallichore.server.root import Server
else:
    import zmq
def f():
    import hypercorn.trio
"""


def test_the_parser_sees_every_kind_of_import() -> None:
    found = {
        imp.module: imp
        for imp in imports_in(SAMPLE, "kallichore.wire.x", "kallichore.wire", "wire/x.py")
    }
    assert {"trio.lowlevel", "kallichore.wire.codec", "kallichore.server.priority"} <= set(found)
    assert found["kallichore.server.root"].type_checking
    assert not found["zmq"].type_checking
    assert found["hypercorn.trio"].in_function
    assert str(found["kallichore.server.root"]) == (
        "wire/x.py:7: from kallichore.server.root import Server (under TYPE_CHECKING)"
    )


def test_the_rules_catch_violations() -> None:
    imports = imports_in(SAMPLE, "kallichore.wire.x", "kallichore.wire", "wire/x.py")
    pure = next(r for r in RULES if r.name == "pure-packages-do-no-io")
    assert {imp.module for imp in pure.violations(imports)} == {
        "trio.lowlevel",
        "zmq",
        "hypercorn.trio",
    }
    as_channels = imports_in(SAMPLE, "kallichore.channels.x", "kallichore.channels")
    below = next(r for r in RULES if r.name == "channels-below-server")
    assert {imp.line for imp in below.violations(as_channels)} == {5, 7}


def test_the_cycle_finder_finds_cycles() -> None:
    graph: dict[str, dict[str, list[Import]]] = {
        "a": {"b": []},
        "b": {"c": []},
        "c": {"a": []},
        "d": {"a": []},
    }
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": []}, "b": {}}) == []


def test_importing_a_module_runs_its_package() -> None:
    imports = imports_in(
        "from kallichore.server.priority import X\nfrom kallichore.client._rest import Y\n",
        "kallichore.client._channel",
        "kallichore.client",
    )
    graph = import_graph(imports)
    assert set(graph["kallichore.client._channel"]) == {
        "kallichore.server",
        "kallichore.server.priority",
        "kallichore.client._rest",
    }


def test_the_size_counter_skips_docstrings_and_comments() -> None:
    source = 'def f():\n    """Doc\n    string."""\n    # note\n\n    return 1\n'
    assert file_code_lines(source) == 2
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def g():\n{body}\n") == [("g", 1, MAX_FUNCTION_LINES + 1)]
