"""The one cattrs converter, and turning request bodies into models.

JSON types are checked strictly: ``"5"``, ``5.0`` and ``true`` are not
integers (cattrs would coerce them). Unknown fields are ignored, because real
clients send fields newer than our schema (Positron's ``workspace_id``, older
builds' ``run_in_shell``). ``null`` for an optional field means absent.

Parse failures become :class:`~kallichore.errors.BadRequestError` with
Kallichore's wording and a path-qualified reason naming the field, e.g.
``Couldn't parse body parameter ServerConfiguration - doesn't match schema:
expected an integer @ $.idle_shutdown_hours``.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, TypeVar, get_origin

import cattrs
import orjson
from cattrs.cols import list_structure_factory
from cattrs.v import transform_error

from kallichore.errors import BadRequestError

__all__ = ["converter", "format_timestamp", "parse_body", "to_json_bytes", "unstructure"]

T = TypeVar("T")


class StrictTypeError(TypeError):
    """A JSON value of the wrong type; the message is shown to the client."""


def _structure_int(value: Any, _: type) -> int:
    if type(value) is not int:
        if type(value) is float and value.is_integer():
            # orjson reads an integer outside 64 bits as a float.
            raise StrictTypeError("expected an integer that fits in 64 bits")
        raise StrictTypeError("expected an integer")
    return value


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise StrictTypeError("expected a string")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise StrictTypeError("expected a boolean")
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrictTypeError("expected a number")
    return float(value)


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise StrictTypeError(f"expected one of {allowed}") from None


def _is_list_type(type_: Any) -> bool:
    return get_origin(type_) is list


def _strict_list_factory(type_: Any, conv: cattrs.Converter) -> Any:
    base = list_structure_factory(type_, conv)

    def structure_list(value: Any, type_: Any) -> Any:
        if not isinstance(value, list):
            raise StrictTypeError("expected a JSON array")
        return base(value, type_)

    return structure_list


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, StrictTypeError):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"extra fields found ({', '.join(sorted(exc.extra_fields))})"
    name = getattr(type_, "__name__", str(type_))
    return f"invalid value, expected {name}"


def make_converter() -> cattrs.Converter:
    """A converter with the strict JSON hooks above; ``None`` fields omitted."""
    conv = cattrs.Converter(omit_if_default=False)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum
    )
    # cattrs would turn a JSON object or string into a list of its keys or
    # characters; a JSON array is required.
    conv.register_structure_hook_factory(_is_list_type, _strict_list_factory)
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    return conv


converter = make_converter()


def parse_body(data: bytes, model: type[T], *, name: str | None = None) -> T:
    """Parse a required JSON request body into ``model``.

    Args:
        data: the raw body (parsed whatever the Content-Type says).
        model: the attrs class to build.
        name: the schema name for messages; defaults to the class name.

    Raises:
        BadRequestError: empty or ``null`` body, invalid JSON, not an
            object, or a field of the wrong type or missing.
    """
    label = name or model.__name__
    if not data.strip():
        raise BadRequestError(f"Missing required body parameter {label}")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            f"Couldn't parse body parameter {label} - not valid JSON: {exc}"
        ) from None
    if raw is None:
        raise BadRequestError(f"Missing required body parameter {label}")
    if not isinstance(raw, dict):
        raise BadRequestError(
            f"Couldn't parse body parameter {label} - doesn't match schema: expected a JSON object"
        )
    try:
        return converter.structure(raw, model)
    except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
        reasons = "; ".join(transform_error(exc, path="$", format_exception=_format_exception))
        raise BadRequestError(
            f"Couldn't parse body parameter {label} - doesn't match schema: {reasons}"
        ) from None


def unstructure(obj: Any) -> Any:
    """A model as JSON-ready data, its own ``None`` fields omitted.

    Only the model's fields are dropped when ``None``; nulls inside free-form
    values (a kernel_info dict, a message's ``parent_header``) are kept.
    """
    data = converter.unstructure(obj)
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if v is not None}
    return data


def to_json_bytes(obj: Any) -> bytes:
    """Compact JSON, as Kallichore sends it."""
    return orjson.dumps(obj)


def format_timestamp(moment: dt.datetime) -> str:
    """RFC 3339 UTC with a ``Z`` suffix (microsecond precision)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
