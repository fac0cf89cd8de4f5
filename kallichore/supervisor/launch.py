"""Building the command line for a kernel start (pure: no trio, no I/O beyond ``stat``).

Theory of operation
-------------------

A kernel start turns the session's ``argv``, ``env`` actions and
``startup_environment`` into a :class:`LaunchPlan`, which
:func:`kallichore.supervisor.process.spawn_kernel_process` then runs:

1. :func:`resolve_environment` applies the session's ``(action, name, value)``
   triples to a copy of the server's environment.
2. :func:`substitute_connection_file` puts the connection (or registration)
   file path into every ``{connection_file}`` placeholder.
3. :func:`choose_working_directory` picks the child's cwd, falling back (with a
   warning) when the requested directory is unusable.
4. :func:`build_command` either execs ``argv`` directly (``none``) or wraps it
   in a login shell (``shell``/``command``/``script``)::

       [<shell>, <flag>, "-c", "<prelude> && exec <kernel command>"]

   Unlike Kallichore, the kernel part is prefixed with ``exec``, so the kernel
   *replaces* the wrapping shell: the PID we track and the signals we send
   (interrupt, SIGTERM) reach the kernel itself, not a shell waiting on it
   (a wrapping shell that stays in between would swallow signals).
5. If the start fails, :func:`startup_failure_details` and
   :func:`clean_startup_output` produce the ``details`` and ``output`` of the
   ``startupError`` body. The ``command`` and
   ``script`` preludes echo two markers around the user's step, so the captured
   output tells whether the shell, the startup step, or the kernel failed.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from collections.abc import Mapping, Sequence

import attrs

from kallichore.errors import ErrorCode, StartupError

__all__ = [
    "CONNECTION_FILE_PLACEHOLDER",
    "FALLBACK_SHELLS",
    "STARTUP_BEGIN_MARKER",
    "STARTUP_MODES",
    "STARTUP_SUCCESS_MARKER",
    "LaunchPlan",
    "build_command",
    "choose_shell",
    "choose_working_directory",
    "clean_startup_output",
    "find_kernel",
    "find_on_path",
    "resolve_directory",
    "resolve_environment",
    "shell_login_flag",
    "startup_context_prefix",
    "startup_failure_details",
    "substitute_connection_file",
]

logger = logging.getLogger(__name__)

#: The one placeholder the server substitutes in ``argv`` (others, such as
#: ``{log_file}``, are filled in by the client before ``PUT /sessions``).
CONNECTION_FILE_PLACEHOLDER = "{connection_file}"

#: Echoed before the startup command/script runs.
STARTUP_BEGIN_MARKER = "KALLICHORE_STARTUP_BEGIN"
#: Echoed after the startup command/script succeeded, just before the kernel.
STARTUP_SUCCESS_MARKER = "KALLICHORE_STARTUP_SUCCESS"

#: Values of ``startup_environment`` (the spec's ``StartupEnvironment``).
STARTUP_MODES = frozenset({"none", "shell", "command", "script"})

#: Shells tried, in order, when the server's ``$SHELL`` does not exist.
FALLBACK_SHELLS: tuple[str, ...] = ("/bin/bash", "/bin/sh")

# Shell basenames and the flag that makes them a login shell.
_LOGIN_FLAGS: dict[str, str] = {"bash": "--login", "zsh": "--login", "csh": "-d", "tcsh": "-d"}
_DEFAULT_LOGIN_FLAG = "-l"
_INTERACTIVE_FLAG = "-i"
# csh-family shells have no ``.`` builtin; they spell it ``source``.
_CSH_SHELLS = frozenset({"csh", "tcsh"})

_ENV_ACTIONS = frozenset({"replace", "append", "prepend"})
_ERROR_PREFIX = "Failed to start process for session: "

_CONNECT_FAILURE = "Kernel failed to connect to ZeroMQ sockets"
_EXIT_FAILURE = "Kernel failed to start"


def _platform() -> str:
    """``sys.platform``, behind a function so tests can pretend to be macOS."""
    return sys.platform


@attrs.frozen
class LaunchPlan:
    """What to execute for one kernel start.

    Attributes:
        argv: the command line to spawn (the kernel's own, or a shell wrapping it).
        shell: the wrapping shell, or ``None`` when ``argv`` is the kernel's.
        startup_arg: the startup command or script *as given*, when it is part
            of the command line; ``None`` otherwise.
        mode: the startup mode actually used, which can differ from the one
            requested: ``"none"`` when no shell was available (or on Windows),
            ``"shell"`` when ``command``/``script`` came without an argument.
            Pass it to :func:`startup_failure_details`.
    """

    argv: tuple[str, ...]
    shell: str | None
    startup_arg: str | None
    mode: str


def resolve_environment(
    base: Mapping[str, str], actions: Sequence[tuple[str, str, str]]
) -> dict[str, str]:
    """Apply a session's environment actions, in order, to a copy of ``base``.

    ``replace`` sets the variable; ``append`` and ``prepend`` concatenate the
    value after/before the existing one (the empty string when unset). As in
    Kallichore, **no separator is inserted**: to extend ``PATH`` the client
    must send ``":/extra/bin"`` itself.

    Args:
        base: the starting environment (normally the server's ``os.environ``);
            not modified.
        actions: ``(action, name, value)`` triples, action one of
            ``replace``/``append``/``prepend``.

    Returns:
        The child's complete environment.

    Raises:
        ValueError: an unknown action (the API layer validates them earlier).
    """
    env = dict(base)
    for action, name, value in actions:
        if action == "replace":
            env[name] = value
        elif action == "append":
            env[name] = env.get(name, "") + value
        elif action == "prepend":
            env[name] = value + env.get(name, "")
        else:
            raise ValueError(f"unknown environment action {action!r} for {name!r}")
    return env


def substitute_connection_file(argv: Sequence[str], path: str) -> list[str]:
    """Replace every ``{connection_file}`` substring, in every element, by ``path``."""
    return [arg.replace(CONNECTION_FILE_PLACEHOLDER, path) for arg in argv]


def find_on_path(argv0: str, path_env: str) -> str | None:
    """Locate a kernel executable the way Kallichore does.

    An absolute ``argv0`` is returned if it is an existing regular file. Any
    other ``argv0`` -- even one containing a slash, such as ``bin/python`` -- is
    joined onto each ``PATH`` directory in turn; it is never resolved against
    the current directory (empty ``PATH`` entries, which mean "cwd" to a
    shell, are skipped). The executable bit is not checked.

    Args:
        argv0: the kernel's ``argv[0]``.
        path_env: a ``PATH`` value (``os.pathsep``-separated).

    Returns:
        The path of the first existing regular file, or ``None``.
    """
    if not argv0:
        return None
    if os.path.isabs(argv0):
        return argv0 if os.path.isfile(argv0) else None
    for directory in path_env.split(os.pathsep):
        if not directory:
            continue
        candidate = os.path.join(directory, argv0)
        if os.path.isfile(candidate):
            return candidate
    return None


def find_kernel(argv0: str) -> str | None:
    """:func:`find_on_path` against this process's ``PATH`` (a session spec's kernel lookup)."""
    return find_on_path(argv0, os.environ.get("PATH", ""))


def choose_shell(server_shell: str | None) -> str | None:
    """The shell that wraps kernels: the server's ``$SHELL`` if that path exists,
    else the first existing entry of :data:`FALLBACK_SHELLS`, else ``None``."""
    if server_shell and os.path.exists(server_shell):
        return server_shell
    for candidate in FALLBACK_SHELLS:
        if os.path.exists(candidate):
            return candidate
    return None


def shell_login_flag(shell: str, interactive: bool) -> str:
    """The flag placed before ``-c``.

    ``-i`` when ``interactive`` (a startup argument was given, in any mode);
    otherwise the login flag for the shell's basename: ``--login`` for bash and
    zsh, ``-d`` for csh and tcsh, ``-l`` for everything else (sh, dash, ksh,
    fish, unknown shells).
    """
    if interactive:
        return _INTERACTIVE_FLAG
    return _LOGIN_FLAGS.get(os.path.basename(shell), _DEFAULT_LOGIN_FLAG)


def _resolve_script(script: str, working_directory: str) -> str:
    """The absolute script path, checked to be a regular file.

    Raises:
        StartupError: (``PROCESS_START_FAILED``) missing, unreadable, or not a file.
    """
    path = script if os.path.isabs(script) else os.path.join(working_directory, script)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        # Worded like Rust's io::Error, so messages match Kallichore's.
        reason = f"{exc.strerror} (os error {exc.errno})"
        raise StartupError(
            ErrorCode.PROCESS_START_FAILED,
            f"{_ERROR_PREFIX}Startup script not found or cannot be read: '{path}' ({reason})",
        ) from exc
    if not stat.S_ISREG(mode):
        raise StartupError(
            ErrorCode.PROCESS_START_FAILED,
            f"{_ERROR_PREFIX}Startup script path '{path}' exists but is not a file",
        )
    return path


def build_command(
    argv: Sequence[str],
    *,
    startup_environment: str,
    startup_arg: str | None,
    working_directory: str,
    server_shell: str | None,
    env: Mapping[str, str],
) -> LaunchPlan:
    """Decide what to execute for a kernel start.

    Rules (Kallichore's, plus ``exec``):

    * ``none``, no shell available, or Windows: ``argv`` as is.
    * ``shell``: ``[shell, flag, "-c", "exec <kernel>"]``.
    * ``command`` with an argument::

          echo 'KALLICHORE_STARTUP_BEGIN' && { <arg>; } &&
          echo 'KALLICHORE_STARTUP_SUCCESS' && exec <kernel>

      (one line; ``<arg>`` inserted verbatim).
    * ``script`` with an argument: as ``command`` with ``{ . '<path>'; }``
      (``source`` for csh/tcsh), where ``<path>`` is the argument, made
      absolute against ``working_directory``.
    * ``command``/``script`` without an argument: as ``shell`` (warning).

    ``<kernel>`` is ``shlex.join(argv)``; on macOS a ``DYLD_LIBRARY_PATH`` in
    ``env`` is re-exported on the command line (``DYLD_LIBRARY_PATH=<q> exec …``)
    because SIP strips it from the environment of system shells. The shell flag
    is ``-i`` whenever ``startup_arg`` is non-empty, else the login flag
    (:func:`shell_login_flag`).

    Args:
        argv: the kernel command line, placeholders already substituted; non-empty.
        startup_environment: ``"none"``, ``"shell"``, ``"command"`` or ``"script"``.
        startup_arg: the startup command or script path, if any (empty = none).
        working_directory: the directory the kernel will run in; relative
            script paths are resolved against it.
        server_shell: the server's ``$SHELL`` (may be ``None``).
        env: the kernel's resolved environment (only ``DYLD_LIBRARY_PATH`` is read).

    Returns:
        The plan; ``plan.mode`` is the mode actually used.

    Raises:
        ValueError: empty ``argv`` or an unknown ``startup_environment``.
        StartupError: (``PROCESS_START_FAILED``) ``script`` mode and the
            script does not exist, cannot be read, or is not a regular file.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if startup_environment not in STARTUP_MODES:
        raise ValueError(f"unknown startup_environment {startup_environment!r}")
    arg = startup_arg or None
    shell = _wrapping_shell(startup_environment, arg, server_shell)
    if shell is None:
        return LaunchPlan(argv=tuple(argv), shell=None, startup_arg=None, mode="none")
    kernel = _kernel_exec_line(argv, env)
    mode, script_text, used_arg = _shell_script(
        startup_environment, arg, kernel, shell=shell, working_directory=working_directory
    )
    flag = shell_login_flag(shell, interactive=arg is not None)
    return LaunchPlan(
        argv=(shell, flag, "-c", script_text), shell=shell, startup_arg=used_arg, mode=mode
    )


def _wrapping_shell(
    startup_environment: str, arg: str | None, server_shell: str | None
) -> str | None:
    """The shell to start the kernel through, or ``None`` to start it directly
    (``none`` mode, Windows, or no usable shell; each but the first logged)."""
    if startup_environment == "none":
        if arg is not None:
            logger.warning("startup_environment_arg %r ignored in 'none' mode", arg)
        return None
    if _platform() == "win32":
        logger.warning("startup_environment %r is not supported on Windows", startup_environment)
        return None
    shell = choose_shell(server_shell)
    if shell is None:
        logger.warning(
            "no usable shell ($SHELL=%r, fallbacks %s); starting the kernel directly",
            server_shell,
            ", ".join(FALLBACK_SHELLS),
        )
    return shell


def _kernel_exec_line(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """``exec <kernel>`` for a shell, re-exporting ``DYLD_LIBRARY_PATH`` on macOS
    (SIP strips it from the environment of system shells)."""
    kernel = "exec " + shlex.join(argv)
    dyld = env.get("DYLD_LIBRARY_PATH")
    if _platform() == "darwin" and dyld is not None:
        kernel = f"DYLD_LIBRARY_PATH={shlex.quote(dyld)} {kernel}"
    return kernel


def _shell_script(
    startup_environment: str,
    arg: str | None,
    kernel: str,
    *,
    shell: str,
    working_directory: str,
) -> tuple[str, str, str | None]:
    """What the shell runs with ``-c``: ``(mode used, script, startup_arg used)``.

    Raises:
        StartupError: ``script`` mode and the script is missing or not a file.
    """
    mode = startup_environment
    if mode in ("command", "script") and arg is None:
        logger.warning("startup_environment %r without an argument; using a plain shell", mode)
        mode = "shell"
    if mode == "shell":
        if arg is not None:
            logger.warning("startup_environment_arg %r only makes the shell interactive", arg)
        return mode, kernel, None
    assert arg is not None
    if mode == "command":
        step = arg
    else:
        path = _resolve_script(arg, working_directory)
        dot = "source" if os.path.basename(shell) in _CSH_SHELLS else "."
        step = f"{dot} {shlex.quote(path)}"
    script_text = (
        f"echo '{STARTUP_BEGIN_MARKER}' && {{ {step}; }} && "
        f"echo '{STARTUP_SUCCESS_MARKER}' && {kernel}"
    )
    return mode, script_text, arg


def startup_context_prefix(mode: str, shell: str | None, startup_arg: str | None) -> str:
    """The ``Shell: …\\n`` / ``Startup command: …\\n`` lines that open a failure's details.

    Empty in ``none`` and ``shell`` modes. Also used for the "exited during
    the JEP 66 handshake" details.
    """
    if mode not in ("command", "script"):
        return ""
    prefix = f"Shell: {shell}\n" if shell else ""
    if startup_arg:
        label = "Startup command" if mode == "command" else "Startup script"
        prefix += f"{label}: {startup_arg}\n"
    return prefix


def startup_failure_details(
    mode: str,
    shell: str | None,
    startup_arg: str | None,
    output: str,
    *,
    connect_failure: bool,
) -> str:
    """The ``details`` of a failed start (the ``startupError`` body).

    In ``command``/``script`` mode the markers in the raw ``output`` say how far
    the shell got: with the success marker the kernel itself failed; with only
    the begin marker the startup step failed; with neither the shell never ran
    it. (Kallichore requires both markers for "kernel failed"; the success
    marker alone is treated the same here, as it can only follow the begin.)

    Args:
        mode: ``LaunchPlan.mode``.
        shell: ``LaunchPlan.shell``.
        startup_arg: ``LaunchPlan.startup_arg``.
        output: the captured output, *before* :func:`clean_startup_output`.
        connect_failure: ``True`` for a ZeroMQ connect failure or timeout,
            ``False`` for an abnormal exit.

    Returns:
        The details string.
    """
    if mode not in ("command", "script"):
        return _CONNECT_FAILURE if connect_failure else _EXIT_FAILURE
    what = "Startup command" if mode == "command" else "Startup script"
    if STARTUP_SUCCESS_MARKER in output:
        tail = _CONNECT_FAILURE if connect_failure else _EXIT_FAILURE
    elif STARTUP_BEGIN_MARKER in output:
        tail = f"{what} failed to execute" if connect_failure else f"{what} failed"
    else:
        tail = (
            f"{what} failed before execution"
            if connect_failure
            else f"{what} could not be executed"
        )
    return startup_context_prefix(mode, shell, startup_arg) + tail


def clean_startup_output(text: str) -> str:
    """Captured output without the marker lines, lines joined by ``\\n``, no
    trailing newline. Lines are split on ``\\n`` only (``\\r`` is kept)."""
    lines = [
        line
        for line in text.split("\n")
        if STARTUP_BEGIN_MARKER not in line and STARTUP_SUCCESS_MARKER not in line
    ]
    cleaned = "\n".join(lines)
    return cleaned.removesuffix("\n")


def resolve_directory(path: str) -> str | None:
    """``~``-expanded, canonical ``path`` if it is a directory, else ``None``."""
    resolved = os.path.expanduser(path)
    return os.path.realpath(resolved) if os.path.isdir(resolved) else None


def choose_working_directory(requested: str, fallback: str) -> tuple[str, str | None]:
    """The kernel's cwd: ``requested`` if it is a non-empty existing directory.

    No ``~`` expansion is done (Kallichore expands only on restart).

    Args:
        requested: the session's ``working_directory``.
        fallback: the directory to use otherwise (normally the server's cwd).

    Returns:
        ``(cwd, warning)``; ``warning`` is ``None`` when ``requested`` was used.
    """
    if requested and os.path.isdir(requested):
        return requested, None
    if not requested:
        return fallback, f"No working directory requested; using '{fallback}'"
    reason = "is not a directory" if os.path.exists(requested) else "does not exist"
    return fallback, f"Working directory '{requested}' {reason}; using '{fallback}'"
