"""What a channel waits for: requests in flight, each keyed by its ``msg_id``."""

from __future__ import annotations

import attrs
import trio

from kallichore.client._handler import InputHandler, MessageHandler
from kallichore.client._models import Message
from kallichore.protocol.execution import ReplyCollector

__all__ = ["BacklogFence", "PendingRequest"]


@attrs.define(eq=False)
class PendingRequest:
    """One request in flight, keyed by its ``msg_id``."""

    msg_id: str
    wait_idle: bool
    on_output: MessageHandler | None = None
    on_input: InputHandler | None = None
    # What arrived so far (shared with the embedding API's in-process execute).
    collected: ReplyCollector = attrs.field(init=False)
    # First failure (handler error, dropped, channel closed); set => done.
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    @collected.default
    def _new_collector(self) -> ReplyCollector:
        return ReplyCollector(self.msg_id, self.wait_idle)

    def check_done(self) -> None:
        if self.collected.complete:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.done.set()


@attrs.define(eq=False)
class BacklogFence:
    """A request whose reply and idle status end the backlog."""

    msg_id: str
    replied: bool = False
    idle: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)

    def saw(self, msg: Message) -> None:
        if msg.msg_type.endswith("_reply"):
            self.replied = True
        elif msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
            self.idle = True
        if self.replied and self.idle:
            self.done.set()
