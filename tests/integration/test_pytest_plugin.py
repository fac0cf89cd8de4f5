"""The pytest plugin, as a user's project meets it: a mini project run by pytest in a subprocess.

Each run is ``pytester.runpytest_subprocess`` in a scratch directory with its
own ini file and a root ``conftest.py`` that loads the plugin the way
docs/testing.md says (only when the entry point has not), so it works both
installed and from a bare checkout.
"""

from __future__ import annotations

import os

import pytest

from tests.support.paths import repo_python_path

pytest_plugins = ["pytester"]

#: Bound on one mini-project pytest run (imports trio and starts a supervisor).
RUN_TIMEOUT = 120.0  # seconds

CONFTEST = """
def pytest_configure(config):
    if not config.pluginmanager.has_plugin("kallichore"):
        config.pluginmanager.import_plugin("kallichore.pytest_plugin")
"""

TESTS = """
import pytest

async def test_unmarked_async(kallichore_supervisor):
    assert kallichore_supervisor.sessions == []

@pytest.mark.trio
async def test_marked(kallichore_supervisor):
    assert kallichore_supervisor.sessions == []

def test_sync_test(kallichore_supervisor):
    pass

@pytest.fixture
def through_a_fixture(kallichore_server):
    return kallichore_server

def test_sync_test_through_a_fixture(through_a_fixture):
    pass

def test_sync_fixture_only(fake_kernel_argv, kallichore_server_config):
    assert fake_kernel_argv()[0]
"""

HOW_TO = "*set `trio_mode = true` in your pytest configuration*or mark the test with*"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", repo_python_path(os.environ.get("PYTHONPATH")))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_mine=TESTS)
    return pytester


def test_without_trio_mode_only_marked_tests_may_use_async_fixtures(
    project: pytest.Pytester,
) -> None:
    project.makeini("[pytest]\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=2, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*test_unmarked_async uses kallichore's async fixture(s) kallichore_supervisor, "
            "which only a trio test can use (they need pytest-trio)*",
            HOW_TO,
        ]
    )
    result.stdout.fnmatch_lines(["*test_sync_test_through_a_fixture uses *kallichore_server,*"])
    result.stdout.no_fnmatch_line("*test_unmarked_async uses*make it an `async def` test*")
    # Our message, not pytest's nor pytest-trio's.
    result.stdout.no_fnmatch_line("*requested an async fixture*")
    result.stdout.no_fnmatch_line("*Trio fixtures can only be used by Trio tests*")


def test_with_trio_mode_async_tests_may_use_them(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\ntrio_mode = true\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    # A sync test still cannot, trio mode or not.
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        ["*test_sync_test uses *kallichore_supervisor*make it an `async def` test, then set*"]
    )


def test_without_pytest_trio_the_message_says_to_install_it(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\n")
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:trio", "-k", "unmarked", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*install pytest-trio (pip install pytest-trio), then set*"])
