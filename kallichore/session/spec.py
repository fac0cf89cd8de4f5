"""What a session is created with, and the one place its rules are checked.

Theory of operation
-------------------
Every way of creating a session -- ``PUT /sessions`` (:mod:`kallichore.api.routes`),
:meth:`kallichore.embed.Supervisor.create_session`, and the pytest fixtures
built on it (:mod:`kallichore.pytest_plugin`) -- turns its own input into a
:class:`SessionSpec` and hands it to :func:`validate_session_spec` before the
registry sees it. Restarts that bring a new working directory or environment
go through :func:`validate_restart`, which applies the same rules to those two
fields. So a rule lives here once, and a caller in process is refused exactly
what a REST client is refused, with the same code and message.

The rules, in the order they are checked (the first broken one is reported):

==========================  =====================================================
field                       rule
==========================  =====================================================
``session_id``              non-empty, at most :data:`MAX_SESSION_ID_CHARS`, no
                            ``/``, ``\\`` or control characters: it becomes a URL
                            path segment and part of file names (the connection
                            and registration files)
``argv``                    strings without NUL; ``argv[0]`` found on the
                            server's ``PATH`` (``KS-19``); empty only for a
                            session made to be adopted (REST allows that)
``env``                     actions ``replace``/``append``/``prepend``; names
                            non-empty without ``=`` or NUL; values without NUL
``working_directory``       a string without NUL (whether it is a directory is
                            checked at start, where a missing one is a warning)
``startup_environment_arg`` no NUL
``connection_timeout``      between 1 and :data:`MAX_CONNECTION_TIMEOUT` seconds
==========================  =====================================================

The closed sets (``interrupt_mode``, ``session_mode``,
``startup_environment``) are enums. The spec accepts their wire strings too
and converts them when it is built; an unknown string is refused there with
the same error type.

Everything here is pure: no I/O except through the ``locate_kernel`` callable
the caller passes in (the supervisor's ``PATH`` lookup).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from kallichore.errors import ErrorCode, SessionSpecError
from kallichore.protocol.models import InterruptMode, SessionMode, StartupEnvironment, VarActionType

__all__ = [
    "DEFAULT_CONNECTION_TIMEOUT",
    "DEFAULT_PROTOCOL_VERSION",
    "MAX_CONNECTION_TIMEOUT",
    "MAX_SESSION_ID_CHARS",
    "EnvTriple",
    "InterruptMode",
    "KernelLocator",
    "SessionMode",
    "SessionSpec",
    "StartupEnvironment",
    "check_env_actions",
    "check_session_id",
    "validate_restart",
    "validate_session_spec",
]

#: Longest session id (``maxLength`` of ``newSession.session_id``).
MAX_SESSION_ID_CHARS = 200  # characters
#: Bounds on a session's ``connection_timeout``.
MAX_CONNECTION_TIMEOUT = 24 * 3600  # seconds
MIN_CONNECTION_TIMEOUT = 1  # seconds
DEFAULT_CONNECTION_TIMEOUT = 30.0  # seconds
DEFAULT_PROTOCOL_VERSION = "5.3"

#: One environment change: ``(action, name, value)``, action a :class:`VarActionType` value.
EnvTriple = tuple[str, str, str]
#: Finds a kernel's ``argv[0]``: its path, or ``None`` when there is none.
KernelLocator = Callable[[str], str | None]

_ENV_ACTIONS = tuple(action.value for action in VarActionType)
_E = TypeVar("_E", bound=enum.Enum)


def _member(kind: type[_E], value: _E | str, field: str) -> _E:
    """``value`` as a member of ``kind``; its wire string is accepted too."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise SessionSpecError(f"{field} must be one of {choices}, not {value!r}") from None


def _interrupt_mode(value: InterruptMode | str) -> InterruptMode:
    return _member(InterruptMode, value, "interrupt_mode")


def _session_mode(value: SessionMode | str) -> SessionMode:
    return _member(SessionMode, value, "session_mode")


def _startup_environment(value: StartupEnvironment | str) -> StartupEnvironment:
    return _member(StartupEnvironment, value, "startup_environment")


