"""The REST API's JSON for a session, built from a read-only view of it.

The session (:mod:`kallichore.supervisor.session`) knows its state, not the
API's field names; :func:`active_session_json` writes the spec's
``activeSession`` object from what :class:`SessionView` exposes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol

from kallichore.session.execution_queue import ExecutionQueue
from kallichore.session.spec import InterruptMode, SessionMode
from kallichore.session.state import StatusTracker

__all__ = ["SessionView", "active_session_json"]


class SpecView(Protocol):
    """The parts of a session's spec shown in its details."""

    @property
    def argv(self) -> tuple[str, ...]: ...
    @property
    def username(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def language(self) -> str: ...
    @property
    def interrupt_mode(self) -> InterruptMode: ...
    @property
    def session_mode(self) -> SessionMode: ...
    @property
    def notebook_uri(self) -> str | None: ...


class SessionView(Protocol):
    """What the presenter reads from a session (never writes)."""

    @property
    def session_id(self) -> str: ...
    @property
    def spec(self) -> SpecView: ...
    @property
    def process_id(self) -> int | None: ...
    @property
    def initial_env(self) -> Mapping[str, str]: ...
    @property
    def connected(self) -> bool: ...
    @property
    def created(self) -> dt.datetime: ...
    @property
    def working_directory(self) -> str: ...
    @property
    def input_prompt(self) -> str: ...
    @property
    def continuation_prompt(self) -> str: ...
    @property
    def execution_queue(self) -> ExecutionQueue: ...
    @property
    def tracker(self) -> StatusTracker: ...
    @property
    def kernel_info(self) -> Mapping[str, Any]: ...
    @property
    def resource_usage(self) -> Mapping[str, int] | None: ...
    @property
    def socket_path(self) -> str | None: ...


def _format_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def active_session_json(session: SessionView, now: float) -> dict[str, Any]:
    """The spec's ``activeSession`` object, fields in the spec's order.

    ``now`` is the trio clock's time (for ``idle_seconds``/``busy_seconds``).
    """
    spec = session.spec
    body: dict[str, Any] = {"session_id": session.session_id, "argv": list(spec.argv)}
    pid = session.process_id
    if pid is not None:
        body["process_id"] = pid
    body.update(
        username=spec.username,
        display_name=spec.display_name,
        language=spec.language,
        interrupt_mode=spec.interrupt_mode.value,
        initial_env=session.initial_env,
        connected=session.connected,
        started=_format_time(session.created),
        session_mode=spec.session_mode.value,
        working_directory=session.working_directory,
    )
    if spec.notebook_uri is not None:
        body["notebook_uri"] = spec.notebook_uri
    tracker = session.tracker
    body.update(
        input_prompt=session.input_prompt,
        continuation_prompt=session.continuation_prompt,
        execution_queue=session.execution_queue.to_json(),
        status=tracker.status.value,
        kernel_info=session.kernel_info,
    )
    if session.resource_usage is not None:
        body["resource_usage"] = session.resource_usage
    idle_since, busy_since = tracker.idle_since, tracker.busy_since
    body["idle_seconds"] = int(now - idle_since) if idle_since is not None else 0
    body["busy_seconds"] = int(now - busy_since) if busy_since is not None else 0
    if session.socket_path is not None:
        body["socket_path"] = session.socket_path
    return body
