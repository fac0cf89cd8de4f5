"""Typed views of the server's responses and of channel traffic.

Request bodies and ``ServerStatus`` reuse :mod:`kallichore.protocol.models`
(``NewSession``, ``RestartSession``, ``ConnectionInfo``,
``ServerConfiguration``, ``ClientHeartbeat``); the response schemas the server module does not model
are defined here, named after ``kallichore.json``. Optional fields the server
may omit default to ``None``, so a response from upstream Kallichore (which
has no ``server_id``) structures too.

:class:`Message`, :class:`ExecutionResult` and :class:`ExecutionError` live
in :mod:`kallichore.protocol.execution` (pure), shared with the embedding API's
in-process ``execute``; they are re-exported here.
"""

from __future__ import annotations

from typing import Any

import attrs

from kallichore.protocol.execution import OUTPUT_TYPES as OUTPUT_TYPES
from kallichore.protocol.execution import ExecutionError as ExecutionError
from kallichore.protocol.execution import ExecutionResult as ExecutionResult
from kallichore.protocol.execution import Message as Message
from kallichore.protocol.models import InterruptMode, ServerStatus, SessionMode
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
