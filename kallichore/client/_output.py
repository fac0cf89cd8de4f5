"""How ``kcclient`` writes kernel output: colour only for a terminal, whole lines, quiet pipes.

Kernels colour their tracebacks with ANSI escape sequences. They are kept
only when the stream is a terminal and ``NO_COLOR`` is unset or empty
(https://no-color.org); otherwise, and always in ``--json`` documents, they
are stripped, so a log file or ``grep`` sees plain text.

A ``stream`` output need not end with a newline (``print(x, end="")``);
before a result or a traceback the line is finished, so the two never run
together. A reader that goes away (``kcclient ... | head -2``) ends the
command quietly, as ``cat`` or ``grep`` would: :class:`OutputClosedError`
says so, and :func:`silence_stdout` keeps the interpreter from complaining
about the same closed pipe when it flushes ``stdout`` at exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, TextIO

import attrs

__all__ = ["OutputClosedError", "TextOutput", "silence_stdout", "strip_ansi", "wants_color"]

#: The environment variable that turns colour off when set to anything non-empty.
NO_COLOR_ENV = "NO_COLOR"

# CSI sequences (colours, cursor moves) and OSC sequences (titles, links).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class OutputClosedError(Exception):
    """The reader of stdout or stderr went away (a closed pipe)."""


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI.sub("", text)


def strip_ansi_deep(data: Any) -> Any:
    """A JSON-ready value with ANSI sequences stripped from every string in it."""
    if isinstance(data, str):
        return strip_ansi(data)
    if isinstance(data, list):
        return [strip_ansi_deep(item) for item in data]
    if isinstance(data, dict):
        return {key: strip_ansi_deep(value) for key, value in data.items()}
    return data


def wants_color(stream: TextIO) -> bool:
    """Whether escape sequences may be written to ``stream``."""
    if os.environ.get(NO_COLOR_ENV):
        return False
    try:
        return stream.isatty()
    except (ValueError, OSError):  # closed or detached
        return False


def silence_stdout() -> None:
    """Point stdout at ``/dev/null`` after its reader went away.

    Python flushes ``sys.stdout`` at exit and would report the broken pipe
    again; this is the recipe from the ``signal`` module's documentation.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@attrs.define(eq=False)
class TextOutput:
    """Writes kernel output to stdout/stderr, one :class:`TextOutput` per command."""

    stdout: TextIO = attrs.field(factory=lambda: sys.stdout)
    stderr: TextIO = attrs.field(factory=lambda: sys.stderr)
    # Per stream: whether the last text written ended a line (or none was written).
    _at_line_start: dict[int, bool] = attrs.field(factory=dict, repr=False)

    def write(self, stream: TextIO, text: str) -> None:
        """Write ``text`` as the stream allows (colour or not); flush.

        Raises:
            OutputClosedError: the stream's reader went away.
        """
        if not text:
            return
        if not wants_color(stream):
            text = strip_ansi(text)
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            raise OutputClosedError(stream.name if hasattr(stream, "name") else "output") from None
        self._at_line_start[id(stream)] = text.endswith("\n")
        if self._shares_terminal(stream):
            other = self.stderr if stream is self.stdout else self.stdout
            self._at_line_start[id(other)] = text.endswith("\n")

    def write_block(self, stream: TextIO, text: str) -> None:
        """Write ``text`` on lines of its own: finish an open line first, end with a newline."""
        self.finish_line(stream)
        self.write(stream, text if text.endswith("\n") else text + "\n")

    def finish_line(self, stream: TextIO) -> None:
        """End the current line of ``stream`` if text was left on it."""
        if not self._at_line_start.get(id(stream), True):
            self.write(stream, "\n")

    def _shares_terminal(self, stream: TextIO) -> bool:
        # Both streams on one terminal: a line left open on one continues on the other.
        return (
            stream in (self.stdout, self.stderr) and _isatty(self.stdout) and _isatty(self.stderr)
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False
