"""ExecutionQueue: withdrawing a pending request (the embedding API's cancel path)."""

from __future__ import annotations

from typing import Any

from kallichore.session.execution_queue import ExecutionQueue


def request(msg_id: str) -> dict[str, Any]:
    return {"header": {"msg_id": msg_id, "msg_type": "execute_request"}, "content": {}}


def test_withdraw_takes_only_that_pending_request() -> None:
    queue = ExecutionQueue()
    assert queue.submit(request("a"))
    assert not queue.submit(request("b"))
    assert not queue.submit(request("c"))
    assert queue.withdraw("b")
    assert not queue.withdraw("b")
    assert [m["header"]["msg_id"] for m in queue.pending] == ["c"]
    released = queue.release_next()
    assert released is not None
    assert released["header"]["msg_id"] == "c"


def test_the_active_request_is_not_withdrawn() -> None:
    queue = ExecutionQueue()
    queue.submit(request("a"))
    assert queue.is_active("a")
    assert not queue.withdraw("a")
    assert queue.is_active("a")
    assert not queue.is_active("b")
    queue.release_next()
    assert not queue.is_active("a")


def test_requests_run_one_at_a_time_in_order() -> None:
    queue = ExecutionQueue()
    assert queue.submit(request("a")), "the first request runs at once"
    assert not queue.submit(request("b"))
    assert not queue.submit(request("c"))
    assert len(queue) == 2
    order = [m["header"]["msg_id"] for m in iter(queue.release_next, None)]
    assert order == ["b", "c"]
    assert queue.release_next() is None
    assert queue.submit(request("d")), "an empty queue runs the next request at once"


def test_clear_reports_what_never_ran() -> None:
    queue = ExecutionQueue()
    for msg_id in "abc":
        queue.submit(request(msg_id))
    assert queue.clear() == ["b", "c"]
    assert len(queue) == 0
    assert not queue.is_active("a")


def test_to_json_is_the_specs_execution_queue_object() -> None:
    queue = ExecutionQueue()
    assert queue.to_json() == {"length": 0, "pending": []}
    queue.submit(request("a"))
    queue.submit(request("b"))
    assert queue.to_json() == {"active": request("a"), "length": 1, "pending": [request("b")]}
