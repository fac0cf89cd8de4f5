"""The execution queue (see docs/sessions.md), pure.

Positron sends ``execute_request``s as the user types; the supervisor holds
all but one so that a client can see (and show) what is pending:

* an ``execute_request`` when none is active becomes active and is sent; when
  one is active it is appended to ``pending``, *not* sent, and the client is
  told with an ``executionQueued`` event;
* every ``idle`` status from the kernel releases the next pending request (it
  becomes active and is sent), or clears ``active``;
* interrupt, kill, shutdown and exit clear everything; :meth:`clear` returns
  what was dropped so the client can be told (Kallichore drops silently);
* a request that is still pending can be withdrawn by its sender
  (:meth:`withdraw`; the embedding API does when its caller is cancelled).

Other shell traffic (completions, comms, inspections) is never held: the
kernel handles it in order on its own. Messages are the client's JSON objects
(without ``kind``), exactly as they appear in ``GET /sessions/{id}``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

__all__ = ["ExecutionQueue"]

Message = dict[str, Any]


def _msg_id(message: Message) -> str:
    header = message.get("header")
    return str(header.get("msg_id", "")) if isinstance(header, dict) else ""


@attrs.define
class ExecutionQueue:
    """The active ``execute_request`` and those waiting behind it."""

    active: Message | None = None
    pending: deque[Message] = attrs.field(factory=deque)

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, message: Message) -> bool:
        """Offer an ``execute_request``: ``True`` to send it now, ``False`` if held."""
        if self.active is None:
            self.active = message
            return True
        self.pending.append(message)
        return False

    def release_next(self) -> Message | None:
        """The kernel went idle: the next request to send, if any."""
        self.active = self.pending.popleft() if self.pending else None
        return self.active

    def withdraw(self, msg_id: str) -> bool:
        """Take a pending (not yet sent) request out of the queue; whether it was there."""
        for index, message in enumerate(self.pending):
            if _msg_id(message) == msg_id:
                del self.pending[index]
                return True
        return False

    def is_active(self, msg_id: str) -> bool:
        """Whether the request sent to the kernel (not yet idle) is ``msg_id``."""
        return self.active is not None and _msg_id(self.active) == msg_id

    def clear(self) -> list[str]:
        """Drop everything; returns the msg_ids of requests that never ran."""
        dropped = [_msg_id(m) for m in self.pending]
        self.active = None
        self.pending.clear()
        return dropped

    def to_json(self) -> dict[str, Any]:
        """The spec's ``execution_queue`` object."""
        body: dict[str, Any] = {}
        if self.active is not None:
            body["active"] = self.active
        body["length"] = len(self.pending)
        body["pending"] = list(self.pending)
        return body
