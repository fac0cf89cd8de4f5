"""Tier 1 (pure) tests for kallichore.supervisor.launch."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from kallichore.errors import ErrorCode, StartupError
from kallichore.supervisor import launch
from kallichore.supervisor.launch import (
    LaunchPlan,
    build_command,
    choose_shell,
    choose_working_directory,
    clean_startup_output,
    find_on_path,
    resolve_environment,
    shell_login_flag,
    startup_context_prefix,
    startup_failure_details,
    substitute_connection_file,
)

BEGIN = "KALLICHORE_STARTUP_BEGIN"
SUCCESS = "KALLICHORE_STARTUP_SUCCESS"
KERNEL = ["/opt/py/bin/python", "-m", "ipykernel", "-f", "/tmp/conn.json"]
KERNEL_STR = "exec /opt/py/bin/python -m ipykernel -f /tmp/conn.json"


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("base", "actions", "expected"),
    [
        ({}, [], {}),
        ({"A": "1"}, [("replace", "A", "2")], {"A": "2"}),
        ({}, [("replace", "A", "2")], {"A": "2"}),
        ({"PATH": "/usr/bin"}, [("append", "PATH", ":/x")], {"PATH": "/usr/bin:/x"}),
        # No separator is inserted, as in Kallichore.
        ({"PATH": "/usr/bin"}, [("append", "PATH", "/x")], {"PATH": "/usr/bin/x"}),
        ({"PATH": "/usr/bin"}, [("prepend", "PATH", "/x:")], {"PATH": "/x:/usr/bin"}),
        ({}, [("append", "NEW", "v")], {"NEW": "v"}),
        ({}, [("prepend", "NEW", "v")], {"NEW": "v"}),
        # Applied in order.
        (
            {"P": "b"},
            [
                ("prepend", "P", "a"),
                ("append", "P", "c"),
                ("replace", "Q", "1"),
                ("append", "Q", "2"),
            ],
            {"P": "abc", "Q": "12"},
        ),
        ({"P": "old"}, [("append", "P", "x"), ("replace", "P", "new")], {"P": "new"}),
    ],
)
def test_resolve_environment(
    base: dict[str, str], actions: list[tuple[str, str, str]], expected: dict[str, str]
) -> None:
    before = dict(base)
    assert resolve_environment(base, actions) == expected
    assert base == before  # not modified


def test_resolve_environment_rejects_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown environment action"):
        resolve_environment({}, [("delete", "A", "")])


# --------------------------------------------------------------------------- substitution


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], []),
        (["python", "-f", "{connection_file}"], ["python", "-f", "/c.json"]),
        (["--cf={connection_file}"], ["--cf=/c.json"]),
        (["{connection_file}:{connection_file}"], ["/c.json:/c.json"]),
        (["{log_file}", "{connection}"], ["{log_file}", "{connection}"]),
    ],
)
def test_substitute_connection_file(argv: list[str], expected: list[str]) -> None:
    assert substitute_connection_file(argv, "/c.json") == expected


# --------------------------------------------------------------------------- PATH lookup


@pytest.fixture
def path_tree(tmp_path: Path) -> Path:
    """``a/`` with nothing, ``b/python`` (file), ``b/bin/python`` (file),
    ``c/python`` (file), ``d/python`` (directory)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "bin").mkdir(parents=True)
    (tmp_path / "b" / "python").write_text("")
    (tmp_path / "b" / "bin" / "python").write_text("")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "python").write_text("")
    (tmp_path / "d" / "python").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    ("argv0", "dirs", "expected"),
    [
        ("python", ["a", "b", "c"], "b/python"),
        ("python", ["a", "c", "b"], "c/python"),
        ("python", ["a"], None),
        ("python", ["d", "c"], "c/python"),  # a directory is not a match
        ("python", ["", "c"], "c/python"),  # empty entries skipped
        ("bin/python", ["a", "b"], "b/bin/python"),  # relative with a slash: still PATH
        ("bin/python", ["c"], None),
        ("", ["b"], None),
    ],
)
def test_find_on_path(path_tree: Path, argv0: str, dirs: list[str], expected: str | None) -> None:
    path_env = os.pathsep.join(str(path_tree / d) if d else "" for d in dirs)
    found = find_on_path(argv0, path_env)
    assert found == (None if expected is None else str(path_tree / expected))


def test_find_on_path_absolute(path_tree: Path) -> None:
    assert find_on_path(str(path_tree / "b" / "python"), "") == str(path_tree / "b" / "python")
    assert find_on_path(str(path_tree / "a" / "python"), str(path_tree / "b")) is None
    assert find_on_path(str(path_tree / "d" / "python"), "") is None  # a directory


