"""What a module of this source tree imports, read from its AST (never by importing it).

The layering tests (``tests/unit/test_layering.py``, ``tests/unit/test_sans_io_imports.py``)
judge these records. Every import statement counts -- at module level, inside a function,
under ``if TYPE_CHECKING:`` -- and each record says which of those it is, so a rule can
choose what it looks at.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import attrs

SOURCE_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = SOURCE_ROOT / "kallichore"


@attrs.frozen
class Import:
    """One module named by one import statement of ``importer``."""

    importer: str  # dotted name of the importing module
    path: str  # the importing file, relative to the source root
    module: str  # dotted, absolute name of the imported module
    line: int
    statement: str  # the import statement as written (first line)
    type_checking: bool  # under ``if TYPE_CHECKING:`` (never runs)
    in_function: bool  # inside a function body (runs when it is called)

    def __str__(self) -> str:
        where = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.path}:{self.line}: {self.statement}{where}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> str:
    """The package relative imports in ``path`` are resolved against."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this source tree."""
    base = SOURCE_ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def package_files() -> list[Path]:
    """Every module of the ``kallichore`` package."""
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def _is_type_checking_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    node: ast.AST, *, type_checking: bool = False, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement under ``node``, with where it sits."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_checking, in_function
            continue
        guarded = type_checking
        if isinstance(child, ast.If) and _is_type_checking_guard(child):
            # only the body is guarded; the ``else:`` branch runs
            for stmt in child.body:
                yield from _statements(
                    ast.Module(body=[stmt], type_ignores=[]),
                    type_checking=True,
                    in_function=in_function,
                )
            for stmt in child.orelse:
                yield from _statements(
                    ast.Module(body=[stmt], type_ignores=[]),
                    type_checking=type_checking,
                    in_function=in_function,
                )
            continue
        yield from _statements(
            child,
            type_checking=guarded,
            in_function=in_function
            or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
        )


def imports_in(source: str, importer: str, package: str, path: str = "<source>") -> list[Import]:
    """The imports of ``source`` (module ``importer`` in file ``path``).

    Relative imports are resolved against ``package``.

    ``from m import x`` names ``m``, and ``m.x`` too when that is a module of this
    source tree (otherwise ``x`` is just an attribute of ``m``).
    """
    lines = source.splitlines()
    return [
        Import(importer, path, module, stmt.lineno, lines[stmt.lineno - 1].strip(), tc, in_fn)
        for stmt, tc, in_fn in _statements(ast.parse(source))
        for module in _named_modules(stmt, package)
    ]


def _named_modules(stmt: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    if stmt.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (stmt.level - 1)])
        module = f"{base}.{stmt.module}" if stmt.module else base
    else:
        module = stmt.module or ""
    return [module] + [
        f"{module}.{alias.name}" for alias in stmt.names if is_module(f"{module}.{alias.name}")
    ]


def imports_of(path: Path) -> list[Import]:
    """The imports of the module at ``path``."""
    return imports_in(
        path.read_text(encoding="utf-8"),
        module_name(path),
        package_of(path),
        str(path.relative_to(SOURCE_ROOT)),
    )
