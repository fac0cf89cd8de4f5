"""Suite-wide rules.

Every ``async def`` test runs under :func:`trio.fail_after`, so a hang fails
fast instead of freezing CI (trio-websocket's rule). The default budget is
:data:`DEFAULT_TIME_LIMIT` seconds of the test's clock (virtual seconds under
``autojump_clock``); ``@pytest.mark.time_limit(n)`` changes it for one test.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.server_process import short_tempdir

DEFAULT_TIME_LIMIT = 30.0  # seconds
#: Under ``autojump_clock`` the budget is virtual time, which jumps; tests that
#: model hours of idleness get a budget of virtual weeks by default.
AUTOJUMP_TIME_LIMIT = 14 * 24 * 3600.0  # virtual seconds


def _with_time_limit(
    fn: Callable[..., Coroutine[Any, Any, Any]], seconds: float
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(seconds):
            return await fn(*args, **kwargs)

    return wrapper


def _async_fixtures_not_asked_for(item: pytest.Function) -> list[str]:
    """Async fixtures ``item`` uses that pytest-trio will silently not run.

    pytest-trio runs the async fixtures it finds by following the test's
    arguments and their fixtures' arguments; an async fixture that is only
    ``autouse`` (or in ``usefixtures``) is never set up nor torn down
    (pytest-trio issue 123).
    """
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # pytest internals changed: nothing to check with
        return []
    defs = info.name2fixturedefs
    reached: set[str] = set()
    todo = list(info.argnames)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            for fixturedef in defs.get(name, ()):
                todo.extend(fixturedef.argnames)
    return [
        name
        for name in item.fixturenames
        if name not in reached
        and any(
            inspect.iscoroutinefunction(d.func) or inspect.isasyncgenfunction(d.func)
            for d in defs.get(name, ())[-1:]
        )
    ]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A fresh directory short enough for Unix socket paths."""
    with short_tempdir() as path:
        yield path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        unrun = _async_fixtures_not_asked_for(item)
        if unrun:
            raise pytest.UsageError(
                f"{item.nodeid}: pytest-trio would not run the async fixture(s) "
                f"{', '.join(unrun)} (autouse or usefixtures); make them synchronous "
                "or ask for them as arguments"
            )
        if not inspect.iscoroutinefunction(item.obj):
            continue
        marker = item.get_closest_marker("time_limit")
        if marker:
            seconds = float(marker.args[0])
        elif "autojump_clock" in item.fixturenames:
            seconds = AUTOJUMP_TIME_LIMIT
        else:
            seconds = DEFAULT_TIME_LIMIT
        item.obj = _with_time_limit(item.obj, seconds)


def pytest_configure(config: pytest.Config) -> None:
    # kallichore.pytest_plugin arrives through its pytest11 entry point when
    # kallichore is installed (make test); from a bare checkout, load it here.
    # Never both: pytest refuses to register a plugin twice.
    if not config.pluginmanager.has_plugin("kallichore"):
        config.pluginmanager.import_plugin("kallichore.pytest_plugin")