@attrs.frozen(kw_only=True)
class SessionSpec:
    """What a session is created with: the fields of the REST API's ``newSession``.

    Building one converts the enum fields (members or their wire strings) and
    checks nothing else; :func:`validate_session_spec` checks the rest.

    Errors:
        kallichore.errors.SessionSpecError: an unknown ``interrupt_mode``,
            ``session_mode`` or ``startup_environment``.
    """

    session_id: str
    argv: tuple[str, ...]
    display_name: str
    language: str
    username: str
    input_prompt: str
    continuation_prompt: str
    session_mode: SessionMode = attrs.field(converter=_session_mode)
    working_directory: str
    env: tuple[EnvTriple, ...]
    interrupt_mode: InterruptMode = attrs.field(converter=_interrupt_mode)
    startup_environment: StartupEnvironment = attrs.field(
        default=StartupEnvironment.NONE, converter=_startup_environment
    )
    startup_environment_arg: str | None = None
    notebook_uri: str | None = None
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    protocol_version: str = DEFAULT_PROTOCOL_VERSION


def validate_session_spec(
    spec: SessionSpec, *, locate_kernel: KernelLocator, allow_empty_argv: bool
) -> None:
    """Check every rule of a new session (the table in this module's docstring).

    Args:
        spec: the session to be created.
        locate_kernel: finds ``argv[0]`` (the supervisor's ``PATH`` lookup).
        allow_empty_argv: whether a session without a command is acceptable
            (the REST API creates such sessions to adopt a running kernel).

    Errors:
        kallichore.errors.SessionSpecError: the first rule broken; ``KS-19``
            when ``argv[0]`` is not found, 400 for everything else.
    """
    check_session_id(spec.session_id)
    _check_argv(spec.argv, allow_empty=allow_empty_argv)
    check_env_actions("env", spec.env)
    _check_path("working_directory", spec.working_directory)
    _check_text("startup_environment_arg", spec.startup_environment_arg)
    if spec.argv and locate_kernel(spec.argv[0]) is None:
        raise SessionSpecError(
            f"Kernel path not found: {spec.argv[0]}", code=ErrorCode.KERNEL_PATH_NOT_FOUND
        )
    timeout = spec.connection_timeout
    if not MIN_CONNECTION_TIMEOUT <= timeout <= MAX_CONNECTION_TIMEOUT:
        raise SessionSpecError(
            f"connection_timeout must be between {MIN_CONNECTION_TIMEOUT} and "
            f"{MAX_CONNECTION_TIMEOUT} seconds"
        )


def validate_restart(working_directory: str | None, env: Sequence[EnvTriple] | None) -> None:
    """Check a restart's new working directory and environment, as at creation.

    Errors:
        kallichore.errors.SessionSpecError: an unusable environment action or
            a NUL character in the working directory.
    """
    check_env_actions("env", env)
    if working_directory is not None:
        _check_path("working_directory", working_directory)


def check_session_id(session_id: str) -> None:
    """A session id must be usable in a URL path segment and a file name.

    Errors:
        kallichore.errors.SessionSpecError: it is not.
    """
    if not isinstance(session_id, str):
        raise SessionSpecError("session_id must be a string")
    if not session_id:
        raise SessionSpecError("session_id must not be empty")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise SessionSpecError(f"session_id is longer than {MAX_SESSION_ID_CHARS} characters")
    if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in session_id):
        raise SessionSpecError("session_id must not contain '/', '\\' or control characters")


def check_env_actions(field: str, actions: Sequence[EnvTriple] | None) -> None:
    """Reject environment actions no process environment can hold.

    Errors:
        kallichore.errors.SessionSpecError: names the first bad entry as
            ``<field>[<index>].<part>``.
    """
    for index, (action, name, value) in enumerate(actions or ()):
        if action not in _ENV_ACTIONS:
            choices = ", ".join(repr(a) for a in _ENV_ACTIONS)
            raise SessionSpecError(f"{field}[{index}].action must be one of {choices}")
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            raise SessionSpecError(
                f"{field}[{index}].name must be a non-empty name without '=' or NUL characters"
            )
        _check_text(f"{field}[{index}].value", value)


def _check_argv(argv: Sequence[str], *, allow_empty: bool) -> None:
    if not argv and not allow_empty:
        raise SessionSpecError("argv must not be empty")
    for index, arg in enumerate(argv):
        _check_text(f"argv[{index}]", arg)


def _check_path(field: str, value: str) -> None:
    if not isinstance(value, str):
        raise SessionSpecError(f"{field} must be a string, not {type(value).__name__}")
    _check_text(field, value)


def _check_text(field: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise SessionSpecError(f"{field} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise SessionSpecError(f"{field} must not contain NUL characters")
