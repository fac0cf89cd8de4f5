"""pytest fixtures for projects that test against kallichore (and for our own suite).

Installed with the package and registered through the ``pytest11`` entry
point, so any project with ``kallichore`` installed gets these fixtures with no
configuration. See ``docs/testing.md``.

================================  ==========================================================
fixture                           gives
================================  ==========================================================
``kallichore_transport``          ``"socket"`` (POSIX) or ``"tcp"``; parametrize to change
``kallichore_server_config``      a :class:`~kallichore.config.ServerConfig` for it (fresh
                                  token, a short private socket directory)
``kallichore_server`` (async)     a real server running in the test's task tree; yields its
                                  :class:`~kallichore.server.ServerAddress`
``kallichore_supervisor`` (async) an in-process :class:`~kallichore.embed.Supervisor`
``kallichore_client`` (async)     a :mod:`kallichore.client` client connected to
                                  ``kallichore_server`` (when that library is importable)
``fake_kernel_argv``              ``fake_kernel_argv(*behaviours, welcome=...)`` -> argv
``python_kernel_argv``            an ipykernel argv (skips when ipykernel is missing)
``python_kernel_session`` (async) a started ipykernel session on ``kallichore_supervisor``
================================  ==========================================================

The async fixtures need `pytest-trio <https://pytest-trio.readthedocs.io>`_:
use them from trio tests (``trio_mode = true``, or ``@pytest.mark.trio``). A
test that uses one any other way fails at setup with a message saying so
(:func:`pytest_runtest_setup`), not with pytest's own error about an
unhandled async fixture.
Teardown of ``kallichore_server`` and ``kallichore_supervisor`` stops every
kernel and then *checks* that no kernel process (nor anything in its process
group) survived; a survivor is killed and the test errors.

This module is imported by pytest on every run in an environment where
kallichore is installed, so at import it loads only the standard library and
pytest: trio, the server and the HTTP stack are imported inside the fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import pathlib

    import psutil

    from kallichore.client import KallichoreClient
    from kallichore.config import ServerConfig
    from kallichore.embed import Session, Supervisor
    from kallichore.server.root import ServerAddress

__all__ = [
    "ASYNC_FIXTURES",
    "KERNEL_EXIT_GRACE",
    "LeftoverKernelError",
    "fake_kernel_argv",
    "kallichore_client",
    "kallichore_server",
    "kallichore_server_config",
    "kallichore_supervisor",
    "kallichore_transport",
    "python_kernel_argv",
    "python_kernel_session",
]

#: How long teardown waits for a kernel's processes to be gone after the
#: supervisor reported it stopped (reaping is asynchronous for grandchildren).
KERNEL_EXIT_GRACE = 5.0  # seconds
#: Socket paths must stay under 104 bytes; temporary directories longer than
#: this fall back to /tmp.
_SHORT_DIR_LIMIT = 60  # characters


class LeftoverKernelError(AssertionError):
    """A kernel process outlived the server or supervisor that started it."""


# --------------------------------------------------------------- trio check

#: The fixtures below that are ``async``: only pytest-trio can run them.
ASYNC_FIXTURES = (
    "kallichore_server",
    "kallichore_supervisor",
    "kallichore_client",
    "python_kernel_session",
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses our async fixtures outside trio, saying how to fix it.

    Runs before any fixture is set up. A test is a trio test when pytest-trio
    marked it (``trio_mode = true`` marks every ``async def`` test) or the
    test carries ``@pytest.mark.trio``. Otherwise pytest would fail with an
    error about an unhandled async fixture, or pytest-trio with "Trio
    fixtures can only be used by Trio tests", neither of which says what to
    change.
    """
    if item.get_closest_marker("trio") is not None:
        return
    used = _async_fixtures_used(item)
    if not used:
        return
    names = ", ".join(used)
    fix = (
        "set `trio_mode = true` in your pytest configuration ([tool.pytest.ini_options] "
        "in pyproject.toml, or [pytest] in pytest.ini) or mark the test with "
        "`@pytest.mark.trio`"
    )
    if not inspect.iscoroutinefunction(getattr(item, "obj", None)):
        fix = f"make it an `async def` test, then {fix}"
    if not item.config.pluginmanager.hasplugin("trio"):
        fix = f"install pytest-trio (pip install pytest-trio), then {fix}"
    pytest.fail(
        f"{item.name} uses kallichore's async fixture(s) {names}, which only a trio test "
        f"can use (they need pytest-trio): {fix}.",
        pytrace=False,
    )


