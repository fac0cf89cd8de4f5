"""kcclient's output rules and parser, without a server: colour, line endings, closed pipes, options."""

from __future__ import annotations

import io
import os

import pytest

from kallichore import API_VERSION, __version__
from kallichore.client._execute import result_document, show
from kallichore.client._models import Message
from kallichore.client._output import OutputClosedError, TextOutput, strip_ansi, wants_color
from kallichore.client.cli import build_parser

RED_TRACEBACK = "\x1b[31mZeroDivisionError\x1b[39m: division by zero"


class _Stream(io.StringIO):
    """A StringIO that claims to be a terminal (or not), or whose reader went away."""

    def __init__(self, *, tty: bool = False, broken: bool = False) -> None:
        super().__init__()
        self.tty = tty
        self.broken = broken
        self.name = "<test>"

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def _msg(msg_type: str, content: dict[str, object]) -> Message:
    frame = {
        "header": {"msg_id": "m", "msg_type": msg_type},
        "parent_header": {"msg_id": "p"},
        "metadata": {},
        "content": content,
        "channel": "iopub",
        "buffers": [],
    }
    return Message.from_frame(frame)


def test_strip_ansi_removes_colour_cursor_and_title_sequences() -> None:
    assert strip_ansi(RED_TRACEBACK) == "ZeroDivisionError: division by zero"
    assert strip_ansi("\x1b[38;5;28;01mimport\x1b[39;00m x\x1b[2K") == "import x"
    assert strip_ansi("\x1b]0;title\x07text") == "text"
    assert strip_ansi("plain [1] text") == "plain [1] text"


@pytest.mark.parametrize(
    ("tty", "no_color", "expected"),
    [(True, None, True), (True, "", True), (True, "1", False), (False, None, False)],
)
def test_colour_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, tty: bool, no_color: str | None, expected: bool
) -> None:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    stream = _Stream(tty=tty)
    assert wants_color(stream) is expected
    TextOutput(stdout=stream, stderr=_Stream()).write(stream, RED_TRACEBACK)
    assert (stream.getvalue() == RED_TRACEBACK) is expected


def test_a_result_never_shares_a_line_with_unfinished_stream_output() -> None:
    out = TextOutput(stdout=_Stream(), stderr=_Stream())
    show(out, _msg("stream", {"name": "stdout", "text": "partial"}))
    show(out, _msg("execute_result", {"data": {"text/plain": "42"}}))
    show(out, _msg("stream", {"name": "stdout", "text": "line\n"}))
    show(out, _msg("display_data", {"data": {"image/png": "..."}}))
    assert isinstance(out.stdout, _Stream)
    assert out.stdout.getvalue() == "partial\n42\nline\n<display_data: image/png>\n"


def test_streams_sharing_a_terminal_share_the_open_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stdout, stderr = _Stream(tty=True), _Stream(tty=True)
    out = TextOutput(stdout=stdout, stderr=stderr)
    show(out, _msg("stream", {"name": "stdout", "text": "partial"}))
    show(out, _msg("error", {"traceback": [RED_TRACEBACK]}))
    assert stdout.getvalue() == "partial"
    assert stderr.getvalue() == "\nZeroDivisionError: division by zero\n"


def test_a_closed_pipe_is_one_named_error() -> None:
    out = TextOutput(stdout=_Stream(broken=True), stderr=_Stream())
    with pytest.raises(OutputClosedError):
        show(out, _msg("stream", {"name": "stdout", "text": "x\n"}))


@pytest.mark.parametrize("argv", [["list", "--json"], ["--json", "list"]])
def test_json_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).json is True


def test_json_defaults_to_off() -> None:
    assert build_parser().parse_args(["execute", "id", "1"]).json is False


def test_version_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"kcclient {API_VERSION} (kallichore {__version__})\n"


def test_parser_knows_every_command() -> None:
    parser = build_parser()
    for argv in (
        ["kernelspecs"],
        ["console", "id"],
        ["connection-file", "id"],
        ["connection-file", "id", os.devnull],
        ["delete", "id"],
    ):
        assert parser.parse_args(argv).command == argv[0]


def test_json_document_of_an_interrupted_wait_keeps_what_was_seen() -> None:
    seen = [
        _msg("stream", {"name": "stdout", "text": "go\n"}),
        _msg("error", {"ename": "KeyboardInterrupt", "traceback": [RED_TRACEBACK]}),
    ]
    document = result_document(None, seen)
    assert document["status"] == "interrupted"
    assert document["execution_count"] is None
    assert document["outputs"][0] == {"msg_type": "stream", "content": seen[0].content}
    assert document["outputs"][1]["content"]["traceback"] == ["ZeroDivisionError: division by zero"]
    assert document["error"] is None