def test_find_on_path_never_uses_cwd(path_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path_tree / "b")
    assert find_on_path("python", str(path_tree / "a")) is None
    assert find_on_path("bin/python", "") is None


# --------------------------------------------------------------------------- shells


def test_choose_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "myshell"
    mine.write_text("")
    bash = tmp_path / "bash"
    sh = tmp_path / "sh"
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(launch, "FALLBACK_SHELLS", (str(bash), str(sh)))

    assert choose_shell(str(mine)) == str(mine)
    assert choose_shell(missing) is None
    assert choose_shell(None) is None
    sh.write_text("")
    assert choose_shell(missing) == str(sh)
    assert choose_shell("") == str(sh)
    bash.write_text("")
    assert choose_shell(missing) == str(bash)
    assert choose_shell(None) == str(bash)
    assert choose_shell(str(mine)) == str(mine)


@pytest.mark.parametrize(
    ("shell", "interactive", "flag"),
    [
        ("/bin/bash", False, "--login"),
        ("/usr/local/bin/zsh", False, "--login"),
        ("/bin/csh", False, "-d"),
        ("/bin/tcsh", False, "-d"),
        ("/bin/sh", False, "-l"),
        ("/bin/dash", False, "-l"),
        ("/usr/bin/fish", False, "-l"),
        ("/opt/weird/shell", False, "-l"),
        ("/bin/bash", True, "-i"),
        ("/bin/tcsh", True, "-i"),
        ("/bin/sh", True, "-i"),
    ],
)
def test_shell_login_flag(shell: str, interactive: bool, flag: str) -> None:
    assert shell_login_flag(shell, interactive) == flag


# --------------------------------------------------------------------------- build_command


