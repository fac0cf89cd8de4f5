"""Reading what a session sends its client, for tests that drive a session directly.

A :class:`~kallichore.supervisor.session.KernelSession` queues every frame
for its client in ``session.fanout.outbox``; :class:`Frames` pops and decodes them,
and the predicates pick out Jupyter messages and kernel events. Used by the
session tests on real processes and on the in-memory transport alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from kallichore.protocol.envelope import client_message, execute_content
from kallichore.supervisor.session import KernelSession

__all__ = [
    "Frame",
    "Frames",
    "execute_request",
    "is_idle",
    "is_jupyter",
    "is_output",
    "is_status_event",
    "msg_id",
]

Frame = dict[str, Any]


class Frames:
    """Everything a session has put in its outbox, decoded, in order."""

    def __init__(self, session: KernelSession) -> None:
        self.session = session
        self.seen: list[Frame] = []

    def drain(self) -> list[Frame]:
        """Pop what the outbox holds now; returns all frames seen so far."""
        while (frame := self.session.fanout.outbox.pop()) is not None:
            self.seen.append(orjson.loads(frame))
        return self.seen

    async def wait_for(self, predicate: Callable[[Frame], bool]) -> Frame:
        """The first frame (seen before or arriving later) matching ``predicate``."""
        index = 0
        while True:
            changed = self.session.fanout.outbox_changed
            self.drain()
            for frame in self.seen[index:]:
                if predicate(frame):
                    return frame
            index = len(self.seen)
            await changed.wait()

    def jupyter(self, msg_type: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.seen
            if f["kind"] == "jupyter" and msg_type in (None, f["header"]["msg_type"])
        ]

    def events(self, key: str) -> list[Any]:
        return [f[key] for f in self.seen if f["kind"] == "kernel" and key in f]


def is_jupyter(msg_type: str, parent: str | None = None) -> Callable[[Frame], bool]:
    def predicate(frame: Frame) -> bool:
        if frame["kind"] != "jupyter" or frame["header"]["msg_type"] != msg_type:
            return False
        return parent is None or (frame["parent_header"] or {}).get("msg_id") == parent

    return predicate


def is_idle(parent: str) -> Callable[[Frame], bool]:
    """The kernel's iopub ``idle`` for the request ``parent``."""
    status = is_jupyter("status", parent)
    return lambda f: status(f) and f["content"]["execution_state"] == "idle"


def is_status_event(status: str) -> Callable[[Frame], bool]:
    return lambda f: f["kind"] == "kernel" and f.get("status", {}).get("status") == status


def is_output(text: str) -> Callable[[Frame], bool]:
    return lambda f: f["kind"] == "kernel" and text in (f.get("output") or ["", ""])[1]


def execute_request(code: str) -> dict[str, Any]:
    return client_message("execute_request", execute_content(code))


def msg_id(message: dict[str, Any]) -> str:
    return str(message["header"]["msg_id"])
