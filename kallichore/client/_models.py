"""Typed views of the server's responses and of channel traffic.

Request bodies and ``ServerStatus`` reuse :mod:`kallichore.api.models`
(``NewSession``, ``RestartSession``, ``ConnectionInfo``,
``ServerConfiguration``, ``ClientHeartbeat``); the response schemas the server module does not model
are defined here, named after ``kallichore.json``. Optional fields the server
may omit default to ``None``, so a response from upstream Kallichore (which
has no ``server_id``) structures too.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs

from kallichore.api.models import InterruptMode, ServerStatus, SessionMode
from kallichore.session.state import SessionStatus

__all__ = [
    "ActiveSession",
    "ExecutionError",
    "ExecutionQueue",
    "ExecutionResult",
    "InputRequest",
    "KernelEvent",
    "Message",
    "ResourceUsage",
    "ServerStatus",
    "SessionList",
    "SessionStatus",
]

#: iopub message types that are an execution's output, in the order shown.
OUTPUT_TYPES = frozenset(
    {"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"}
)


@attrs.frozen
class ResourceUsage:
    """``resourceUsage``: one sample of a kernel's process tree."""

    cpu_percent: int
    memory_bytes: int
    thread_count: int
    sampling_period_ms: int
    timestamp: int


@attrs.frozen
class ExecutionQueue:
    """``execution_queue``: requests the server holds for the kernel."""

    length: int
    pending: list[dict[str, Any]]
    active: dict[str, Any] | None = None


@attrs.frozen
class ActiveSession:
    """``activeSession``: the state of one session."""

    session_id: str
    argv: list[str]
    username: str
    display_name: str
    language: str
    interrupt_mode: InterruptMode
    initial_env: dict[str, str]
    connected: bool
    started: str
    session_mode: SessionMode
    working_directory: str
    input_prompt: str
    continuation_prompt: str
    execution_queue: ExecutionQueue
    status: SessionStatus
    kernel_info: dict[str, Any]
    idle_seconds: int
    busy_seconds: int
    process_id: int | None = None
    notebook_uri: str | None = None
    resource_usage: ResourceUsage | None = None
    socket_path: str | None = None


@attrs.frozen
class SessionList:
    """``sessionList``: every session, oldest first."""

    total: int
    sessions: list[ActiveSession]


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
class KernelEvent:
    """A ``"kind": "kernel"`` frame: ``name`` is its one key, ``value`` the value.

    For example ``KernelEvent("status", {"status": "busy", "reason": ...})``,
    ``KernelEvent("exited", 0)``, ``KernelEvent("clientDisconnected", "...")``.
    """

    name: str
    value: Any


@attrs.frozen
class InputRequest:
    """A kernel's ``input_request`` (``input()`` or ``getpass()``)."""

    prompt: str
    password: bool
    message: Message


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
