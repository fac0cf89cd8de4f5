"""ReplyCollector and ExecutionResult: the pure part both execute paths share."""

from __future__ import annotations

from typing import Any

import pytest

from kallichore.protocol.execution import ExecutionResult, Message, ReplyCollector

PARENT = "req-1"


def msg(channel: str, msg_type: str, **content: Any) -> Message:
    return Message.from_frame(
        {
            "kind": "jupyter",
            "header": {"msg_id": f"{msg_type}-x", "msg_type": msg_type},
            "parent_header": {"msg_id": PARENT, "msg_type": "execute_request"},
            "channel": channel,
            "content": content,
        }
    )


def stream(text: str, name: str = "stdout") -> Message:
    return msg("iopub", "stream", name=name, text=text)


IDLE = msg("iopub", "status", execution_state="idle")
BUSY = msg("iopub", "status", execution_state="busy")
OK_REPLY = msg("shell", "execute_reply", status="ok", execution_count=3)


@pytest.mark.parametrize("reply_first", [True, False], ids=["reply-then-idle", "idle-then-reply"])
def test_complete_needs_reply_and_idle_in_either_order(reply_first: bool) -> None:
    collector = ReplyCollector(PARENT, wait_idle=True)
    assert not collector.receive(BUSY)
    assert not collector.receive(msg("iopub", "execute_input", code="print(1)"))
    assert collector.receive(stream("1\n"))
    first, second = (OK_REPLY, IDLE) if reply_first else (IDLE, OK_REPLY)
    assert not collector.receive(first)
    assert not collector.complete
    assert not collector.receive(second)
    assert collector.complete
    result = collector.execution_result()
    assert result.ok
    assert result.execution_count == 3
    assert result.stdout == "1\n"
    assert result.error is None


def test_without_wait_idle_the_reply_completes() -> None:
    collector = ReplyCollector(PARENT, wait_idle=False)
    collector.receive(msg("shell", "kernel_info_reply", status="ok"))
    assert collector.complete


def test_outputs_keep_arrival_order_and_streams_split() -> None:
    collector = ReplyCollector(PARENT, wait_idle=True)
    for output in (
        stream("a", "stdout"),
        stream("b", "stderr"),
        msg("iopub", "display_data", data={"text/plain": "x"}),
        stream("c", "stdout"),
    ):
        assert collector.receive(output)
    collector.receive(IDLE)
    collector.receive(OK_REPLY)
    result = collector.execution_result()
    assert [m.msg_type for m in result.outputs] == ["stream", "stream", "display_data", "stream"]
    assert (result.stdout, result.stderr) == ("ac", "b")


def test_error_reply_becomes_execution_error() -> None:
    reply = msg("shell", "execute_reply", status="error", ename="E", evalue="v", traceback=["t"])
    result = ExecutionResult.from_reply(reply, [])
    assert not result.ok
    assert result.execution_count is None
    assert result.error is not None
    assert (result.error.ename, result.error.evalue, result.error.traceback) == ("E", "v", ["t"])


def test_no_result_before_the_reply() -> None:
    collector = ReplyCollector(PARENT, wait_idle=True)
    collector.receive(IDLE)
    with pytest.raises(ValueError, match="no reply"):
        collector.execution_result()


def test_the_client_library_returns_the_same_types() -> None:
    import kallichore.client as client

    assert client.ExecutionResult is ExecutionResult
    assert client.Message is Message