def _async_fixtures_used(item: pytest.Item) -> list[str]:
    """Which of :data:`ASYNC_FIXTURES` the test uses, directly or through other fixtures.

    A name the project redefined as a synchronous fixture does not count.
    """
    names = [n for n in ASYNC_FIXTURES if n in getattr(item, "fixturenames", ())]
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # pytest internals changed: trust the names
        return names
    return [
        name
        for name in names
        if any(
            inspect.iscoroutinefunction(d.func) or inspect.isasyncgenfunction(d.func)
            for d in info.name2fixturedefs.get(name, ())[-1:]
        )
    ]


# ------------------------------------------------------------------- config


@pytest.fixture
def kallichore_transport() -> str:
    """The transport ``kallichore_server`` listens on: ``"socket"`` or ``"tcp"``.

    Override by parametrizing it (``@pytest.mark.parametrize("kallichore_transport",
    ["tcp", "socket"])``) or by redefining this fixture in a ``conftest.py``.
    """
    return "tcp" if sys.platform == "win32" else "socket"


@pytest.fixture
def kallichore_server_config(kallichore_transport: str) -> Iterator[ServerConfig]:
    """The configuration ``kallichore_server`` serves.

    A fresh random token; for the socket transport, a private directory short
    enough for Unix socket paths, removed afterwards. Redefine this fixture to
    change anything else (``attrs.evolve`` on the value works well).
    """
    from kallichore.config import ServerConfig, Transport, generate_token

    transport = Transport(kallichore_transport)
    if transport is not Transport.SOCKET:
        yield ServerConfig(transport=transport, token=generate_token())
        return
    base = tempfile.gettempdir()
    if len(base) > _SHORT_DIR_LIMIT and os.path.isdir("/tmp"):
        base = "/tmp"
    directory = tempfile.mkdtemp(prefix="kcpt-", dir=base)
    try:
        yield ServerConfig(
            transport=transport,
            unix_socket=os.path.join(directory, "kc.sock"),
            socket_dir=directory,
            token=generate_token(),
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------- server, etc.


@pytest.fixture
async def kallichore_server(
    kallichore_server_config: ServerConfig,
) -> AsyncIterator[ServerAddress]:
    """A real kallichore server (REST + WebSocket) running inside the test.

    Runs :func:`kallichore.serve` as a task of the fixture; yields its
    :class:`~kallichore.server.ServerAddress` (``transport``, ``port`` or
    ``socket_path``, ``base_url``, ``token``).

    Teardown cancels the server, which stops every kernel (each through its
    bounded ladder), then verifies that no kernel process, nor anything left
    in a kernel's process group, is still alive.

    Errors:
        LeftoverKernelError: at teardown, when a kernel survived (it is
            killed first).
    """
    import trio

    from kallichore.server.root import Server, serve

    server = Server(kallichore_server_config)
    async with trio.open_nursery() as nursery:
        address: ServerAddress = await nursery.start(
            functools.partial(serve, kallichore_server_config, server=server)
        )
        try:
            yield address
        finally:
            kernels = _kernel_processes(s.process_id for s in server.registry.list())
            nursery.cancel_scope.cancel(reason="kallichore_server fixture teardown")
    await _check_gone(kernels, "kallichore_server")


@pytest.fixture
async def kallichore_supervisor() -> AsyncIterator[Supervisor]:
    """An in-process supervisor (:func:`kallichore.open_supervisor`), no HTTP.

    Teardown stops every kernel and verifies, as ``kallichore_server`` does,
    that none survived.

    Errors:
        LeftoverKernelError: at teardown, when a kernel survived.
    """
    from kallichore.embed import open_supervisor

    async with open_supervisor() as supervisor:
        try:
            yield supervisor
        finally:
            kernels = _kernel_processes(s.process_id for s in supervisor.sessions)
    await _check_gone(kernels, "kallichore_supervisor")


# ------------------------------------------------------------------ kernels


@pytest.fixture
def fake_kernel_argv() -> Callable[..., list[str]]:
    """A function building the command line of kallichore's fake kernel.

    ``fake_kernel_argv(*behaviours, welcome=False, registration_file=False)``
    takes the arguments of :func:`kallichore.testing.fake_kernel.fake_kernel_argv`
    and returns an argv with the ``{connection_file}`` placeholder. The fake
    kernel speaks the real wire protocol over ZeroMQ (execute echoes the code;
    ``sleep S``, ``flood N``, ``exit CODE`` script it) and can be told to
    misbehave; see that module.

    The argv makes sure the child can import kallichore even when it is not
    installed (a source checkout on ``sys.path`` only): it puts this
    package's parent directory on the child's ``sys.path``.
    """
    from kallichore.testing import fake_kernel

    # <root>/kallichore/testing/fake_kernel.py
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(fake_kernel.__file__))))
    bootstrap = (
        "import runpy, sys\n"
        f"root = {root!r}\n"
        "if root not in sys.path: sys.path.insert(0, root)\n"
        "runpy.run_module('kallichore.testing.fake_kernel', run_name='__main__', alter_sys=True)\n"
    )

    def build(
        *behaviours: str, welcome: bool = False, registration_file: bool = False
    ) -> list[str]:
        argv = fake_kernel.fake_kernel_argv(
            *behaviours, welcome=welcome, registration_file=registration_file
        )
        # argv = [python, "-m", "kallichore.testing.fake_kernel", *arguments]
        return [argv[0], "-c", bootstrap, *argv[3:]]

    return build


