"""``Session.execute``: in-process execution through the session's execution queue.

Fake kernels (real processes, real ZeroMQ) except where ipykernel is named;
the "other client" is an in-process channel (``session.attach()``), which is
what a WebSocket client is to the session. Real clock throughout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio

import kallichore.client
from kallichore.embed import Session, SessionChannel, Supervisor
from kallichore.errors import ExecutionDroppedError, SessionStateError
from kallichore.protocol.envelope import client_message, execute_content
from kallichore.session.state import SessionStatus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
]

#: Bound on waiting for one expected frame.
FRAME_TIMEOUT = 10.0  # seconds

Frame = dict[str, Any]
ArgvFactory = Callable[..., list[str]]


async def started(sup: Supervisor, argv: list[str], **kwargs: Any) -> Session:
    session = sup.create_session(argv=argv, **kwargs)
    await session.start()
    return session


async def frame_where(channel: SessionChannel, test: Callable[[Frame], bool]) -> Frame:
    with trio.fail_after(FRAME_TIMEOUT):
        async for frame in channel:
            if test(frame):
                return frame
    raise AssertionError("the channel ended")


def parent_is(msg_id: str, msg_type: str) -> Callable[[Frame], bool]:
    def test(frame: Frame) -> bool:
        return (
            frame.get("kind") == "jupyter"
            and frame["header"]["msg_type"] == msg_type
            and (frame["parent_header"] or {}).get("msg_id") == msg_id
        )

    return test


async def until_done(channel: SessionChannel, msg_id: str) -> dict[str, Frame]:
    """The request's frames (by msg_type, the last of each) up to its reply and idle.

    Reply and iopub come through different sockets: either may come first.
    """
    frames: dict[str, Frame] = {}
    with trio.fail_after(FRAME_TIMEOUT):
        async for frame in channel:
            if frame.get("kind") != "jupyter":
                continue
            if (frame["parent_header"] or {}).get("msg_id") != msg_id:
                continue
            msg_type = frame["header"]["msg_type"]
            if msg_type == "status":
                msg_type = frame["content"]["execution_state"]
            frames[msg_type] = frame
            if "idle" in frames and any(t.endswith("_reply") for t in frames):
                return frames
    raise AssertionError("the channel ended")


async def send_execute(channel: SessionChannel, code: str) -> str:
    request = client_message("execute_request", execute_content(code))
    await channel.send(request)
    return str(request["header"]["msg_id"])


async def keep_busy(channel: SessionChannel) -> str:
    """Have the other client run a 3 s execution; returns once it runs."""
    theirs = await send_execute(channel, "sleep 3")
    await frame_where(channel, parent_is(theirs, "execute_input"))
    return theirs


async def test_execute_returns_the_client_librarys_result(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    seen: list[str] = []
    first = await session.execute("hello", on_output=lambda m: seen.append(m.msg_type))
    assert isinstance(first, kallichore.client.ExecutionResult)
    assert first.ok
    assert first.stdout == "hello"
    assert seen == ["stream"]
    assert first.reply.msg_type == "execute_reply"
    second = await session.execute("again")
    assert second.execution_count == (first.execution_count or 0) + 1
    assert session.status is SessionStatus.IDLE
    assert session.to_json()["execution_queue"] == {"length": 0, "pending": []}


async def test_an_output_handler_error_is_raised_after_the_execution(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())

    async def fail(_: kallichore.client.Message) -> None:
        raise LookupError("handler")

    with pytest.raises(LookupError, match="handler"):
        await session.execute("flood 3", on_output=fail)
    assert session.status is SessionStatus.IDLE
    assert (await session.execute("next")).stdout == "next"


async def test_it_takes_its_turn_in_the_queue_without_taking_the_session_over(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    async with session.attach() as channel:
        theirs = await keep_busy(channel)
        async with trio.open_nursery() as nursery:
            results: list[kallichore.client.ExecutionResult] = []

            async def ours() -> None:
                results.append(await session.execute("in process"))

            nursery.start_soon(ours)
            queued = await frame_where(channel, lambda f: "executionQueued" in f)
            mine = queued["executionQueued"]
            assert session.to_json()["execution_queue"]["length"] == 1
            # The other client's execution finishes first, then ours runs.
            their_reply = (await until_done(channel, theirs))["execute_reply"]
            # The attached client sees our output (iopub), never our reply.
            output = await frame_where(channel, parent_is(mine, "stream"))
            assert output["content"]["text"] == "in process"
            await frame_where(channel, parent_is(mine, "status"))
        assert their_reply["content"]["status"] == "ok"
        # Ours ran after theirs (the kernel counts executions in the order it runs them).
        assert results[0].execution_count == their_reply["content"]["execution_count"] + 1
        assert results[0].stdout == "in process"
        assert results[0].reply.parent_id == mine
        assert session.connected
        assert not channel.taken_over
        # Nothing for our request was left behind for the client.
        await session.execute("flush")
        with trio.move_on_after(0.2):
            async for frame in channel:
                assert not parent_is(mine, "execute_reply")(frame)


async def test_cancelling_a_running_execution_interrupts_only_it(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.5):
            await session.execute("sleep 30")
    # Interrupted, and idle again, before the cancellation arrived (the
    # kernel would have been busy for 30 s, and the wait is CANCEL_GRACE).
    assert session.status is SessionStatus.IDLE
    assert session.to_json()["execution_queue"] == {"length": 0, "pending": []}
    assert (await session.execute("still usable")).stdout == "still usable"


@pytest.mark.parametrize("interrupt_mode", ["message", "signal"])
async def test_cancelling_keeps_other_clients_queued_executions(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory, interrupt_mode: Any
) -> None:
    session = await started(
        kallichore_supervisor, fake_kernel_argv(), interrupt_mode=interrupt_mode
    )
    async with session.attach() as channel:
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.execute, "sleep 30")
                await frame_where(channel, lambda f: f.get("status", {}).get("status") == "busy")
                theirs = await send_execute(channel, "queued behind")
                await frame_where(channel, lambda f: f.get("executionQueued") == theirs)
                await trio.sleep_forever()
        # Our execution was interrupted; theirs was kept, and now runs.
        frames = await until_done(channel, theirs)
        assert frames["stream"]["content"]["text"] == "queued behind"
        assert frames["execute_reply"]["content"]["status"] == "ok"


async def test_cancelling_a_queued_execution_withdraws_it(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    async with session.attach() as channel:
        theirs = await keep_busy(channel)
        with trio.move_on_after(0.3):
            await session.execute("never runs")
        dropped = await frame_where(channel, lambda f: "executionsDropped" in f)
        assert dropped["executionsDropped"]["reason"] == "cancelled"
        assert session.to_json()["execution_queue"]["length"] == 0
        # Theirs was not interrupted, and ours never ran.
        reply = (await until_done(channel, theirs))["execute_reply"]
        assert reply["content"]["status"] == "ok"
        after = await session.execute("after")
        assert after.execution_count == reply["content"]["execution_count"] + 1
        with trio.move_on_after(0.2):
            async for frame in channel:
                assert frame.get("content", {}).get("text") != "never runs"


async def test_dropped_when_the_kernel_exits_and_refused_without_a_kernel(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    with pytest.raises(ExecutionDroppedError, match="exited"):
        await session.execute("exit 3")
    assert session.status is SessionStatus.EXITED
    with pytest.raises(SessionStateError, match="no running kernel"):
        await session.execute("anything")
    never_started = kallichore_supervisor.create_session(argv=fake_kernel_argv())
    with pytest.raises(SessionStateError):
        await never_started.execute("anything")


async def test_dropped_by_an_interrupt_while_queued(
    kallichore_supervisor: Supervisor, fake_kernel_argv: ArgvFactory
) -> None:
    session = await started(kallichore_supervisor, fake_kernel_argv())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.execute, "sleep 30")
        with trio.fail_after(FRAME_TIMEOUT):
            while session.status is not SessionStatus.BUSY:  # noqa: ASYNC110
                await trio.sleep(0.01)
        errors: list[BaseException] = []

        async def queued() -> None:
            try:
                await session.execute("queued")
            except ExecutionDroppedError as exc:
                errors.append(exc)

        nursery.start_soon(queued)
        with trio.fail_after(FRAME_TIMEOUT):
            while not session.to_json()["execution_queue"]["length"]:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await session.interrupt()
    assert len(errors) == 1
    assert "interrupt" in str(errors[0])


async def test_real_python(python_kernel_session: Session) -> None:
    result = await python_kernel_session.execute("print(6*7)")
    assert result.stdout == "42\n"
    failed = await python_kernel_session.execute("1/0")
    assert not failed.ok
    assert failed.error is not None
    assert failed.error.ename == "ZeroDivisionError"
    with trio.move_on_after(1.0):
        await python_kernel_session.execute("import time; time.sleep(60)")
    assert python_kernel_session.status is SessionStatus.IDLE
    assert (await python_kernel_session.execute("print('alive')")).stdout == "alive\n"