@pytest.fixture
def shells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of fake shells (only their existence matters); no fallbacks."""
    for name in ("bash", "zsh", "sh", "csh", "tcsh"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(launch, "FALLBACK_SHELLS", ())
    monkeypatch.setattr(launch, "_platform", lambda: "linux")
    return tmp_path


def _build(
    mode: str,
    arg: str | None = None,
    *,
    shell: str | None = None,
    cwd: str = "/",
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> LaunchPlan:
    return build_command(
        KERNEL if argv is None else argv,
        startup_environment=mode,
        startup_arg=arg,
        working_directory=cwd,
        server_shell=shell,
        env={} if env is None else env,
    )


def test_none_mode_execs_directly(shells: Path) -> None:
    plan = _build("none", shell=str(shells / "bash"))
    assert plan == LaunchPlan(argv=tuple(KERNEL), shell=None, startup_arg=None, mode="none")
    # An argument is ignored (warning only).
    assert _build("none", "echo hi", shell=str(shells / "bash")).argv == tuple(KERNEL)


@pytest.mark.parametrize("mode", ["shell", "command", "script"])
def test_no_shell_available_execs_directly(shells: Path, mode: str) -> None:
    plan = _build(mode, None, shell=str(shells / "missing"))
    assert plan == LaunchPlan(argv=tuple(KERNEL), shell=None, startup_arg=None, mode="none")


def test_windows_execs_directly(shells: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "_platform", lambda: "win32")
    assert _build("shell", shell=str(shells / "bash")).argv == tuple(KERNEL)


@pytest.mark.parametrize(
    ("name", "flag"),
    [("bash", "--login"), ("zsh", "--login"), ("sh", "-l"), ("csh", "-d"), ("tcsh", "-d")],
)
def test_shell_mode(shells: Path, name: str, flag: str) -> None:
    shell = str(shells / name)
    plan = _build("shell", shell=shell)
    assert plan == LaunchPlan(
        argv=(shell, flag, "-c", KERNEL_STR), shell=shell, startup_arg=None, mode="shell"
    )


def test_shell_mode_with_arg_is_interactive(shells: Path) -> None:
    shell = str(shells / "bash")
    plan = _build("shell", "ignored", shell=shell)
    assert plan.argv == (shell, "-i", "-c", KERNEL_STR)
    assert plan.startup_arg is None


@pytest.mark.parametrize("mode", ["command", "script"])
@pytest.mark.parametrize("arg", [None, ""])
def test_command_or_script_without_arg_is_plain_shell(
    shells: Path, mode: str, arg: str | None
) -> None:
    shell = str(shells / "zsh")
    plan = _build(mode, arg, shell=shell)
    assert plan == LaunchPlan(
        argv=(shell, "--login", "-c", KERNEL_STR), shell=shell, startup_arg=None, mode="shell"
    )


def test_command_mode(shells: Path) -> None:
    shell = str(shells / "bash")
    plan = _build("command", "source ~/.venv/bin/activate && export X=1", shell=shell)
    expected = (
        f"echo '{BEGIN}' && {{ source ~/.venv/bin/activate && export X=1; }} && "
        f"echo '{SUCCESS}' && {KERNEL_STR}"
    )
    assert plan == LaunchPlan(
        argv=(shell, "-i", "-c", expected),
        shell=shell,
        startup_arg="source ~/.venv/bin/activate && export X=1",
        mode="command",
    )


def test_kernel_arguments_are_quoted(shells: Path) -> None:
    argv = ["/my dir/python", "-c", "print('hi'); x = $HOME", "it's"]
    plan = _build("shell", shell=str(shells / "sh"), argv=argv)
    script = plan.argv[3]
    assert script.startswith("exec ")
    assert shlex.split(script.removeprefix("exec ")) == argv


@pytest.mark.parametrize(
    ("name", "dot"),
    [("bash", "."), ("zsh", "."), ("sh", "."), ("csh", "source"), ("tcsh", "source")],
)
def test_script_mode(shells: Path, tmp_path: Path, name: str, dot: str) -> None:
    script = tmp_path / "my setup.sh"
    script.write_text("export A=1\n")
    shell = str(shells / name)
    for arg in (str(script), "my setup.sh"):  # absolute, and relative to the working directory
        plan = _build("script", arg, shell=shell, cwd=str(tmp_path))
        expected = (
            f"echo '{BEGIN}' && {{ {dot} {shlex.quote(str(script))}; }} && "
            f"echo '{SUCCESS}' && {KERNEL_STR}"
        )
        assert plan == LaunchPlan(
            argv=(shell, "-i", "-c", expected), shell=shell, startup_arg=arg, mode="script"
        )


def test_script_missing(shells: Path, tmp_path: Path) -> None:
    with pytest.raises(StartupError) as info:
        _build("script", "nope.sh", shell=str(shells / "bash"), cwd=str(tmp_path))
    err = info.value
    assert err.code is ErrorCode.PROCESS_START_FAILED
    assert err.message == (
        "Failed to start process for session: Startup script not found or cannot be read: "
        f"'{tmp_path / 'nope.sh'}' (No such file or directory (os error 2))"
    )
    assert err.exit_code is None


def test_script_not_a_file(shells: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(StartupError) as info:
        _build("script", str(tmp_path / "adir"), shell=str(shells / "bash"))
    assert info.value.code is ErrorCode.PROCESS_START_FAILED
    assert info.value.message == (
        "Failed to start process for session: Startup script path "
        f"'{tmp_path / 'adir'}' exists but is not a file"
    )


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_dyld_library_path(shells: Path, monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    monkeypatch.setattr(launch, "_platform", lambda: platform)
    env = {"DYLD_LIBRARY_PATH": "/opt/R lib"}
    script = _build("shell", shell=str(shells / "zsh"), env=env).argv[3]
    if platform == "darwin":
        assert script == f"DYLD_LIBRARY_PATH='/opt/R lib' {KERNEL_STR}"
    else:
        assert script == KERNEL_STR
    command = _build("command", "true", shell=str(shells / "zsh"), env=env).argv[3]
    assert command.endswith(
        f"&& DYLD_LIBRARY_PATH='/opt/R lib' {KERNEL_STR}"
        if platform == "darwin"
        else f"&& {KERNEL_STR}"
    )


def test_dyld_absent_on_darwin(shells: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "_platform", lambda: "darwin")
    assert _build("shell", shell=str(shells / "zsh"), env={"X": "1"}).argv[3] == KERNEL_STR


@pytest.mark.parametrize(("argv", "mode"), [([], "none"), (KERNEL, "login"), (KERNEL, "")])
def test_build_command_rejects_bad_input(shells: Path, argv: list[str], mode: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        _build(mode, argv=argv)


# --------------------------------------------------------------------------- failure details

CONNECT = "Kernel failed to connect to ZeroMQ sockets"
EXITED = "Kernel failed to start"
BOTH = f"{BEGIN}\nsetting up\n{SUCCESS}\nkernel died\n"
BEGIN_ONLY = f"{BEGIN}\nconda: not found\n"
NEITHER = "bash: bad option\n"


@pytest.mark.parametrize(
    ("mode", "shell", "arg", "output", "connect", "expected"),
    [
        # none / shell: the bare message, whatever the output says.
        ("none", None, None, NEITHER, True, CONNECT),
        ("none", None, None, NEITHER, False, EXITED),
        ("shell", "/bin/bash", None, BOTH, True, CONNECT),
        ("shell", "/bin/bash", None, NEITHER, False, EXITED),
        # command
        ("command", "/bin/bash", "conda activate", BOTH, True,
         f"Shell: /bin/bash\nStartup command: conda activate\n{CONNECT}"),
        ("command", "/bin/bash", "conda activate", BOTH, False,
         f"Shell: /bin/bash\nStartup command: conda activate\n{EXITED}"),
        ("command", "/bin/bash", "conda activate", BEGIN_ONLY, True,
         "Shell: /bin/bash\nStartup command: conda activate\nStartup command failed to execute"),
        ("command", "/bin/bash", "conda activate", BEGIN_ONLY, False,
         "Shell: /bin/bash\nStartup command: conda activate\nStartup command failed"),
        ("command", "/bin/bash", "conda activate", NEITHER, True,
         "Shell: /bin/bash\nStartup command: conda activate\nStartup command failed before execution"),
        ("command", "/bin/bash", "conda activate", NEITHER, False,
         "Shell: /bin/bash\nStartup command: conda activate\nStartup command could not be executed"),
        ("command", "/bin/bash", "x", SUCCESS + "\n", False,
         f"Shell: /bin/bash\nStartup command: x\n{EXITED}"),
        # script
        ("script", "/bin/zsh", "setup.sh", BOTH, True,
         f"Shell: /bin/zsh\nStartup script: setup.sh\n{CONNECT}"),
        ("script", "/bin/zsh", "setup.sh", BOTH, False,
         f"Shell: /bin/zsh\nStartup script: setup.sh\n{EXITED}"),
        ("script", "/bin/zsh", "setup.sh", BEGIN_ONLY, True,
         "Shell: /bin/zsh\nStartup script: setup.sh\nStartup script failed to execute"),
        ("script", "/bin/zsh", "setup.sh", BEGIN_ONLY, False,
         "Shell: /bin/zsh\nStartup script: setup.sh\nStartup script failed"),
        ("script", "/bin/zsh", "setup.sh", NEITHER, True,
         "Shell: /bin/zsh\nStartup script: setup.sh\nStartup script failed before execution"),
        ("script", "/bin/zsh", "setup.sh", "", False,
         "Shell: /bin/zsh\nStartup script: setup.sh\nStartup script could not be executed"),
        # Prefix lines only for what is known.
        ("command", None, "x", NEITHER, False, "Startup command: x\nStartup command could not be executed"),
        ("command", "/bin/sh", None, BOTH, False, f"Shell: /bin/sh\n{EXITED}"),
    ],
)  # fmt: skip
def test_startup_failure_details(
    mode: str, shell: str | None, arg: str | None, output: str, connect: bool, expected: str
) -> None:
    assert startup_failure_details(mode, shell, arg, output, connect_failure=connect) == expected


@pytest.mark.parametrize(
    ("mode", "shell", "arg", "expected"),
    [
        ("none", "/bin/sh", "x", ""),
        ("shell", "/bin/sh", "x", ""),
        ("command", "/bin/sh", "x", "Shell: /bin/sh\nStartup command: x\n"),
        ("script", "/bin/sh", "s.sh", "Shell: /bin/sh\nStartup script: s.sh\n"),
        ("command", None, None, ""),
    ],
)
def test_startup_context_prefix(
    mode: str, shell: str | None, arg: str | None, expected: str
) -> None:
    assert startup_context_prefix(mode, shell, arg) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("hello\n", "hello"),
        ("a\nb", "a\nb"),
        (f"{BEGIN}\nsetting up\n{SUCCESS}\nTraceback\nError\n", "setting up\nTraceback\nError"),
        (f"x {BEGIN} y\nkeep\n", "keep"),
        (f"{BEGIN}\n{SUCCESS}\n", ""),
        ("a\n\n", "a\n"),
        ("a\r\nb\r\n", "a\r\nb\r"),
    ],
)
def test_clean_startup_output(text: str, expected: str) -> None:
    assert clean_startup_output(text) == expected


# --------------------------------------------------------------------------- working directory


def test_choose_working_directory(tmp_path: Path) -> None:
    fallback = str(tmp_path / "fallback")
    good = tmp_path / "good"
    good.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("")

    assert choose_working_directory(str(good), fallback) == (str(good), None)

    cwd, warning = choose_working_directory("", fallback)
    assert cwd == fallback
    assert warning is not None
    assert fallback in warning

    cwd, warning = choose_working_directory(str(tmp_path / "missing"), fallback)
    assert cwd == fallback
    assert warning is not None
    assert "does not exist" in warning
    assert str(tmp_path / "missing") in warning

    cwd, warning = choose_working_directory(str(afile), fallback)
    assert cwd == fallback
    assert warning is not None
    assert "is not a directory" in warning


def test_choose_working_directory_no_tilde_expansion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cwd, warning = choose_working_directory("~", "/")
    assert cwd == "/"
    assert warning is not None