@pytest.fixture
def python_kernel_argv() -> list[str]:
    """The command line of an ipykernel in this interpreter (with ``{connection_file}``).

    Skips the test when ipykernel is not importable.
    """
    if importlib.util.find_spec("ipykernel") is None:
        pytest.skip("ipykernel is not installed (pip install ipykernel, or kallichore[test])")
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
async def python_kernel_session(
    kallichore_supervisor: Supervisor, python_kernel_argv: list[str], tmp_path: pathlib.Path
) -> AsyncIterator[Session]:
    """A started ipykernel session on ``kallichore_supervisor``, working in ``tmp_path``.

    Shut down (bounded) at teardown; skips when ipykernel is missing.
    """
    session = kallichore_supervisor.create_session(
        argv=python_kernel_argv,
        display_name="Python (pytest)",
        language="python",
        working_directory=str(tmp_path),
    )
    await session.start()
    try:
        yield session
    finally:
        import trio

        with trio.CancelScope(shield=True):
            await session.shutdown()


# ------------------------------------------------------------------- client


@pytest.fixture
async def kallichore_client(kallichore_server: ServerAddress) -> AsyncIterator[KallichoreClient]:
    """A :mod:`kallichore.client` client connected to ``kallichore_server``.

    Authenticated with the server's token, over the server's transport.
    Skips when the client library cannot be imported (it needs ``httpx``).
    """
    try:
        from kallichore.client import open_client
    except ImportError as exc:
        pytest.skip(f"kallichore.client is not usable here: {exc}")
    async with open_client(
        base_url=kallichore_server.base_url,
        socket_path=kallichore_server.socket_path,
        token=kallichore_server.token,
    ) as client:
        yield client


# ------------------------------------------------------------ leak checking


def _kernel_processes(pids: Iterable[int | None]) -> list[psutil.Process]:
    """The live processes of these kernels, with their descendants."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


def _survivors(kernels: list[psutil.Process], groups: set[int]) -> list[psutil.Process]:
    """Which of ``kernels`` still run, plus anything still in their process groups.

    ``psutil.Process.is_running`` compares creation times, so a recycled PID
    is not mistaken for a survivor. Kernels lead their own process groups, so
    a grandchild that escaped the tree snapshot is still found by its group.
    """
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in kernels:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
    if groups and hasattr(os, "getpgid"):
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if (
                    proc.pid not in found
                    and os.getpgid(proc.pid) in groups
                    and proc.status() != psutil.STATUS_ZOMBIE
                ):
                    found[proc.pid] = proc
    return list(found.values())


async def _check_gone(kernels: list[psutil.Process], owner: str) -> None:
    """Fail (after killing them) if any kernel process, or its group, is alive."""
    import psutil
    import trio

    groups = {p.pid for p in kernels if _leads_group(p)}
    # Polling: the survivors are not our children, there is nothing to wait on.
    with trio.move_on_after(KERNEL_EXIT_GRACE, shield=True):
        while _survivors(kernels, groups):  # noqa: ASYNC110
            await trio.sleep(0.05)
    survivors = _survivors(kernels, groups)
    if not survivors:
        return
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    described = ", ".join(f"{p.pid} ({' '.join(_cmdline(p))[:80]})" for p in survivors)
    raise LeftoverKernelError(f"{owner}: kernel processes survived teardown: {described}")


def _leads_group(proc: psutil.Process) -> bool:
    try:
        return hasattr(os, "getpgid") and os.getpgid(proc.pid) == proc.pid
    except OSError:
        return False


def _cmdline(proc: psutil.Process) -> list[str]:
    import psutil

    try:
        return list(proc.cmdline())
    except psutil.Error:
        return ["?"]
