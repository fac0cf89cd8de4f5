"""The session spec's one validator (kallichore/session/spec.py), without any event loop.

The REST route, ``kallichore.embed`` and the pytest fixtures all go through
:func:`validate_session_spec`, so these cases are what every entry point
refuses; the last tests check that the REST route's body mapping reaches the
same errors.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import pytest

from kallichore.api.routes import session_spec
from kallichore.errors import BadRequestError, ErrorCode, SessionSpecError
from kallichore.protocol.models import NewSession, VarAction, VarActionType
from kallichore.session.spec import (
    MAX_CONNECTION_TIMEOUT,
    MAX_SESSION_ID_CHARS,
    InterruptMode,
    SessionMode,
    SessionSpec,
    StartupEnvironment,
    validate_restart,
    validate_session_spec,
)


def found(argv0: str) -> str:
    """A kernel locator that finds everything."""
    return f"/usr/bin/{argv0}"


def missing(argv0: str) -> None:
    """A kernel locator that finds nothing."""
    return None


def make_spec(**overrides: Any) -> SessionSpec:
    fields: dict[str, Any] = {
        "session_id": "s1",
        "argv": ("python", "-f", "{connection_file}"),
        "display_name": "Python",
        "language": "python",
        "username": "tester",
        "input_prompt": ">>> ",
        "continuation_prompt": "... ",
        "session_mode": "console",
        "working_directory": "/tmp",
        "env": (("replace", "A", "1"),),
        "interrupt_mode": "message",
    }
    fields.update(overrides)
    return SessionSpec(**fields)


def refusal(spec: SessionSpec, *, allow_empty_argv: bool = True) -> SessionSpecError:
    """The error the validator raises for ``spec`` (fails if it raises none)."""
    with pytest.raises(SessionSpecError) as info:
        validate_session_spec(spec, locate_kernel=found, allow_empty_argv=allow_empty_argv)
    return info.value


# ------------------------------------------------------------------ enums


def test_enum_fields_take_members_or_wire_strings() -> None:
    spec = make_spec(
        interrupt_mode="signal", session_mode=SessionMode.NOTEBOOK, startup_environment="shell"
    )
    assert spec.interrupt_mode is InterruptMode.SIGNAL
    assert spec.session_mode is SessionMode.NOTEBOOK
    assert spec.startup_environment is StartupEnvironment.SHELL
    assert make_spec().startup_environment is StartupEnvironment.NONE


@pytest.mark.parametrize("field", ["interrupt_mode", "session_mode", "startup_environment"])
def test_an_unknown_enum_string_is_refused_when_the_spec_is_built(field: str) -> None:
    with pytest.raises(SessionSpecError, match=f"^{field} must be one of .*, not 'bogus'$"):
        make_spec(**{field: "bogus"})


# ------------------------------------------------------------ session ids


@pytest.mark.parametrize(
    ("session_id", "message"),
    [
        ("", "session_id must not be empty"),
        ("../x", "session_id must not contain '/', '\\' or control characters"),
        ("a/b", "session_id must not contain '/', '\\' or control characters"),
        ("a\\b", "session_id must not contain '/', '\\' or control characters"),
        ("a\x00b", "session_id must not contain '/', '\\' or control characters"),
        ("line\nbreak", "session_id must not contain '/', '\\' or control characters"),
        ("del\x7f", "session_id must not contain '/', '\\' or control characters"),
        ("x" * (MAX_SESSION_ID_CHARS + 1), "session_id is longer than 200 characters"),
    ],
)
def test_unusable_session_ids_are_refused(session_id: str, message: str) -> None:
    error = refusal(make_spec(session_id=session_id))
    assert error.message == message
    assert error.to_body() == {"code": "400", "message": message}
    assert error.http_status == 400


@pytest.mark.parametrize(
    "session_id", ["x" * MAX_SESSION_ID_CHARS, "python-3.12 (venv)", "ünïcødé-😀", "..", "a.b"]
)
def test_accepted_session_ids_stay_inside_one_file_name(session_id: str) -> None:
    validate_session_spec(
        make_spec(session_id=session_id), locate_kernel=found, allow_empty_argv=False
    )
    name = f"connection_{session_id}.json"
    assert os.path.basename(name) == name
    assert os.path.dirname(os.path.join("/run/kc", name)) == "/run/kc"


# ------------------------------------------------------------------- argv


def test_empty_argv_only_when_allowed() -> None:
    validate_session_spec(make_spec(argv=()), locate_kernel=missing, allow_empty_argv=True)
    error = refusal(make_spec(argv=()), allow_empty_argv=False)
    assert error.message == "argv must not be empty"


def test_argv_parts_are_strings_without_nul() -> None:
    assert refusal(make_spec(argv=("python", "a\x00b"))).message == (
        "argv[1] must not contain NUL characters"
    )
    error = refusal(make_spec(argv=("python", 3)))
    assert error.message == "argv[1] must be a string, not int"


def test_a_kernel_not_on_path_is_ks_19() -> None:
    spec = make_spec(argv=("definitely-not-a-binary", "-f", "x"))
    with pytest.raises(SessionSpecError) as info:
        validate_session_spec(spec, locate_kernel=missing, allow_empty_argv=False)
    assert info.value.code is ErrorCode.KERNEL_PATH_NOT_FOUND
    assert info.value.to_body() == {
        "code": "KS-19",
        "message": "Kernel path not found: definitely-not-a-binary",
    }
    assert info.value.http_status == 400


def test_the_lookup_is_asked_about_argv0_only() -> None:
    asked: list[str] = []

    def locate(argv0: str) -> str:
        asked.append(argv0)
        return argv0

    validate_session_spec(make_spec(), locate_kernel=locate, allow_empty_argv=False)
    validate_session_spec(make_spec(argv=()), locate_kernel=locate, allow_empty_argv=True)
    assert asked == ["python"]


# -------------------------------------------------------------------- env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ((("set", "A", "1"),), "env[0].action must be one of 'replace', 'append', 'prepend'"),
        ((("replace", "A", "1"), ("replace", "", "x")), "env[1].name must be a non-empty name"),
        ((("append", "A=B", "x"),), "env[0].name must be a non-empty name"),
        ((("prepend", "A\x00", "x"),), "env[0].name must be a non-empty name"),
        ((("replace", "A", "a\x00"),), "env[0].value must not contain NUL characters"),
    ],
)
def test_unusable_environment_actions_are_refused(
    env: tuple[tuple[str, str, str], ...], message: str
) -> None:
    assert refusal(make_spec(env=env)).message.startswith(message)


def test_every_environment_action_is_accepted() -> None:
    env = tuple((action.value, "PATH", ":/x") for action in VarActionType)
    validate_session_spec(make_spec(env=env), locate_kernel=found, allow_empty_argv=False)


# ------------------------------------------------- directory, startup arg


def test_working_directory_is_a_string_without_nul() -> None:
    assert refusal(make_spec(working_directory="/tmp/a\x00")).message == (
        "working_directory must not contain NUL characters"
    )
    error = refusal(make_spec(working_directory=b"/tmp"))
    assert error.message == "working_directory must be a string, not bytes"


def test_startup_environment_arg_without_nul() -> None:
    error = refusal(make_spec(startup_environment="command", startup_environment_arg="a\x00"))
    assert error.message == "startup_environment_arg must not contain NUL characters"


# --------------------------------------------------------------- timeout


@pytest.mark.parametrize("timeout", [0, 0.5, -1, MAX_CONNECTION_TIMEOUT + 1, math.nan, math.inf])
def test_connection_timeout_out_of_range_is_refused(timeout: float) -> None:
    error = refusal(make_spec(connection_timeout=timeout))
    assert error.message == "connection_timeout must be between 1 and 86400 seconds"


@pytest.mark.parametrize("timeout", [1, 1.5, 30.0, MAX_CONNECTION_TIMEOUT])
def test_connection_timeout_in_range_is_accepted(timeout: float) -> None:
    spec = make_spec(connection_timeout=timeout)
    validate_session_spec(spec, locate_kernel=found, allow_empty_argv=False)


# ----------------------------------------------------------------- order


def test_the_first_broken_rule_is_reported() -> None:
    """Same order as the REST API always had: id, argv, env, paths, KS-19, timeout."""
    spec = make_spec(session_id="", argv=("nope", "\x00"), connection_timeout=0)
    with pytest.raises(SessionSpecError, match="session_id"):
        validate_session_spec(spec, locate_kernel=missing, allow_empty_argv=False)
    spec = make_spec(argv=("nope",), connection_timeout=0)
    with pytest.raises(SessionSpecError) as info:
        validate_session_spec(spec, locate_kernel=missing, allow_empty_argv=False)
    assert info.value.code is ErrorCode.KERNEL_PATH_NOT_FOUND


# ---------------------------------------------------------------- restart


def test_restart_settings_follow_the_same_rules() -> None:
    validate_restart(None, None)
    validate_restart("/tmp", (("append", "PATH", ":/x"),))
    with pytest.raises(SessionSpecError, match=r"^env\[0\]\.name"):
        validate_restart(None, (("replace", "A=B", "x"),))
    with pytest.raises(SessionSpecError, match=r"^working_directory must not contain NUL"):
        validate_restart("/tmp\x00", None)


# --------------------------------------------------------------- the type


def test_the_error_is_a_bad_request_and_a_value_error() -> None:
    error = refusal(make_spec(session_id=""))
    assert isinstance(error, BadRequestError)
    assert isinstance(error, ValueError)
    assert str(error) == "session_id must not be empty"


# --------------------------------------------------- the REST body mapping


def new_session(**overrides: Any) -> NewSession:
    fields: dict[str, Any] = {
        "session_id": "rest",
        "display_name": "Python",
        "language": "python",
        "username": "tester",
        "input_prompt": ">>> ",
        "continuation_prompt": "... ",
        "argv": [sys.executable],
        "working_directory": "/tmp",
        "env": [],
        "interrupt_mode": InterruptMode.SIGNAL,
    }
    fields.update(overrides)
    return NewSession(**fields)


def test_the_rest_mapping_fills_defaults_and_keeps_enums() -> None:
    spec = session_spec(new_session(run_in_shell=True))
    assert spec.connection_timeout == 30.0
    assert spec.protocol_version == "5.3"
    assert spec.interrupt_mode is InterruptMode.SIGNAL
    assert spec.session_mode is SessionMode.CONSOLE
    assert spec.startup_environment is StartupEnvironment.SHELL


def test_the_rest_mapping_allows_an_empty_argv_for_adoption() -> None:
    assert session_spec(new_session(argv=[])).argv == ()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"session_id": "../x"}, "session_id must not contain"),
        ({"connection_timeout": 0}, "connection_timeout must be between 1 and 86400"),
        ({"env": [VarAction(VarActionType.REPLACE, "A=B", "x")]}, "env[0].name"),
        ({"argv": ["definitely-not-a-binary"]}, "Kernel path not found"),
    ],
)
def test_the_rest_mapping_refuses_with_the_validator(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(SessionSpecError) as info:
        session_spec(new_session(**overrides))
    assert message in info.value.message
