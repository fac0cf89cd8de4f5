"""One kernel session: its process, its ZeroMQ connection, its state.

Task tree of a running kernel (one *incarnation*; a restart makes a new one)::

    registry nursery
    └── KernelSession._run_kernel          owns the incarnation's nursery
        ├── _watch_exit                    waits for the process; cancels the rest on exit
        ├── KernelProcess.pump_output      stdout/stderr lines -> ``output`` events
        ├── _read_iopub                    status tracking, forwarding
        ├── _read_replies (shell/control/stdin)
        └── liveness.monitor_heartbeat     offline / back online (/ gone, if adopted)

Start is ``await registry_nursery.start(session._run_kernel)``: everything
before ``task_status.started(kernel_info)`` -- spawning, the JEP 66 handshake
or the connection file, connecting, the first ``kernel_info_request`` --
raises straight out of ``start()`` as a :class:`~kallichore.errors.StartupError`.
The connect phase races the process: if the kernel dies first, the error
comes at once with its exit code and output, not after the timeout. The
whole start is bounded by ``connection_timeout``; on timeout the kernel is
killed.

Stopping is cancellation of the incarnation's scope. Before the scope is
left, a still-running kernel gets a ``shutdown_request`` on control (unless
the stop is a kill) and a bounded wait; then the ladder in
:func:`~kallichore.supervisor.process.terminate_process_group` (SIGTERM, then
SIGKILL, then a sweep of the process group) runs shielded. Every path ends
in the same cleanup: status ``exited``, execution queue cleared (the client is
told what was dropped), reserved ports released, an ``exited`` event.

A session never raises into the registry's nursery after ``started()``:
kernel exit, crash or a protocol fault is a status change, not an exception.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import orjson
import psutil
import trio
import zmq

from kallichore import fd_limit
from kallichore.errors import (
    ErrorCode,
    KallichoreError,
    LocalProtocolError,
    RemoteProtocolError,
    SessionStateError,
    StartupError,
)
from kallichore.logs import SessionLog
from kallichore.protocol.envelope import EnvelopeEncoder
from kallichore.server.priority import RequestPriority
from kallichore.session.execution_queue import ExecutionQueue
from kallichore.session.outbox import Outbox
from kallichore.session.spec import InterruptMode, SessionSpec
from kallichore.session.state import SessionStatus, StatusTracker
from kallichore.supervisor import launch
from kallichore.supervisor.dropped_messages import DroppedMessageLog
from kallichore.supervisor.lifeline import Lifeline
from kallichore.supervisor.liveness import AdoptedKernelProbe, monitor_heartbeat
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.ports import PortPickError, PortReservations, is_port_conflict
from kallichore.supervisor.process import (
    KernelProcess,
    describe_status,
    spawn_kernel_process,
    terminate_process_group,
)
from kallichore.transport.zmq import (
    KernelSockets,
    TransportError,
    TrioZmqSocket,
    monitor_events,
    open_kernel_sockets,
    open_registration_socket,
    wait_stdin_connected,
)
from kallichore.wire.codec import Deserializer, ReplayWindow, Signer, serialize
from kallichore.wire.connection_file import (
    ConnectionInfo,
    encode_connection_file,
    encode_registration_file,
    generate_key,
    handshake_reply_content,
    parse_handshake_request,
    uses_registration_handshake,
)
from kallichore.wire.message import WireMessage, new_header, short_msg_id

__all__ = ["ClientAttachment", "ImmediateWriter", "KernelSession", "RequestWatcher", "SessionSpec"]

logger = logging.getLogger(__name__)

#: Wait for a kernel to exit after ``shutdown_request``.
SHUTDOWN_POLITE_GRACE = 5.0  # seconds
#: Wait for a kernel to exit after SIGTERM.
SHUTDOWN_TERM_GRACE = 3.0  # seconds
#: How long to wait for an iopub message before asking for kernel_info again
#: to prove the iopub subscription (kernels without a JEP 65 welcome).
IOPUB_CONFIRM_INTERVAL = 0.25  # seconds
#: Bound on a kill's wait for the process to be gone.
KILL_WAIT = 5.0  # seconds
#: Most iopub messages taken from ZeroMQ per scheduler trip.
IOPUB_BATCH = 64  # messages
#: The same, when other tasks are waiting to run.
IOPUB_BATCH_SHARED = 3  # messages
#: Longest run of iopub processing between two scheduler passes.
IOPUB_SLICE = 0.001  # seconds
#: Starts of a kernel that lost a race for one of its ports (first included).
PORT_CONFLICT_ATTEMPTS = 3  # attempts
#: Resource tree is re-read every this many samples (children come and go).
TREE_REFRESH_TICKS = 5  # samples

_CHANNELS_TO_KERNEL = ("shell", "control", "stdin")
# iopub message types that are output (may be dropped under overflow).
_DROPPABLE_IOPUB = frozenset(
    {
        "stream",
        "display_data",
        "update_display_data",
        "execute_result",
        "execute_input",
        "clear_output",
    }
)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _format_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attrs.define(eq=False)
class ClientAttachment:
    """One attached client connection (see :meth:`KernelSession.attach_client`)."""

    socket_path: str | None = None
    #: Set when a newer client took over; the connection must close.
    kicked: bool = False
    #: While the client's delivery task is idle: writes frames synchronously
    #: (see :class:`ImmediateWriter`), so new frames need no task switch.
    immediate: ImmediateWriter | None = None


class ImmediateWriter(Protocol):
    """A client connection that can take frames without waiting, when it is idle."""

    def write_now(self, frames: list[bytes]) -> int:
        """Write the first of ``frames`` if that needs no waiting; how many were committed.

        Committed frames are written, or will be before anything else.
        """
        ...

    def needs_flush(self) -> bool:
        """Whether committed bytes are still unwritten (the delivery task must run)."""
        ...


class RequestWatcher(Protocol):
    """Someone in this process waiting for one request's messages (:meth:`KernelSession.watch`).

    Both methods are called from the session's tasks and must not block.
    """

    def deliver(self, frame: bytes) -> None:
        """One message whose parent is the request, as the client frame a WebSocket gets."""
        ...

    def drop(self, reason: str) -> None:
        """No (more) messages will come: the request was dropped, or the kernel is gone."""
        ...


@attrs.define(eq=False)
class _Incarnation:
    """One run of a kernel (a process, or an adopted connection)."""

    process: KernelProcess | None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    sockets: KernelSockets | None = None
    # Set when the incarnation's cleanup is complete.
    done: trio.Event = attrs.field(factory=trio.Event)
    exit_code: int | None = None
    # Kill skips the polite shutdown_request.
    kill: bool = False
    restart: bool = False
    # Output lines captured while starting, for a startup error.
    startup_output: list[str] = attrs.field(factory=list)
    starting: bool = True
    iopub_seen: trio.Event = attrs.field(factory=trio.Event)
    # msg_ids of requests we sent ourselves (kernel_info); their replies and
    # busy/idle are not forwarded.
    internal: set[str] = attrs.field(factory=set)
    replies: dict[str, trio.MemorySendChannel[WireMessage]] = attrs.field(factory=dict)
    ports: tuple[int, ...] = ()
    # Files written for this kernel (they hold the key); removed when it ends.
    files: list[str] = attrs.field(factory=list)
    send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)
    # Parent msg_id of the last reply forwarded from shell.
    last_shell_reply_to: str | None = None


@attrs.define(eq=False)
class KernelSession:
    """A session: the spec, its state, and the kernel behind it (if any).

    Created by the registry; its kernels run in the registry's nursery.
    """

    spec: SessionSpec
    _nursery: trio.Nursery
    _ports: PortReservations
    _on_activity: Callable[[], None] = lambda: None
    policy: KernelPolicy = attrs.field(factory=KernelPolicy)
    #: Kills our kernels if the server dies (None: they may outlive it).
    _lifeline: Lifeline | None = None
    #: Private directory (0700) for connection and registration files.
    _files_dir: str = attrs.field(factory=tempfile.gettempdir)
    key: str = attrs.field(factory=generate_key, repr=False)
    created: dt.datetime = attrs.field(factory=_utc_now)
    tracker: StatusTracker = attrs.field(factory=StatusTracker)
    kernel_info: dict[str, Any] = attrs.field(factory=dict)
    initial_env: dict[str, str] = attrs.field(factory=dict)
    connection_info: ConnectionInfo | None = attrs.field(default=None, repr=False)
    execution_queue: ExecutionQueue = attrs.field(factory=ExecutionQueue)
    outbox: Outbox = attrs.field(factory=Outbox)
    #: Shared by the server's sessions: output pumps wait for REST requests.
    priority: RequestPriority = attrs.field(factory=RequestPriority)
    connected: bool = False
    resource_usage: dict[str, int] | None = None
    socket_path: str | None = None
    exit_code: int | None = None
    working_directory: str = attrs.field(init=False)
    env_actions: tuple[tuple[str, str, str], ...] = attrs.field(init=False)
    input_prompt: str = attrs.field(init=False)
    continuation_prompt: str = attrs.field(init=False)
    # The current incarnation, while one runs.
    _current: _Incarnation | None = attrs.field(default=None, init=False)
    # The attached client, if any (one at a time; a newer one takes over).
    _client: ClientAttachment | None = attrs.field(default=None, init=False)
    _busy_starting: bool = attrs.field(default=False, init=False)
    _restarting: bool = attrs.field(default=False, init=False)
    # Woken whenever the outbox gains a frame.
    outbox_changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    # Signs and checks the current kernel's messages (an adopted one's own key).
    _signer: Signer = attrs.field(init=False, repr=False)
    _drops: DroppedMessageLog = attrs.field(init=False, repr=False)
    # Kernel messages -> client frames (caches the current parent header).
    _envelopes: EnvelopeEncoder = attrs.field(factory=EnvelopeEncoder, init=False, repr=False)
    _resource_procs: dict[int, psutil.Process] = attrs.field(factory=dict, init=False)
    # The kernel process whose cwd _check_working_directory reads.
    _cwd_process: psutil.Process | None = attrs.field(default=None, init=False, repr=False)
    _resource_ticks: int = attrs.field(default=0, init=False)
    # Ports reserved by GET connection_info for a kernel not started by us.
    _held_ports: tuple[int, ...] = attrs.field(default=(), init=False)
    # Requests sent from this process (msg_id -> watcher): their messages go
    # to the watcher; iopub also to the client, replies only to the watcher.
    _watchers: dict[str, RequestWatcher] = attrs.field(factory=dict, init=False, repr=False)
    #: Logger for this session's lines ("Session <id>: ...", ``session_id`` set).
    log: SessionLog = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.working_directory = self.spec.working_directory
        self.env_actions = self.spec.env
        self.input_prompt = self.spec.input_prompt
        self.continuation_prompt = self.spec.continuation_prompt
        self._signer = Signer(self.key.encode("ascii"))
        self.log = SessionLog(logger, self.spec.session_id)
        self._drops = DroppedMessageLog(self.log)

    def __repr__(self) -> str:
        return f"<KernelSession {self.spec.session_id!r} {self.status.value}>"

    # ------------------------------------------------------------------ state

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.spec.session_id

    @property
    def status(self) -> SessionStatus:
        """The current status."""
        return self.tracker.status

    @property
    def process_id(self) -> int | None:
        """PID of the running kernel process, if any."""
        current = self._current
        if current is None or current.process is None or current.process.returncode is not None:
            return None
        return current.process.pid

    def is_busy(self) -> bool:
        return self.tracker.status is SessionStatus.BUSY

    def is_exited(self) -> bool:
        return self.tracker.status is SessionStatus.EXITED

    def is_connected(self) -> bool:
        return self.connected

    def busy_since(self) -> float | None:
        return self.tracker.busy_since

    def idle_since(self) -> float | None:
        return self.tracker.idle_since

    def is_running(self) -> bool:
        """Whether a kernel is live, starting, or being restarted.

        A restart counts from its first step, so the session cannot be
        deleted (or adopted) between stopping the old kernel and starting the
        new one.
        """
        return self._kernel_active() or self._restarting

    def _kernel_active(self) -> bool:
        return self._current is not None or self._busy_starting

    def set_status(self, status: SessionStatus, reason: str | None, *, wake: bool = True) -> None:
        """Apply a status change and tell the client (no-op if unchanged).

        With ``wake=False`` the event is queued and goes out with the next
        wake-up of the client (the iopub reader's, at the end of its batch).
        """
        if not self.tracker.transition(status, trio.current_time()):
            return
        self.log.debug("status %s (%s)", status.value, reason)
        if status is SessionStatus.EXITED:
            self._clear_queue("the kernel exited")
        if status in (SessionStatus.IDLE, SessionStatus.READY, SessionStatus.EXITED):
            self._on_activity()
        self.emit_event({"status": {"status": status.value, "reason": reason}}, wake=wake)

    # --------------------------------------------------------------- to client

    def emit_event(self, event: dict[str, Any], *, wake: bool = True) -> None:
        """Queue a ``kind: kernel`` event for the client."""
        self._put(orjson.dumps({"kind": "kernel", **event}), droppable=False, wake=wake)

    def _put(self, frame: bytes, *, droppable: bool, wake: bool = True) -> None:
        self.outbox.put(frame, droppable=droppable)
        if wake:
            self._wake_client()

    def _wake_client(self) -> None:
        """Hand new frames to the client; wake whoever waits on :attr:`outbox_changed`.

        When the client's delivery task is idle, the frames are written right
        here (one task switch less per message, which is most of the cost of a
        trickle of output), and the task is woken only if something is left.
        """
        client = self._client
        writer = client.immediate if client is not None else None
        if writer is not None and client is not None:
            if len(self.outbox):
                frames = self.take_frames(client)
                written = writer.write_now(frames)
                if written < len(frames):
                    self.requeue(frames[written:])
            # Nothing left for the delivery task (the frames went out just
            # now, or earlier in the same batch): let it sleep on.
            if not len(self.outbox) and not writer.needs_flush():
                return
        self.outbox_changed.set()
        self.outbox_changed = trio.Event()

    def _forward(
        self, channel: str, msg: WireMessage, *, droppable: bool = False, wake: bool = True
    ) -> None:
        try:
            frame = self._envelopes.encode(channel, msg)
        except RemoteProtocolError as exc:
            self.log.warning("dropped a %s %s: %s", channel, msg.msg_type, exc)
            return
        if self._watchers:
            watcher = self._watchers.get(msg.parent_msg_id or "")
            if watcher is not None:
                watcher.deliver(frame)
                if channel != "iopub":
                    return  # a reply is its sender's; iopub is everyone's
        self._put(frame, droppable=droppable, wake=wake)

    def _clear_queue(self, why: str) -> None:
        dropped = self.execution_queue.clear()
        if dropped:
            self.log.info("dropped %d queued executions (%s)", len(dropped), why)
            self.emit_event({"executionsDropped": {"msg_ids": dropped, "reason": why}})
            for msg_id in dropped:
                if (watcher := self._watchers.get(msg_id)) is not None:
                    watcher.drop(f"the execution queue was cleared ({why})")

    # ------------------------------------------------------- client attachment

    def attach_client(self, *, socket_path: str | None = None) -> ClientAttachment:
        """Make a new client the session's one client; the previous one is kicked.

        The previous attachment (if any) is marked kicked: its delivery loop
        sends it ``clientDisconnected`` and closes it. From now on
        :meth:`next_frames` with the new attachment receives the outbox.
        """
        previous = self._client
        if previous is not None:
            previous.kicked = True  # woken below by outbox_changed
        attachment = ClientAttachment(socket_path=socket_path)
        self._client = attachment
        self.connected = True
        self.socket_path = socket_path
        self._on_activity()
        self.outbox_changed.set()
        self.outbox_changed = trio.Event()
        self.log.info("client attached%s", " (took over)" if previous else "")
        return attachment

    def detach_client(self, attachment: ClientAttachment) -> None:
        """A client connection ended; only the current client clears ``connected``."""
        if self._client is attachment:
            self._client = None
            self.connected = False
            self.socket_path = None
            self.log.info("client detached")

    def is_current_client(self, attachment: ClientAttachment) -> bool:
        """Whether ``attachment`` is still the session's client."""
        return self._client is attachment

    async def next_frames(self, attachment: ClientAttachment, *, limit: int = 256) -> list[bytes]:
        """Wait for frames for this client, then :meth:`take_frames`.

        Checkpoints before it takes anything and not after, so a cancelled
        call loses nothing. Returns ``[]`` only once the attachment has been
        kicked.
        """
        while True:
            if attachment.kicked or self._client is not attachment:
                await trio.lowlevel.checkpoint()
                return []
            if len(self.outbox):
                await trio.lowlevel.checkpoint()
                frames = self.take_frames(attachment, limit=limit)
                if frames or attachment.kicked or self._client is not attachment:
                    return frames
                continue
            await self.outbox_changed.wait()

    def take_frames(self, attachment: ClientAttachment, *, limit: int = 256) -> list[bytes]:
        """Take up to ``limit`` frames for this client, without waiting.

        Returns an empty list once the attachment has been kicked (the caller
        then says goodbye and closes), and also when there is nothing to
        take (wait on :attr:`outbox_changed` first). Frames taken here are no
        longer in the outbox: a caller that fails to deliver them should
        :meth:`requeue`. If output was dropped while nobody read it, the
        first frame is an ``outputDropped`` event with the count.
        """
        if attachment.kicked or self._client is not attachment:
            return []
        frames: list[bytes] = []
        dropped = self.outbox.take_dropped()
        if dropped:
            frames.append(orjson.dumps({"kind": "kernel", "outputDropped": dropped}))
        while len(frames) < limit and (frame := self.outbox.pop()) is not None:
            frames.append(frame)
        return frames

    def requeue(self, frames: list[bytes]) -> None:
        """Put back frames a client could not take, ahead of everything else."""
        for frame in reversed(frames):
            self.outbox.push_front(frame)

    # ----------------------------------------------------------------- to JSON

    def to_json(self) -> dict[str, Any]:
        """The spec's ``activeSession`` object, fields in the spec's order."""
        now = trio.current_time()
        body: dict[str, Any] = {"session_id": self.session_id, "argv": list(self.spec.argv)}
        pid = self.process_id
        if pid is not None:
            body["process_id"] = pid
        body.update(
            username=self.spec.username,
            display_name=self.spec.display_name,
            language=self.spec.language,
            interrupt_mode=self.spec.interrupt_mode.value,
            initial_env=self.initial_env,
            connected=self.connected,
            started=_format_time(self.created),
            session_mode=self.spec.session_mode.value,
            working_directory=self.working_directory,
        )
        if self.spec.notebook_uri is not None:
            body["notebook_uri"] = self.spec.notebook_uri
        body.update(
            input_prompt=self.input_prompt,
            continuation_prompt=self.continuation_prompt,
            execution_queue=self.execution_queue.to_json(),
            status=self.status.value,
            kernel_info=self.kernel_info,
        )
        if self.resource_usage is not None:
            body["resource_usage"] = self.resource_usage
        idle_since, busy_since = self.tracker.idle_since, self.tracker.busy_since
        body["idle_seconds"] = int(now - idle_since) if idle_since is not None else 0
        body["busy_seconds"] = int(now - busy_since) if busy_since is not None else 0
        if self.socket_path is not None:
            body["socket_path"] = self.socket_path
        return body

    # ------------------------------------------------------------------- start

    async def start(self) -> dict[str, Any]:
        """Start the kernel; returns its ``kernel_info_reply`` content.

        **Errors:** :class:`SessionStateError` (400) if a kernel is running or
        starting; :class:`StartupError` (500) for every failure to start.

        **Cancellation:** if the caller is cancelled mid-start the kernel
        keeps starting in the registry's nursery (its lifetime belongs to the
        session, not to the HTTP request).
        """
        if self._kernel_active():
            raise SessionStateError(
                ErrorCode.SESSION_RUNNING,
                f"Session {self.session_id} is already running",
                "Stop or restart the session instead of starting it again",
                http_status=400,
            )
        if not self.spec.argv:
            raise StartupError(
                ErrorCode.PROCESS_START_FAILED,
                "Failed to start process for session: No arguments provided",
            )
        fd_limit.check_headroom()
        self._busy_starting = True
        try:
            # The kernel belongs to the session, not to the HTTP request: a
            # client that gives up must not kill it half-started. The start
            # is bounded by connection_timeout (and the shutdown ladder).
            with trio.CancelScope(shield=True):
                info = await self._start_with_fresh_ports_on_conflict()
        except StartupError as exc:
            shortage = fd_limit.shortage_error(exc)
            if shortage is None:
                raise
            raise shortage from exc
        finally:
            self._busy_starting = False
        return info

    async def _start_with_fresh_ports_on_conflict(self) -> dict[str, Any]:
        """Run the kernel; start it again with new ports if it lost a port race.

        The ports in a connection file are picked by us and bound by the
        kernel a second or more later; another program can take one in
        between (see :mod:`kallichore.supervisor.ports`), and the kernel
        exits with "Address already in use". That is no fault of the kernel,
        so the start is tried again, with new ports, a bounded number of
        times. (JEP 66 kernels bind ports of their own choosing.)
        """
        attempt = 1
        while True:
            try:
                info: dict[str, Any] = await self._nursery.start(self._run_kernel)
                return info
            except StartupError as exc:
                if (
                    attempt >= PORT_CONFLICT_ATTEMPTS
                    or exc.code is not ErrorCode.PROCESS_ABNORMAL_EXIT
                    or uses_registration_handshake(self.spec.protocol_version)
                    or not is_port_conflict(exc.output)
                ):
                    raise
            self.log.warning(
                "a port picked for the kernel was taken before it could bind it; "
                "starting again with new ports (attempt %d of %d)",
                attempt + 1,
                PORT_CONFLICT_ATTEMPTS,
            )
            attempt += 1

    def _startup_failed(
        self, inc: _Incarnation, plan: launch.LaunchPlan | None, *, during_handshake: bool
    ) -> StartupError:
        raw_output = "".join(inc.startup_output)
        output = launch.clean_startup_output(raw_output)
        code = inc.exit_code if inc.exit_code is not None else -1
        mode = plan.mode if plan else "none"
        if during_handshake:
            message = "The kernel exited before a connection could be established"
            prefix = launch.startup_context_prefix(
                mode, plan.shell if plan else None, plan.startup_arg if plan else None
            )
            return StartupError(
                ErrorCode.EXITED_BEFORE_CONNECTION,
                message,
                prefix + message,
                exit_code=code,
                output=output,
            )
        # The details look for the startup markers, so they read the raw output.
        details = launch.startup_failure_details(
            mode,
            plan.shell if plan else None,
            plan.startup_arg if plan else None,
            raw_output,
            connect_failure=False,
        )
        return StartupError(
            ErrorCode.PROCESS_ABNORMAL_EXIT,
            f"The process exited abnormally ({describe_status(code)})",
            details,
            exit_code=code,
            output=output,
        )

    async def _run_kernel(
        self, *, task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        spec = self.spec
        self.set_status(SessionStatus.STARTING, "start API called")
        jep66 = uses_registration_handshake(spec.protocol_version)
        self._signer = Signer(self.key.encode("ascii"))
        inc = _Incarnation(process=None)
        plan: launch.LaunchPlan | None = None
        started = False
        failure: StartupError | None = None
        registration = contextlib.AsyncExitStack()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(registration.aclose)
            try:
                env = launch.resolve_environment(dict(os.environ), self.env_actions)
                self.initial_env = env
                cwd, warning = launch.choose_working_directory(self.working_directory, os.getcwd())
                if warning:
                    self.log.warning("%s", warning)
                # Ports reserved by an earlier GET connection_info are not reused:
                # a start always writes a fresh connection file (as Kallichore).
                self._release_held_ports()
                if jep66:
                    self.connection_info = None  # the kernel will report its ports
                    reg_sock, reg_port = await registration.enter_async_context(
                        open_registration_socket()
                    )
                    path = os.path.join(
                        self._files_dir, f"registration_{_file_stem(spec.session_id)}.json"
                    )
                    inc.files.append(path)
                    _write_private(
                        path, encode_registration_file(key=self.key, registration_port=reg_port)
                    )
                else:
                    reg_sock = None
                    info = self._new_connection_info()
                    inc.ports = _ports_of(info)
                    path = os.path.join(
                        self._files_dir, f"connection_{_file_stem(spec.session_id)}.json"
                    )
                    inc.files.append(path)
                    _write_private(path, encode_connection_file(info))
                    self.connection_info = info
                argv = launch.substitute_connection_file(spec.argv, path)
                plan = launch.build_command(
                    argv,
                    startup_environment=spec.startup_environment.value,
                    startup_arg=spec.startup_environment_arg,
                    working_directory=cwd,
                    server_shell=os.environ.get("SHELL"),
                    env=env,
                )
                try:
                    inc.process = await spawn_kernel_process(
                        list(plan.argv), env=env, cwd=cwd, lifeline=self._lifeline
                    )
                except OSError as exc:
                    raise StartupError(
                        ErrorCode.PROCESS_START_FAILED,
                        f"Failed to start process for session: {exc}",
                        exit_code=exc.errno,
                    ) from None
            except Exception as exc:
                # Whatever failed before the kernel existed: release what was
                # reserved, record the exit, and report a startup error.
                self._release(inc)
                self.set_status(SessionStatus.EXITED, f"failed to start: {exc}")
                if isinstance(exc, StartupError):
                    raise
                if not isinstance(exc, TransportError | OSError | PortPickError | ValueError):
                    self.log.exception("unexpected error while starting")
                raise StartupError(
                    ErrorCode.PROCESS_START_FAILED, f"Failed to start process for session: {exc}"
                ) from None

            process = inc.process
            self.log.info("started process %d: %s", process.pid, " ".join(plan.argv))
            self._current = inc
            # The output pump lives outside the incarnation's scope: when the
            # kernel dies it must still read the last lines (a startup error
            # reports them); the shutdown ladder closes the pipes, which ends it.
            async with trio.open_nursery() as output_nursery:
                output_nursery.start_soon(process.pump_output, _output_emitter(self, inc))
                try:
                    with inc.scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._watch_exit, inc)
                            try:
                                with trio.fail_after(spec.connection_timeout):
                                    if reg_sock is not None:
                                        self.connection_info = await self._registration_handshake(
                                            reg_sock
                                        )
                                        await registration.aclose()
                                    inc.sockets = await stack.enter_async_context(
                                        open_kernel_sockets(
                                            _endpoints(self.connection_info),
                                            identity=spec.session_id.encode(),
                                        )
                                    )
                                    kernel_info = await self._connect(inc, nursery)
                            except trio.TooSlowError:
                                raw_output = "".join(inc.startup_output)
                                output = launch.clean_startup_output(raw_output)
                                handshake_pending = (
                                    reg_sock is not None and self.connection_info is None
                                )
                                failure = StartupError(
                                    ErrorCode.HANDSHAKE_FAILED
                                    if handshake_pending
                                    else ErrorCode.SESSION_CONNECTION_TIMEOUT,
                                    f"JEP 66 handshake failed for session {spec.session_id}: "
                                    "Timeout waiting for handshake"
                                    if handshake_pending
                                    else "Timed out waiting to connect to session's ZeroMQ "
                                    f"sockets after {spec.connection_timeout:g} seconds",
                                    launch.startup_failure_details(
                                        plan.mode,
                                        plan.shell,
                                        plan.startup_arg,
                                        raw_output,
                                        connect_failure=True,
                                    ),
                                    exit_code=None if handshake_pending else 130,
                                    output=output,
                                )
                                inc.kill = True
                                nursery.cancel_scope.cancel()
                            except TransportError as exc:
                                failure = StartupError(
                                    ErrorCode.SESSION_CONNECTION_FAILED,
                                    f"Failed to connect to session's ZeroMQ sockets: {exc}",
                                    exit_code=130,
                                )
                                inc.kill = True
                                nursery.cancel_scope.cancel()
                            else:
                                self._kernel_ready(kernel_info, extract_prompts=True)
                                inc.starting = False
                                started = True
                                task_status.started(kernel_info)
                                nursery.start_soon(self._monitor_heartbeat, inc)
                                await trio.sleep_forever()
                except Exception:
                    if not started:
                        raise
                    # A bug in a pump must not reach the registry's nursery
                    # (it would take every session and the server down):
                    # treat it as a crash of this kernel.
                    self.log.exception("internal error; stopping the kernel")
                finally:
                    await self._stop_incarnation(inc)
        if not started:
            if failure is None:
                failure = self._startup_failed(
                    inc, plan, during_handshake=jep66 and self.connection_info is None
                )
            raise failure

    def _new_connection_info(self) -> ConnectionInfo:
        ports = self._ports.reserve(5)
        return ConnectionInfo(
            control_port=ports[0],
            shell_port=ports[1],
            stdin_port=ports[2],
            hb_port=ports[3],
            iopub_port=ports[4],
            key=self.key,
        )

    async def _registration_handshake(self, reg: TrioZmqSocket) -> ConnectionInfo:
        deserializer = Deserializer(self._signer, None, accept_unsigned=False)
        while True:
            frames = await reg.receive_multipart()
            try:
                msg = deserializer.receive_frames(frames)
                ports = parse_handshake_request(msg)
            except RemoteProtocolError as exc:
                self.log.warning("bad JEP 66 handshake request: %s", exc)
                error = {
                    "status": "error",
                    "error": f"Failed to parse JupyterMessage: {exc}",
                    "capabilities": {},
                }
                await reg.send_multipart([orjson.dumps(error)])
                continue
            reply = WireMessage(
                header=new_header(
                    "handshake_reply",
                    session=self.session_id,
                    username=self.spec.username,
                    version=self.spec.protocol_version,
                ),
                parent_header=msg.header,
                metadata=b"{}",
                content=orjson.dumps(handshake_reply_content()),
            )
            await reg.send_multipart(serialize(reply, self._signer))
            info = ConnectionInfo(**ports, key=self.key)
            self.emit_event({"handshakeCompleted": [self.session_id, info.to_json_dict()]})
            return info

    async def _connect(self, inc: _Incarnation, nursery: trio.Nursery) -> dict[str, Any]:
        """Start the readers, then get kernel_info with a confirmed iopub subscription."""
        assert inc.sockets is not None
        nursery.start_soon(self._read_iopub, inc)
        for channel in _CHANNELS_TO_KERNEL:
            nursery.start_soon(self._read_replies, inc, channel)
        while True:
            reply = await self._request(inc, "shell", "kernel_info_request", {})
            if not inc.iopub_seen.is_set():
                with trio.move_on_after(IOPUB_CONFIRM_INTERVAL):
                    await inc.iopub_seen.wait()
            if inc.iopub_seen.is_set():
                # The kernel can reach us on every channel: shell and iopub
                # are proven, stdin is proven by its handshake.
                await wait_stdin_connected(inc.sockets)
                return dict(reply.content_json())

    async def _request(
        self, inc: _Incarnation, channel: str, msg_type: str, content: dict[str, Any]
    ) -> WireMessage:
        """Send a request of our own and wait for its reply (caller bounds it)."""
        msg_id = short_msg_id()
        send, receive = trio.open_memory_channel[WireMessage](1)
        inc.internal.add(msg_id)
        inc.replies[msg_id] = send
        try:
            await self._send_wire(inc, channel, msg_type, content, msg_id=msg_id)
            return await receive.receive()
        finally:
            inc.replies.pop(msg_id, None)

    def _kernel_ready(self, kernel_info: dict[str, Any], *, extract_prompts: bool) -> None:
        self.kernel_info = kernel_info
        if extract_prompts:
            positron = (kernel_info.get("language_info") or {}).get("positron") or {}
            if isinstance(positron, dict):
                if isinstance(positron.get("input_prompt"), str):
                    self.input_prompt = positron["input_prompt"]
                if isinstance(positron.get("continuation_prompt"), str):
                    self.continuation_prompt = positron["continuation_prompt"]
        # Our own kernel_info's busy/idle were swallowed; the kernel is idle now.
        self.set_status(SessionStatus.IDLE, "kernel started")

    # ------------------------------------------------------------ the pumps

    async def _watch_exit(self, inc: _Incarnation) -> None:
        assert inc.process is not None
        inc.exit_code = await inc.process.wait()
        # Busy: reported so, or running an execute_request whose busy status
        # may still be unread. A kill or shutdown cancels this wait first.
        busy = self.status is SessionStatus.BUSY or self.execution_queue.active is not None
        if busy and not inc.scope.cancel_called:
            self.log.warning(
                "kernel process %d died while busy (%s)",
                inc.process.pid,
                describe_status(inc.exit_code),
            )
        else:
            self.log.info(
                "kernel process %d exited (%s)",
                inc.process.pid,
                describe_status(inc.exit_code),
            )
        inc.scope.cancel()

    async def _read_iopub(self, inc: _Incarnation) -> None:
        assert inc.sockets is not None
        iopub = inc.sockets.iopub
        deserializer = self._kernel_deserializer()
        priority = self.priority
        flooded = False
        while True:
            await priority.wait_turn(busy=flooded)
            # A batch per wake-up: under a flood this is one scheduler trip
            # and one client wake-up per batch, not per message. The batch is
            # small when other tasks are waiting to run (other floods, an HTTP
            # request), so that one pass of the scheduler stays short.
            # (current_statistics() walks trio's I/O registrations: asked
            # only under a flood, when the last batch was not a trickle.)
            busy = flooded and trio.lowlevel.current_statistics().tasks_runnable > 0
            batch = await iopub.receive_batch(IOPUB_BATCH_SHARED if busy else IOPUB_BATCH)
            flooded = len(batch) >= IOPUB_BATCH_SHARED
            slice_end = time.perf_counter() + IOPUB_SLICE
            for frames in batch:
                if time.perf_counter() > slice_end or priority.holding():
                    # A batch that takes long (a loaded machine, big messages)
                    # is finished in slices, and an HTTP request that arrives
                    # meanwhile goes first; nothing is dropped in between.
                    self._wake_client()
                    with trio.CancelScope(shield=True):
                        await trio.lowlevel.checkpoint()
                        await priority.wait_turn()
                    slice_end = time.perf_counter() + IOPUB_SLICE
                try:
                    msg = deserializer.receive_frames(frames)
                except RemoteProtocolError as exc:
                    self._drops.record("iopub", str(exc))
                    continue
                inc.iopub_seen.set()
                msg_type = msg.msg_type
                if msg_type == "status":
                    if msg.parent_msg_id in inc.internal:
                        continue
                    state = _execution_state(msg)
                    idle = state == "idle"
                    if idle and msg.parent_msg_id != inc.last_shell_reply_to:
                        await self._let_reply_through(inc)
                    self._on_kernel_status(state, msg.parent_msg_type)
                    self._forward("iopub", msg, wake=False)
                    if idle:
                        # The client hears "idle" before any bookkeeping
                        # (reading the kernel's cwd takes ~100 us).
                        self._wake_client()
                        if msg.parent_msg_type == "execute_request":
                            self._check_working_directory()
                        if self.execution_queue.active is not None or len(self.execution_queue):
                            await self._release_next_execution(inc)
                elif msg_type != "iopub_welcome":
                    self._forward("iopub", msg, droppable=msg_type in _DROPPABLE_IOPUB, wake=False)
            self._wake_client()

    async def _let_reply_through(self, inc: _Incarnation) -> None:
        """Let the shell reader forward a reply that came before an idle status.

        Skipped when the reply to the idle's request has gone out already.

        The kernel sends a request's reply before its idle status, and
        clients read "idle" as the end. The reply is on another socket, with
        another reader task: one that is asleep is woken if a message waits
        (``readable_now``), and one that has just taken a message needs one
        scheduler pass to forward it. Two passes cover both; a status per
        request makes this cheap even under a flood.
        """
        assert inc.sockets is not None
        inc.sockets.shell.readable_now()
        await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _on_kernel_status(self, state: str | None, reason: str | None) -> None:
        # Queued without a wake-up: the event and the status message itself
        # go out together, in one write.
        if state == "busy":
            self.set_status(SessionStatus.BUSY, reason, wake=False)
        elif state == "idle":
            self.set_status(SessionStatus.IDLE, reason, wake=False)

    async def _read_replies(self, inc: _Incarnation, channel: str) -> None:
        sock = _dealer(inc, channel)
        deserializer = self._kernel_deserializer()
        while True:
            frames = await sock.receive_multipart()
            try:
                msg = deserializer.receive_frames(frames)
            except RemoteProtocolError as exc:
                self._drops.record(channel, str(exc))
                continue
            waiter = inc.replies.get(msg.parent_msg_id or "")
            if waiter is not None:
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    waiter.send_nowait(msg)
                continue
            if msg.parent_msg_id in inc.internal:
                continue
            self._forward(channel, msg)
            if channel == "shell":
                inc.last_shell_reply_to = msg.parent_msg_id

    def _kernel_deserializer(self) -> Deserializer:
        accept_unsigned = self.policy.allow_unsigned_messages
        return Deserializer(self._signer, ReplayWindow(), accept_unsigned=accept_unsigned)

    async def _monitor_heartbeat(
        self, inc: _Incarnation, probe: AdoptedKernelProbe | None = None
    ) -> None:
        assert inc.sockets is not None
        beat = (self._drops.flush_if_due,)
        gone = inc.scope.cancel
        await monitor_heartbeat(inc.sockets.hb, self, probe=probe, on_gone=gone, on_beat=beat)

    def _check_working_directory(self) -> None:
        pid = self.process_id
        if pid is None:
            return
        # Runs after every execution, just when the client is likely to send
        # its next request: a new psutil.Process reads /proc/<pid>/stat
        # (about 20 us warm, several times that right after a wake-up),
        # the cached one only reads the cwd link.
        proc = self._cwd_process
        try:
            if proc is None or proc.pid != pid:
                proc = self._cwd_process = psutil.Process(pid)
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            return
        if cwd and cwd != self.working_directory:
            self.working_directory = cwd
            self.emit_event({"workingDirChanged": cwd})

    # --------------------------------------------------------- to the kernel

    async def _send_wire(
        self,
        inc: _Incarnation,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | bytes,
        *,
        msg_id: str | None = None,
        parent: dict[str, Any] | None = None,
        metadata: bytes = b"{}",
        buffers: tuple[bytes, ...] = (),
    ) -> None:
        if inc.sockets is None:
            raise SessionStateError(
                ErrorCode.NO_PROCESS,
                f"There is no kernel connected to session {self.session_id}",
                http_status=400,
            )
        header = new_header(
            msg_type,
            session=self.session_id,
            username=self.spec.username,
            version=self.spec.protocol_version,
            msg_id=msg_id or short_msg_id(),
        )
        msg = WireMessage(
            header=header,
            parent_header=parent or {},
            metadata=metadata,
            content=content if isinstance(content, bytes) else orjson.dumps(content),
            buffers=buffers,
        )
        sock = _dealer(inc, channel)
        lock = inc.send_lock
        try:
            lock.acquire_nowait()  # the usual case: no scheduler pass on the way in
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await sock.send_multipart(serialize(msg, self._signer))
        finally:
            lock.release()

    async def _release_next_execution(self, inc: _Incarnation) -> None:
        nxt = self.execution_queue.release_next()
        if nxt is not None:
            await self._send_client_message(inc, nxt)

    async def send_from_client(self, message: dict[str, Any]) -> None:
        """Route one client message (a Jupyter message object) to the kernel.

        ``execute_request``s go through the execution queue; interrupt and
        shutdown requests clear it. Messages for a session with no kernel
        are dropped with a warning (never queued for a future kernel).

        **Errors:** :class:`~kallichore.errors.RemoteProtocolError` for a
        malformed message (the caller logs and drops it).
        """
        header = message.get("header")
        if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
            raise RemoteProtocolError("message has no header with a msg_type")
        channel = message.get("channel")
        msg_type = header["msg_type"]
        inc = self._current
        if inc is None or inc.sockets is None:
            self.log.warning("no kernel; dropping client %s", msg_type)
            return
        if channel not in _CHANNELS_TO_KERNEL:
            self.log.warning("dropping client %s on channel %r", msg_type, channel)
            return
        if msg_type == "execute_request":
            if not self.execution_queue.submit(message):
                self.emit_event({"executionQueued": str(header.get("msg_id", ""))})
                return
        elif msg_type in ("interrupt_request", "shutdown_request"):
            self._clear_queue(msg_type)
        await self._send_client_message(inc, message)

    async def _send_client_message(self, inc: _Incarnation, message: dict[str, Any]) -> None:
        header = message["header"]
        parent = message.get("parent_header")
        if isinstance(parent, dict) and parent.get("msg_id"):
            parent_header: dict[str, Any] | None = new_header(
                str(parent.get("msg_type", "")),
                session=self.session_id,
                username=self.spec.username,
                version=self.spec.protocol_version,
                msg_id=str(parent["msg_id"]),
            )
        else:
            parent_header = None
        try:
            buffers = tuple(
                base64.b64decode(b, validate=True) for b in message.get("buffers") or ()
            )
        except (ValueError, TypeError):
            self.log.warning("dropping a client message with invalid base64 buffers")
            return
        try:
            await self._send_wire(
                inc,
                str(message.get("channel", "shell")),
                str(header["msg_type"]),
                orjson.dumps(message.get("content", {})),
                msg_id=str(header.get("msg_id") or short_msg_id()),
                parent=parent_header,
                metadata=orjson.dumps(message.get("metadata") or {}),
                buffers=buffers,
            )
        except TransportError as exc:
            # The kernel is going away; its exit is being handled elsewhere.
            self.log.warning("could not send a client message to the kernel: %s", exc)

    # ----------------------------------------------------- in-process requests

    def watch(self, msg_id: str, watcher: RequestWatcher) -> None:
        """Route the messages of request ``msg_id``, about to be sent from this process, to ``watcher``.

        Call it right before :meth:`send_from_client` (no checkpoint between,
        so the kernel cannot go away in between); :meth:`unwatch` when done.
        Its iopub messages still reach the attached client too (iopub is
        every frontend's), its reply only the watcher.

        **Errors:** :class:`SessionStateError` (KS-3) when no kernel is
        connected, so the request could not be sent.
        """
        inc = self._current
        if inc is None or inc.sockets is None:
            raise SessionStateError(
                ErrorCode.SESSION_NOT_RUNNING,
                f"Session {self.session_id} has no running kernel (status: {self.status.value})",
                http_status=400,
            )
        self._watchers[msg_id] = watcher

    def unwatch(self, msg_id: str) -> None:
        """Stop routing ``msg_id``'s messages to its watcher (idempotent)."""
        self._watchers.pop(msg_id, None)

    async def cancel_execution(self, msg_id: str) -> None:
        """Stop one ``execute_request`` without touching other clients' requests.

        A request still waiting in the execution queue is withdrawn (the
        client is told with ``executionsDropped``, reason ``cancelled``); the
        one the kernel is running is interrupted, as :meth:`interrupt` would
        (SIGINT or ``interrupt_request``), but the queue is kept. Otherwise
        (finished, or no kernel) nothing happens.
        """
        await trio.lowlevel.checkpoint()
        if self.execution_queue.withdraw(msg_id):
            self.emit_event({"executionsDropped": {"msg_ids": [msg_id], "reason": "cancelled"}})
            if (watcher := self._watchers.get(msg_id)) is not None:
                watcher.drop("cancelled before it ran")
            return
        inc = self._current
        if inc is None or not self.execution_queue.is_active(msg_id):
            return
        self.log.info("interrupting the kernel: its execution %s was cancelled", msg_id)
        if self.spec.interrupt_mode is InterruptMode.SIGNAL:
            if inc.process is not None and inc.process.returncode is None:
                inc.process.interrupt()
            return
        # Our own request: its reply and busy/idle are not the client's.
        interrupt_id = short_msg_id()
        inc.internal.add(interrupt_id)
        with contextlib.suppress(TransportError, SessionStateError):
            await self._send_wire(inc, "control", "interrupt_request", {}, msg_id=interrupt_id)

    # ------------------------------------------------------- interrupt / kill

    async def interrupt(self) -> None:
        """Interrupt the kernel: SIGINT to its process group, or an ``interrupt_request``.

        Clears the execution queue in both modes.

        **Errors:** :class:`SessionStateError` (400, KS-10) when there is
        no kernel to interrupt.
        """
        inc = self._current
        if self.spec.interrupt_mode is InterruptMode.SIGNAL:
            if inc is None or inc.process is None or inc.process.returncode is not None:
                raise SessionStateError(
                    ErrorCode.SESSION_INTERRUPT_FAILED,
                    f"Failed to interrupt session {self.session_id}: No process ID to interrupt",
                    http_status=400,
                )
            self._clear_queue("interrupted")
            inc.process.interrupt()
            return
        if inc is None or inc.sockets is None:
            raise SessionStateError(
                ErrorCode.SESSION_INTERRUPT_FAILED,
                f"Failed to interrupt session {self.session_id}: the kernel is not running",
                http_status=400,
            )
        self._clear_queue("interrupted")
        await self._send_wire(inc, "control", "interrupt_request", {})

    async def kill(self) -> None:
        """Kill the kernel's whole process group now; returns once it is gone.

        **Errors:** KS-3 when the session has exited, KS-12 when there is no
        process (never started, or adopted).
        """
        if self.is_exited():
            raise SessionStateError(
                ErrorCode.SESSION_NOT_RUNNING,
                f"Session {self.session_id} is not running",
                http_status=400,
            )
        inc = self._current
        if inc is None or inc.process is None:
            raise SessionStateError(
                ErrorCode.NO_PROCESS,
                f"There is no process associated with session {self.session_id} (has it exited?)",
                http_status=400,
            )
        self._clear_queue("killed")
        inc.kill = True
        inc.process.kill_group()
        inc.scope.cancel(reason="kill requested")
        with trio.move_on_after(KILL_WAIT):
            await inc.done.wait()

    async def shutdown(self, *, restart: bool = False) -> None:
        """Stop the kernel politely, escalating as needed; returns when it is gone."""
        inc = self._current
        if inc is None:
            return
        inc.restart = restart
        inc.scope.cancel(reason="restart" if restart else "shutdown")
        await inc.done.wait()

    async def restart(
        self, working_directory: str | None, env: tuple[tuple[str, str, str], ...] | None
    ) -> None:
        """Stop the kernel (bounded) and start it again with new settings.

        **Errors:** KS-13 if a restart is already under way; any
        :class:`StartupError` from the new start.
        """
        if self._restarting:
            raise StartupError(
                ErrorCode.RESTART_FAILED, "Failed to restart kernel: Kernel is already restarting"
            )
        if self._busy_starting:
            raise SessionStateError(
                ErrorCode.RESTART_FAILED,
                "Failed to restart kernel: Kernel is still starting",
                "Wait for the start to finish, then restart",
                http_status=400,
            )
        self._restarting = True
        # Shielded like start(): both halves are bounded, and a client that
        # gives up half-way must not leave the session without a kernel.
        with trio.CancelScope(shield=True):
            await self._restart(working_directory, env)

    async def _restart(
        self, working_directory: str | None, env: tuple[tuple[str, str, str], ...] | None
    ) -> None:
        try:
            if working_directory:
                resolved = launch.resolve_directory(working_directory)
                if resolved is not None:
                    self.working_directory = resolved
                else:
                    self.log.warning(
                        "restart directory %s is not a directory; ignored",
                        working_directory,
                    )
            else:
                self._check_working_directory()
            if env:
                self.env_actions = env
            await self.shutdown(restart=True)
            await self.start()
        finally:
            self._restarting = False

    # ------------------------------------------------------------------ adopt

    async def adopt(self, info: ConnectionInfo) -> dict[str, Any]:
        """Connect to a kernel someone else started, signing with the key in ``info``."""
        if self.is_running():
            raise SessionStateError(
                ErrorCode.SESSION_RUNNING,
                f"Session {self.session_id} is already connected to a kernel",
                http_status=400,
            )
        try:
            signer = Signer(info.key.encode("ascii"), info.signature_scheme)
        except (LocalProtocolError, UnicodeEncodeError) as exc:
            raise KallichoreError(
                ErrorCode.SESSION_CONNECTION_FAILED,
                f"Cannot sign for the adopted kernel: {exc}",
                http_status=400,
            ) from None
        self._busy_starting = True
        try:
            with trio.CancelScope(shield=True):  # bounded by connection_timeout
                self._signer = signer
                result: dict[str, Any] = await self._nursery.start(self._run_adopted, info)
        finally:
            self._busy_starting = False
        return result

    async def _run_adopted(
        self,
        info: ConnectionInfo,
        *,
        task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        inc = _Incarnation(process=None)
        started = False
        failure: KallichoreError | None = None
        self._current = inc
        try:
            with inc.scope:
                async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
                    try:
                        with trio.fail_after(self.spec.connection_timeout):
                            inc.sockets = await stack.enter_async_context(
                                open_kernel_sockets(
                                    _endpoints(info),
                                    identity=self.session_id.encode(),
                                )
                            )
                            monitor = monitor_events(inc.sockets.hb, zmq.EVENT_DISCONNECTED)
                            stack.callback(monitor.close)
                            kernel_info = await self._connect(inc, nursery)
                    except trio.TooSlowError:
                        failure = KallichoreError(
                            ErrorCode.SESSION_CONNECTION_TIMEOUT,
                            "Timed out waiting to connect to session's ZeroMQ sockets after "
                            f"{self.spec.connection_timeout:g} seconds",
                        )
                        nursery.cancel_scope.cancel()
                    except TransportError as exc:
                        failure = KallichoreError(
                            ErrorCode.SESSION_CONNECTION_FAILED,
                            f"Failed to connect to session's ZeroMQ sockets: {exc}",
                        )
                        nursery.cancel_scope.cancel()
                    else:
                        self.connection_info = info
                        self._kernel_ready(kernel_info, extract_prompts=False)
                        inc.starting = False
                        started = True
                        task_status.started(kernel_info)
                        probe = AdoptedKernelProbe(info)
                        nursery.start_soon(probe.learn_process)
                        nursery.start_soon(self._monitor_heartbeat, inc, probe)
                        await monitor.receive_multipart()
                        self.log.info("the adopted kernel's sockets disconnected")
                        nursery.cancel_scope.cancel()
        except Exception:
            if not started:
                raise
            self.log.exception("internal error; disconnecting the adopted kernel")
        finally:
            inc.exit_code = 0
            if started:
                self._finish(inc, "all sockets disconnected from an adopted kernel")
            else:
                # A failed adoption leaves the session as it was.
                if inc.sockets is not None:
                    inc.sockets.close()
                self._current = None
                inc.done.set()
        if not started:
            raise failure or KallichoreError(
                ErrorCode.SESSION_CONNECTION_FAILED, "Failed to connect to session's ZeroMQ sockets"
            )

    def get_connection_info(self) -> ConnectionInfo:
        """The session's connection info, generating ports now if it has none (KS-18)."""
        if self.connection_info is None:
            try:
                self.connection_info = self._new_connection_info()
                self._held_ports = _ports_of(self.connection_info)
            except PortPickError as exc:
                raise KallichoreError(
                    ErrorCode.NO_CONNECTION_INFO,
                    f"Connection information is not available for session {self.session_id}: {exc}",
                ) from None
        return self.connection_info

    # ---------------------------------------------------------------- cleanup

    async def _stop_incarnation(self, inc: _Incarnation) -> None:
        """Shielded: ask, then force, the kernel to exit; then clean up."""
        with trio.CancelScope(shield=True):
            proc = inc.process
            polite = None
            if (
                proc is not None
                and proc.returncode is None
                and not inc.kill
                and not inc.starting
                and inc.sockets is not None
            ):
                restart = inc.restart

                async def polite_request() -> None:
                    await self._send_wire(inc, "control", "shutdown_request", {"restart": restart})

                polite = polite_request
            if proc is not None:
                if inc.kill:
                    proc.kill_group()
                inc.exit_code = await terminate_process_group(
                    proc,
                    polite=polite,
                    polite_grace=SHUTDOWN_POLITE_GRACE,
                    term_grace=SHUTDOWN_TERM_GRACE,
                    session_id=self.session_id,
                )
            # A failed start keeps its buffered frames (Kallichore drains them):
            # the output is also in the startup error, but nothing is lost.
            self._finish(inc, "child process exited")

    def _finish(self, inc: _Incarnation, reason: str) -> None:
        self._drops.flush()
        if inc.sockets is not None:
            inc.sockets.close()
        self._release(inc)
        if self._current is inc:
            self._current = None
        self.exit_code = inc.exit_code
        self._resource_procs.clear()
        self.set_status(SessionStatus.EXITED, reason)
        self.emit_event({"exited": inc.exit_code if inc.exit_code is not None else -1})
        for watcher in list(self._watchers.values()):
            watcher.drop("the kernel exited")
        inc.done.set()

    def _release(self, inc: _Incarnation) -> None:
        if inc.ports:
            self._ports.release(inc.ports)
            inc.ports = ()
        for path in inc.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        inc.files.clear()

    def _release_held_ports(self) -> None:
        if self._held_ports:
            self._ports.release(self._held_ports)
            self._held_ports = ()

    def release_resources(self) -> None:
        """Give back what a session holds without a kernel (on delete)."""
        self._release_held_ports()

    # --------------------------------------------------------------- resources

    def sample_resources(self, interval_ms: int) -> None:
        """Measure the kernel's process tree; emit and store ``resourceUsage``."""
        pid = self.process_id
        if pid is None or not self.connected:
            return
        self._resource_ticks += 1
        if pid not in self._resource_procs or self._resource_ticks % TREE_REFRESH_TICKS == 0:
            self._refresh_tree(pid)
        cpu = 0.0
        memory = 0
        threads = 0
        for child_pid, proc in list(self._resource_procs.items()):
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    memory += proc.memory_info().rss
                    threads += proc.num_threads()
            except (psutil.Error, OSError):
                del self._resource_procs[child_pid]
        usage = {
            "cpu_percent": round(cpu),
            "memory_bytes": memory,
            "thread_count": max(threads, 1),
            "sampling_period_ms": interval_ms,
            "timestamp": int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        }
        self.resource_usage = usage
        self.emit_event({"resourceUsage": usage})

    def _refresh_tree(self, pid: int) -> None:
        try:
            root = self._resource_procs.get(pid) or psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except (psutil.Error, OSError):
            return
        known = self._resource_procs
        self._resource_procs = {p.pid: known.get(p.pid, p) for p in tree}


def _output_emitter(session: KernelSession, inc: _Incarnation) -> Callable[[str, str], None]:
    """The callback the process's output pump calls for each line."""

    def emit(stream: str, line: str) -> None:
        if inc.starting:
            inc.startup_output.append(line)
        session._put(orjson.dumps({"kind": "kernel", "output": [stream, line]}), droppable=True)

    return emit


def _dealer(inc: _Incarnation, channel: str) -> TrioZmqSocket:
    assert inc.sockets is not None
    return inc.sockets.dealer(channel)


def _execution_state(msg: WireMessage) -> str | None:
    try:
        content = msg.content_json()
    except orjson.JSONDecodeError:
        return None
    state = content.get("execution_state") if isinstance(content, dict) else None
    return state if isinstance(state, str) else None


def _endpoints(info: ConnectionInfo | None) -> dict[str, str]:
    assert info is not None
    return {
        channel: info.endpoint(channel) for channel in ("shell", "control", "stdin", "iopub", "hb")
    }


def _ports_of(info: ConnectionInfo) -> tuple[int, ...]:
    return (info.control_port, info.shell_port, info.stdin_port, info.hb_port, info.iopub_port)


#: Longest session id used as is in a file name (NAME_MAX is 255 bytes).
MAX_FILE_STEM_BYTES = 200  # bytes


def _file_stem(session_id: str) -> str:
    """The session id, or its digest when it is too long for a file name."""
    if len(session_id.encode("utf-8", "surrogatepass")) <= MAX_FILE_STEM_BYTES:
        return session_id
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def _write_private(path: str, data: bytes) -> None:
    """Create a file only this user can read (it holds the session key).

    ``O_EXCL | O_NOFOLLOW``: never write through a file or link someone else
    placed there first.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
