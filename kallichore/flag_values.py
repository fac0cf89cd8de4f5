"""Argparse-style conversion of values that come from the environment or a TOML file.

:func:`convert` turns what a setting layer found (an environment string, or
a TOML value) into the default argparse would have produced had the flag
been given: through the option's ``type`` and ``choices``, as a bool for
switches, a count for ``count``, a list for list-valued options. A problem
is a :class:`ValueError` whose message the caller prefixes with the source.

Pure: no I/O.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

__all__ = ["convert", "toml_type"]

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _problem(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _convert_one(action: argparse.Action, text: str) -> Any:
    """``text`` as argparse would convert it for ``action``; raises ValueError."""
    value: Any = text
    if callable(action.type):
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(_problem(exc)) from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", repr(action.type))
            raise ValueError(f"invalid {name} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise ValueError(f"invalid choice: {text!r} (choose from {choices})")
    return value


def _scalar_text(raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a string or a number, not {toml_type(raw)}")
    return str(raw)


def toml_type(raw: Any) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return "an array"
    return type(raw).__name__


def _switch(raw: Any, from_env: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if from_env and isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError("expected true or false" + (" (or 1/0, yes/no, on/off)" if from_env else ""))


def _is_list(action: argparse.Action) -> bool:
    return (
        isinstance(action, argparse._AppendAction)
        or action.nargs in ("*", "+")
        or (isinstance(action.nargs, int) and action.nargs > 1)
    )


def convert(action: argparse.Action, raw: Any, from_env: bool) -> Any:
    """The default ``raw`` (a TOML value or an environment string) stands for.

    Raises:
        ValueError: with the problem, for the caller to add the source.
    """
    if isinstance(action, argparse.BooleanOptionalAction):
        return _switch(raw, from_env)
    if isinstance(action, argparse._StoreConstAction):  # store_true/false/const
        return action.const if _switch(raw, from_env) else action.default
    if isinstance(action, argparse._CountAction):
        count = int(raw) if from_env and str(raw).strip().isdigit() else raw
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("expected a whole number of repetitions")
        return count
    if _is_list(action):
        items = shlex.split(raw) if from_env else (raw if isinstance(raw, list) else [raw])
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ValueError(f"expected {action.nargs} values, got {len(items)}")
        if action.nargs == "+" and not items:
            raise ValueError("expected at least one value")
        return [_convert_one(action, _scalar_text(item)) for item in items]
    return _convert_one(action, _scalar_text(raw))
