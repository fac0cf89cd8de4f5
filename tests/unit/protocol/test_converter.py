"""The REST models and their one converter: strict JSON types, Kallichore's error wording."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from kallichore.errors import BadRequestError
from kallichore.protocol.converter import (
    format_timestamp,
    parse_body,
    to_json_bytes,
    unstructure,
)
from kallichore.protocol.models import (
    InterruptMode,
    LogLevel,
    NewSession,
    ServerConfiguration,
    SessionMode,
    VarAction,
    VarActionType,
)


def new_session(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "session_id": "s1",
        "display_name": "Python",
        "language": "python",
        "username": "u",
        "input_prompt": ">",
        "continuation_prompt": "+",
        "argv": ["python", "-m", "ipykernel", "-f", "{connection_file}"],
        "working_directory": "/",
        "env": [{"action": "replace", "name": "A", "value": "1"}],
        "interrupt_mode": "signal",
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def reason(data: bytes, model: type[Any]) -> str:
    with pytest.raises(BadRequestError) as info:
        parse_body(data, model)
    return str(info.value)


def test_a_full_body_becomes_the_model_with_enums_and_defaults() -> None:
    session = parse_body(new_session(), NewSession)
    assert session.interrupt_mode is InterruptMode.SIGNAL
    assert session.session_mode is SessionMode.CONSOLE  # the schema's default
    assert session.env == [VarAction(VarActionType.REPLACE, "A", "1")]
    assert session.connection_timeout is None


def test_unknown_fields_are_ignored_and_null_means_absent() -> None:
    body = new_session(workspace_id="w", run_in_shell=None, notebook_uri=None)
    session = parse_body(body, NewSession)
    assert session.run_in_shell is None
    assert session.notebook_uri is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", "expected an integer @ $.idle_shutdown_hours"),
        (5.0, "expected an integer"),
        (True, "expected an integer"),
        (2.0**70, "expected an integer that fits in 64 bits"),
    ],
)
def test_integers_are_not_coerced(value: Any, expected: str) -> None:
    data = json.dumps({"idle_shutdown_hours": value}).encode()
    message = reason(data, ServerConfiguration)
    assert message.startswith(
        "Couldn't parse body parameter ServerConfiguration - doesn't match schema: "
    )
    assert expected in message


def test_an_enum_names_its_allowed_values() -> None:
    message = reason(json.dumps({"log_level": "loud"}).encode(), ServerConfiguration)
    assert "expected one of 'trace', 'debug', 'info', 'warn', 'error'" in message
    assert "@ $.log_level" in message
    assert parse_body(b'{"log_level": "debug"}', ServerConfiguration).log_level is LogLevel.DEBUG


def test_a_list_must_be_a_json_array() -> None:
    assert "expected a JSON array @ $.argv" in reason(new_session(argv="python"), NewSession)
    assert "expected a string @ $.argv[1]" in reason(new_session(argv=["python", 3]), NewSession)


def test_a_missing_field_is_named() -> None:
    assert "required field missing @ $.language" in reason(new_session(language=...), NewSession)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "Missing required body parameter ServerConfiguration"),
        (b"  \n", "Missing required body parameter ServerConfiguration"),
        (b"null", "Missing required body parameter ServerConfiguration"),
        (b"{", "Couldn't parse body parameter ServerConfiguration - not valid JSON"),
        (b"[]", "doesn't match schema: expected a JSON object"),
    ],
)
def test_bodies_that_are_not_an_object(data: bytes, expected: str) -> None:
    assert expected in reason(data, ServerConfiguration)


def test_the_error_is_a_400() -> None:
    with pytest.raises(BadRequestError) as info:
        parse_body(b"", ServerConfiguration)
    assert info.value.http_status == 400


def test_unstructure_drops_the_models_none_fields_only() -> None:
    config = ServerConfiguration(idle_shutdown_hours=2, log_level=LogLevel.INFO)
    assert unstructure(config) == {"idle_shutdown_hours": 2, "log_level": "info"}
    nested = {"kernel_info": {"parent_header": None}}
    assert unstructure(nested) == nested
    assert to_json_bytes(unstructure(config)) == b'{"idle_shutdown_hours":2,"log_level":"info"}'


def test_a_model_survives_the_round_trip() -> None:
    session = parse_body(new_session(connection_timeout=30), NewSession)
    again = parse_body(to_json_bytes(unstructure(session)), NewSession)
    assert again == session


def test_timestamps_are_utc_with_a_z() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_timestamp(moment) == "2026-01-02T01:04:05.000006Z"
