"""What a request produced, built from the frames a client receives. Pure.

One code path for both ways of running code: the client library
(:meth:`kallichore.client.Channel.execute`, over the channel WebSocket) and
the embedding API (:meth:`kallichore.embed.Session.execute`, in process)
feed the decoded ``"kind": "jupyter"`` frames of their request into a
:class:`ReplyCollector` and turn it into the same :class:`ExecutionResult`,
so the two cannot drift apart.

Theory of operation: a request is complete once its reply has arrived
(``*_reply`` on shell or control) and, when the collector waits for it, the
kernel's ``status: idle`` for it on iopub -- the two come on different
sockets, in either order. Outputs (:data:`OUTPUT_TYPES`) are kept in arrival
order. Which messages belong to the request (their ``parent_header.msg_id``)
is the caller's business.

No trio, no I/O: only attrs and the standard library.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs

__all__ = [
    "OUTPUT_TYPES",
    "ExecutionError",
    "ExecutionResult",
    "Message",
    "ReplyCollector",
]

#: iopub message types that are an execution's output, in the order shown.
OUTPUT_TYPES = frozenset(
    {"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"}
)


@attrs.frozen
class Message:
    """One Jupyter message from the channel.

    The server trims headers to ``msg_id`` and ``msg_type``; ``buffers`` are
    decoded from base64.
    """

    header: dict[str, Any]
    parent_header: dict[str, Any] | None
    channel: str
    content: dict[str, Any]
    metadata: dict[str, Any] = attrs.field(factory=dict)
    buffers: list[bytes] = attrs.field(factory=list)

    @property
    def msg_id(self) -> str:
        """``header.msg_id``."""
        return str(self.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        """``header.msg_type``."""
        return str(self.header.get("msg_type", ""))

    @property
    def parent_id(self) -> str | None:
        """``parent_header.msg_id``, or ``None`` without a parent."""
        if not self.parent_header:
            return None
        value = self.parent_header.get("msg_id")
        return str(value) if value is not None else None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Message:
        """Build from a decoded ``"kind": "jupyter"`` frame.

        Raises:
            ValueError: a required part is missing or has the wrong type.
        """
        header = frame.get("header")
        content = frame.get("content")
        if not isinstance(header, dict) or not isinstance(content, dict):
            raise ValueError("a jupyter frame needs object header and content")
        parent = frame.get("parent_header")
        metadata = frame.get("metadata")
        return cls(
            header=header,
            parent_header=parent if isinstance(parent, dict) else None,
            channel=str(frame.get("channel", "")),
            content=content,
            metadata=metadata if isinstance(metadata, dict) else {},
            buffers=[base64.b64decode(b) for b in frame.get("buffers") or []],
        )


@attrs.frozen
class ExecutionError:
    """The error of a failed execution."""

    ename: str
    evalue: str
    traceback: list[str]


@attrs.frozen
class ExecutionResult:
    """What an ``execute_request`` produced.

    Attributes:
        status: the reply's ``status``: ``"ok"``, ``"error"`` or ``"aborted"``.
        execution_count: the reply's count (``None`` if absent).
        outputs: the iopub outputs (``stream``, ``display_data``, ...,
            ``error``) in arrival order.
        error: set when ``status`` is ``"error"``.
        reply: the ``execute_reply`` itself.
    """

    status: str
    execution_count: int | None
    outputs: list[Message]
    error: ExecutionError | None
    reply: Message

    @classmethod
    def from_reply(cls, reply: Message, outputs: list[Message]) -> ExecutionResult:
        """The result of an execution whose ``execute_reply`` is ``reply``."""
        content = reply.content
        status = str(content.get("status", "error"))
        count = content.get("execution_count")
        error = None
        if status == "error":
            error = ExecutionError(
                ename=str(content.get("ename", "")),
                evalue=str(content.get("evalue", "")),
                traceback=[str(line) for line in content.get("traceback", [])],
            )
        return cls(
            status=status,
            execution_count=count if isinstance(count, int) else None,
            outputs=outputs,
            error=error,
            reply=reply,
        )

    @property
    def ok(self) -> bool:
        """Whether the execution succeeded."""
        return self.status == "ok"

    @property
    def stdout(self) -> str:
        """All ``stdout`` stream text, joined."""
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        """All ``stderr`` stream text, joined."""
        return self._stream("stderr")

    def _stream(self, name: str) -> str:
        return "".join(
            str(m.content.get("text", ""))
            for m in self.outputs
            if m.msg_type == "stream" and m.content.get("name") == name
        )


@attrs.define(eq=False)
class ReplyCollector:
    """The messages one request has received so far.

    Feed it the request's messages (those whose parent is ``msg_id``) with
    :meth:`receive`; it is :attr:`complete` once the reply, and the idle
    status when ``wait_idle``, have arrived.
    """

    msg_id: str
    wait_idle: bool
    outputs: list[Message] = attrs.field(factory=list)
    reply: Message | None = None
    idle: bool = False

    @property
    def complete(self) -> bool:
        """Whether the request is finished."""
        return self.reply is not None and (self.idle or not self.wait_idle)

    def receive(self, msg: Message) -> bool:
        """Take one of the request's messages; ``True`` when it is an output.

        Other iopub messages (``execute_input``, ``busy``) and requests from
        the kernel (``input_request``) are ignored.
        """
        if msg.channel == "iopub":
            if msg.msg_type == "status":
                if msg.content.get("execution_state") == "idle":
                    self.idle = True
            elif msg.msg_type in OUTPUT_TYPES:
                self.outputs.append(msg)
                return True
        elif msg.msg_type.endswith("_reply"):
            self.reply = msg
        return False

    def execution_result(self) -> ExecutionResult:
        """The :class:`ExecutionResult` of a complete ``execute_request``.

        Raises:
            ValueError: no reply has arrived.
        """
        if self.reply is None:
            raise ValueError(f"request {self.msg_id} has no reply yet")
        return ExecutionResult.from_reply(self.reply, self.outputs)
