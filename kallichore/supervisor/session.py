"""One kernel session: its spec, its state, and the kernel runs behind it.

A session outlives its kernels: each start, restart or adoption is a new
:class:`~kallichore.supervisor.incarnation.Incarnation` (one kernel run),
and the session is the lifecycle over them. Task tree::

    registry nursery
    └── Incarnation.run_spawned / run_adopted   one per start (see incarnation.py)
        └── KernelChannels readers, heartbeat   report to the session (SessionHost)

    channel bridge (one per attached client)
    └── KernelSession.deliver                   ClientFanout: the session's frames -> client

The session's :class:`~kallichore.session.state.LifecycleMachine` says what
it is doing with its kernel (starting, running, stopping, restarting) and
decides which requests it takes; every change is a transition of its table.

What the session holds besides: the execution queue (one
``execute_request`` at a time, in order), the request watchers of in-process
callers (:meth:`KernelSession.watch`), and the client fan-out
(:mod:`kallichore.supervisor.fanout`), which owns every write to the client.
Resource and working-directory polls are in :mod:`kallichore.supervisor.sampling`;
the REST JSON is built elsewhere, from a read-only view of the session.

A session never raises into the registry's nursery after a kernel started:
kernel exit, crash or a protocol fault is a status change, not an exception.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import orjson
import trio

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
from kallichore.session.execution_queue import ExecutionQueue
from kallichore.session.spec import InterruptMode, SessionSpec
from kallichore.session.state import (
    Lifecycle,
    LifecycleEvent,
    LifecycleMachine,
    SessionStatus,
    StatusTracker,
)
from kallichore.supervisor import launch
from kallichore.supervisor.backend import KernelBackend, LocalKernelBackend
from kallichore.supervisor.dropped_messages import DroppedMessageLog
from kallichore.supervisor.fanout import ClientAttachment, ClientConnection, ClientFanout
from kallichore.supervisor.incarnation import (
    SHUTDOWN_POLITE_GRACE,
    SHUTDOWN_TERM_GRACE,
    Incarnation,
    ports_of,
)
from kallichore.supervisor.kernel_channels import CHANNELS_TO_KERNEL
from kallichore.supervisor.lifeline import Lifeline
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.ports import PortPickError, PortReservations, is_port_conflict
from kallichore.supervisor.pumps import OpenGate, PumpGate
from kallichore.supervisor.sampling import ProcessTable, ResourceSampler, WorkingDirectoryProbe
from kallichore.wire.codec import Signer
from kallichore.wire.connection_file import (
    ConnectionInfo,
    generate_key,
    uses_registration_handshake,
)
from kallichore.wire.message import WireMessage

__all__ = [
    "SHUTDOWN_POLITE_GRACE",
    "SHUTDOWN_TERM_GRACE",
    "ClientAttachment",
    "KernelSession",
    "RequestWatcher",
    "SessionSpec",
]

logger = logging.getLogger(__name__)

#: Bound on a kill's wait for the process to be gone.
KILL_WAIT = 5.0  # seconds
#: Starts of a kernel that lost a race for one of its ports (first included).
PORT_CONFLICT_ATTEMPTS = 3  # attempts


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    #: Spawns the kernels and reaches their sockets.
    _backend: KernelBackend = attrs.field(factory=LocalKernelBackend)
    key: str = attrs.field(factory=generate_key, repr=False)
    created: dt.datetime = attrs.field(factory=_utc_now)
    tracker: StatusTracker = attrs.field(factory=StatusTracker)
    kernel_info: dict[str, Any] = attrs.field(factory=dict)
    initial_env: dict[str, str] = attrs.field(factory=dict)
    connection_info: ConnectionInfo | None = attrs.field(default=None, repr=False)
    execution_queue: ExecutionQueue = attrs.field(factory=ExecutionQueue)
    #: The session's frames on their way to its client.
    fanout: ClientFanout = attrs.field(factory=ClientFanout)
    #: Shared by the server's sessions: output pumps wait for REST requests.
    gate: PumpGate = attrs.field(factory=OpenGate)
    resource_usage: dict[str, int] | None = None
    exit_code: int | None = None
    working_directory: str = attrs.field(init=False)
    env_actions: tuple[tuple[str, str, str], ...] = attrs.field(init=False)
    input_prompt: str = attrs.field(init=False)
    continuation_prompt: str = attrs.field(init=False)
    # The current incarnation, while one runs.
    _current: Incarnation | None = attrs.field(default=None, init=False)
    #: What the session is doing with its kernel (start, run, stop, restart).
    lifecycle: LifecycleMachine = attrs.field(factory=LifecycleMachine, init=False)
    _drops: DroppedMessageLog = attrs.field(init=False, repr=False)
    # Kernel messages -> client frames (caches the current parent header).
    _envelopes: EnvelopeEncoder = attrs.field(factory=EnvelopeEncoder, init=False, repr=False)
    _sampler: ResourceSampler = attrs.field(factory=ResourceSampler, init=False, repr=False)
    _cwd_probe: WorkingDirectoryProbe = attrs.field(
        factory=WorkingDirectoryProbe, init=False, repr=False
    )
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
        return current.pid if current is not None else None

    @property
    def connected(self) -> bool:
        """Whether a client is attached."""
        return self.fanout.connected

    @property
    def socket_path(self) -> str | None:
        """The channel socket the attached client came through, if any."""
        return self.fanout.socket_path

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
        return self.lifecycle.has_kernel_activity

    def _finish_start(self, up: LifecycleEvent, down: LifecycleEvent) -> None:
        """A start (or restart) ended: with a kernel running, or without one."""
        self.lifecycle.apply(up if self._current is not None else down)

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
        self.fanout.put(orjson.dumps({"kind": "kernel", **event}), droppable=False, wake=wake)

    def put_frame(self, frame: bytes, *, droppable: bool) -> None:
        """Queue an encoded frame for the client."""
        self.fanout.put(frame, droppable=droppable)

    def wake_client(self) -> None:
        """Hand frames queued without a wake-up to the client now."""
        self.fanout.wake()

    def forward(
        self, channel: str, msg: WireMessage, *, droppable: bool = False, wake: bool = True
    ) -> None:
        """A kernel message for the client (and for whoever watches its request)."""
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
        self.fanout.put(frame, droppable=droppable, wake=wake)

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
        """Make a new client the session's one client; the previous one is kicked."""
        attachment, took_over = self.fanout.attach(socket_path=socket_path)
        self._on_activity()
        self.log.info("client attached%s", " (took over)" if took_over else "")
        return attachment

    def detach_client(self, attachment: ClientAttachment) -> None:
        """A client connection ended; only the current client clears ``connected``."""
        if self.fanout.detach(attachment):
            self.log.info("client detached")

    async def deliver(self, attachment: ClientAttachment, conn: ClientConnection) -> None:
        """Write the session's frames to an attached client's connection.

        See :meth:`ClientFanout.deliver`: returns when the client was taken
        over, ``conn`` failed, or ``attachment.stop_delivery()`` was called.
        """
        await self.fanout.deliver(attachment, conn, self.log)

    # ------------------------------------------------------------------- start

    def _incarnation(self, signer: Signer) -> Incarnation:
        return Incarnation(
            self,
            self.spec,
            signer,
            self.policy.allow_unsigned_messages,
            self.gate,
            self._drops,
            self._ports,
            key=self.key,
            lifeline=self._lifeline,
            files_dir=self._files_dir,
            backend=self._backend,
        )

    async def start(self) -> dict[str, Any]:
        """Start the kernel; returns its ``kernel_info_reply`` content.

        **Errors:** :class:`SessionStateError` (400) if a kernel is running or
        starting; :class:`StartupError` (500) for every failure to start.

        **Cancellation:** if the caller is cancelled mid-start the kernel
        keeps starting in the registry's nursery (its lifetime belongs to the
        session, not to the HTTP request).
        """
        if not self.lifecycle.can(LifecycleEvent.BEGIN_START):
            raise SessionStateError(
                ErrorCode.SESSION_RUNNING,
                f"Session {self.session_id} is already running",
                "Stop or restart the session instead of starting it again",
                http_status=400,
            )
        self._check_startable()
        self.lifecycle.apply(LifecycleEvent.BEGIN_START)
        try:
            return await self._start_kernel()
        finally:
            self._finish_start(LifecycleEvent.STARTED, LifecycleEvent.START_FAILED)

    def _check_startable(self) -> None:
        if not self.spec.argv:
            raise StartupError(
                ErrorCode.PROCESS_START_FAILED,
                "Failed to start process for session: No arguments provided",
            )
        fd_limit.check_headroom()

    async def _start_kernel(self) -> dict[str, Any]:
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
            inc = self._incarnation(Signer(self.key.encode("ascii")))
            try:
                info: dict[str, Any] = await self._nursery.start(
                    inc.run_spawned, self.env_actions, self.working_directory
                )
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

    def new_connection_info(self) -> ConnectionInfo:
        """Connection info with freshly reserved ports and the session's key."""
        ports = self._ports.reserve(5)
        return ConnectionInfo(
            control_port=ports[0],
            shell_port=ports[1],
            stdin_port=ports[2],
            hb_port=ports[3],
            iopub_port=ports[4],
            key=self.key,
        )

    # --------------------------------------------- reports from the kernel run

    def incarnation_running(self, inc: Incarnation) -> None:
        """``inc`` is the session's kernel from now on."""
        self._current = inc

    def incarnation_abandoned(self, inc: Incarnation) -> None:
        """``inc`` never started (a failed adoption): the session is as it was."""
        if self._current is inc:
            self._current = None

    def incarnation_ended(self, inc: Incarnation, reason: str) -> None:
        """``inc`` has ended: the session's kernel has exited."""
        self._drops.flush()
        if self._current is inc:
            self._current = None
            self.lifecycle.apply(LifecycleEvent.KERNEL_EXITED)
        self.exit_code = inc.exit_code
        self._sampler.forget()
        self.set_status(SessionStatus.EXITED, reason)
        self.emit_event({"exited": inc.exit_code if inc.exit_code is not None else -1})
        for watcher in list(self._watchers.values()):
            watcher.drop("the kernel exited")

    def kernel_ready(self, kernel_info: dict[str, Any], *, extract_prompts: bool) -> None:
        """The kernel answered ``kernel_info_request``; it is idle now."""
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

    def is_executing(self) -> bool:
        """Busy: reported so, or running an execute_request whose busy may be unread."""
        return self.status is SessionStatus.BUSY or self.execution_queue.active is not None

    async def kernel_idle(self, parent_msg_type: str | None) -> None:
        """After an idle status reached the client: follow the cwd, release the next execution."""
        if parent_msg_type == "execute_request":
            self._check_working_directory()
        if self.execution_queue.active is not None or len(self.execution_queue):
            nxt = self.execution_queue.release_next()
            inc = self._current
            if nxt is not None and inc is not None and inc.channels is not None:
                await inc.channels.send_client_message(nxt)

    def _check_working_directory(self) -> None:
        pid = self.process_id
        if pid is None:
            return
        cwd = self._cwd_probe.read(pid)
        if cwd and cwd != self.working_directory:
            self.working_directory = cwd
            self.emit_event({"workingDirChanged": cwd})

    # ------------------------------------------------------------ from client

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
        if inc is None or inc.channels is None:
            self.log.warning("no kernel; dropping client %s", msg_type)
            return
        if channel not in CHANNELS_TO_KERNEL:
            self.log.warning("dropping client %s on channel %r", msg_type, channel)
            return
        if msg_type == "execute_request":
            if not self.execution_queue.submit(message):
                self.emit_event({"executionQueued": str(header.get("msg_id", ""))})
                return
        elif msg_type in ("interrupt_request", "shutdown_request"):
            self._clear_queue(msg_type)
        await inc.channels.send_client_message(message)

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
        if inc is None or inc.channels is None:
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
        if inc.channels is not None:
            await inc.channels.send_internal_interrupt()

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
        if inc is None or inc.channels is None:
            raise SessionStateError(
                ErrorCode.SESSION_INTERRUPT_FAILED,
                f"Failed to interrupt session {self.session_id}: the kernel is not running",
                http_status=400,
            )
        self._clear_queue("interrupted")
        await inc.channels.send("control", "interrupt_request", {})

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
        self.lifecycle.apply(LifecycleEvent.STOP)
        inc.kill_now("kill requested")
        with trio.move_on_after(KILL_WAIT):
            await inc.done.wait()

    async def shutdown(self, *, restart: bool = False) -> None:
        """Stop the kernel politely, escalating as needed; returns when it is gone."""
        inc = self._current
        if inc is None:
            return
        self.lifecycle.apply(LifecycleEvent.STOP)
        inc.request_stop(restart=restart)
        await inc.done.wait()

    async def restart(
        self, working_directory: str | None, env: tuple[tuple[str, str, str], ...] | None
    ) -> None:
        """Stop the kernel (bounded) and start it again with new settings.

        **Errors:** KS-13 if a restart is already under way; any
        :class:`StartupError` from the new start.
        """
        phase = self.lifecycle.phase
        if phase is Lifecycle.RESTARTING:
            raise StartupError(
                ErrorCode.RESTART_FAILED, "Failed to restart kernel: Kernel is already restarting"
            )
        if phase is Lifecycle.STARTING:
            raise SessionStateError(
                ErrorCode.RESTART_FAILED,
                "Failed to restart kernel: Kernel is still starting",
                "Wait for the start to finish, then restart",
                http_status=400,
            )
        self.lifecycle.apply(LifecycleEvent.BEGIN_RESTART)
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
            self._check_startable()
            await self._start_kernel()
        finally:
            self._finish_start(LifecycleEvent.RESTARTED, LifecycleEvent.RESTART_FAILED)

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
        self.lifecycle.apply(LifecycleEvent.BEGIN_START)
        try:
            with trio.CancelScope(shield=True):  # bounded by connection_timeout
                inc = self._incarnation(signer)
                result: dict[str, Any] = await self._nursery.start(inc.run_adopted, info)
        finally:
            self._finish_start(LifecycleEvent.STARTED, LifecycleEvent.START_FAILED)
        return result

    def get_connection_info(self) -> ConnectionInfo:
        """The session's connection info, generating ports now if it has none (KS-18)."""
        if self.connection_info is None:
            try:
                self.connection_info = self.new_connection_info()
                self._held_ports = ports_of(self.connection_info)
            except PortPickError as exc:
                raise KallichoreError(
                    ErrorCode.NO_CONNECTION_INFO,
                    f"Connection information is not available for session {self.session_id}: {exc}",
                ) from None
        return self.connection_info

    # ---------------------------------------------------------------- cleanup

    def release_held_ports(self) -> None:
        """Give back ports reserved by :meth:`get_connection_info` (a start writes new ones)."""
        if self._held_ports:
            self._ports.release(self._held_ports)
            self._held_ports = ()

    def release_resources(self) -> None:
        """Give back what a session holds without a kernel (on delete)."""
        self.release_held_ports()

    # --------------------------------------------------------------- resources

    def sample_resources(self, interval_ms: int, processes: ProcessTable) -> None:
        """Measure the kernel's process tree; emit and store ``resourceUsage``.

        ``processes`` is the host's process table, shared by every session.
        """
        pid = self.process_id
        if pid is None or not self.connected:
            return
        usage = self._sampler.sample(pid, interval_ms, processes)
        self.resource_usage = usage
        self.emit_event({"resourceUsage": usage})
