"""One run of a kernel: spawn (or adopt), connect, pump messages, stop.

A session (:mod:`kallichore.supervisor.session`) lives across restarts; each
run of its kernel is one :class:`Incarnation`, made fresh by every start,
restart or adoption. Task tree of a running incarnation::

    registry nursery
    └── Incarnation.run_spawned / run_adopted    owns the run's nurseries
        ├── KernelProcess.pump_output            stdout/stderr lines -> ``output`` events
        └── the incarnation's scope
            ├── Incarnation.watch_exit           waits for the process; cancels the rest on exit
            ├── KernelChannels._read_iopub       status tracking, forwarding
            ├── KernelChannels._read_replies     shell / control / stdin
            └── KernelChannels.monitor_heartbeat offline / back online (/ gone, if adopted)

The channels (:mod:`kallichore.supervisor.kernel_channels`) exist once the
sockets are open; the run owns the process, the scope, the ports and files.

Start is ``await nursery.start(incarnation.run_spawned)``: everything before
``task_status.started(kernel_info)`` -- spawning, the JEP 66 handshake or the
connection file, connecting, the first ``kernel_info_request`` -- raises
straight out of ``start()`` as a :class:`~kallichore.errors.StartupError`. The
connect phase races the process: if the kernel dies first, the error comes at
once with its exit code and output, not after the timeout. The whole start is
bounded by ``connection_timeout``; on timeout the kernel is killed.

Stopping is cancellation of the incarnation's scope. Before the scope is
left, a still-running kernel gets a ``shutdown_request`` on control (unless
the stop is a kill) and a bounded wait; then the ladder in
:func:`~kallichore.supervisor.process.terminate_process_group` (SIGTERM, then
SIGKILL, then a sweep of the process group) runs shielded. Every path ends in
:meth:`SessionHost.incarnation_ended` (status ``exited``, the ``exited``
event), after the run's sockets are closed and its ports and files released.

The kernel's process and sockets come from the session's
:class:`~kallichore.supervisor.backend.KernelBackend` (real processes over
ZeroMQ by default; fake kernels in memory in the unit tests). Everything the run does to its session goes
through the small :class:`SessionHost` interface.

An incarnation never raises into the registry's nursery after ``started()``:
kernel exit, crash or a protocol fault is a status change, not an exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import attrs
import orjson
import trio

from kallichore.errors import ErrorCode, KallichoreError, RemoteProtocolError, StartupError
from kallichore.session.state import SessionStatus
from kallichore.supervisor import launch
from kallichore.supervisor.backend import KernelBackend, LocalKernelBackend
from kallichore.supervisor.dropped_messages import DroppedMessageLog
from kallichore.supervisor.kernel_channels import (
    ChannelHost,
    KernelChannels,
    LaunchSpec,
    wire_header,
)
from kallichore.supervisor.lifeline import Lifeline
from kallichore.supervisor.liveness import AdoptedKernelProbe
from kallichore.supervisor.ports import PortPickError, PortReservations
from kallichore.supervisor.process import (
    SupervisedProcess,
    describe_status,
    terminate_process_group,
)
from kallichore.supervisor.pumps import PumpGate
from kallichore.transport.base import (
    CHANNELS,
    FrameSocket,
    KernelConnection,
    KernelTransport,
    TransportError,
)
from kallichore.wire.codec import Deserializer, Signer, serialize
from kallichore.wire.connection_file import (
    ConnectionInfo,
    encode_connection_file,
    encode_registration_file,
    handshake_reply_content,
    parse_handshake_request,
    uses_registration_handshake,
)
from kallichore.wire.message import WireMessage, short_msg_id

__all__ = [
    "SHUTDOWN_POLITE_GRACE",
    "SHUTDOWN_TERM_GRACE",
    "Incarnation",
    "SessionHost",
    "open_sockets",
    "ports_of",
]

logger = logging.getLogger(__name__)

#: Wait for a kernel to exit after ``shutdown_request``.
SHUTDOWN_POLITE_GRACE = 5.0  # seconds
#: Wait for a kernel to exit after SIGTERM.
SHUTDOWN_TERM_GRACE = 3.0  # seconds
#: Longest session id used as is in a file name (NAME_MAX is 255 bytes).
MAX_FILE_STEM_BYTES = 200  # bytes


class SessionHost(ChannelHost, Protocol):
    """What a kernel run needs from (and reports to) its session."""

    #: The session's connection info; a run sets it once the ports are known.
    connection_info: ConnectionInfo | None
    #: The environment the kernel was started with.
    initial_env: dict[str, str]

    def emit_event(self, event: dict[str, Any], *, wake: bool = True) -> None:
        """Queue a ``kind: kernel`` event for the client."""

    def put_frame(self, frame: bytes, *, droppable: bool) -> None:
        """Queue an encoded frame for the client."""

    def is_executing(self) -> bool:
        """Whether the session is busy or an execution is under way."""

    def kernel_ready(self, kernel_info: dict[str, Any], *, extract_prompts: bool) -> None:
        """The kernel answered ``kernel_info_request``; it is idle now."""

    def incarnation_running(self, inc: Incarnation) -> None:
        """``inc`` is the session's kernel from now on (its process or connection exists)."""

    def incarnation_abandoned(self, inc: Incarnation) -> None:
        """``inc`` never started (a failed adoption): leave the session as it was."""

    def incarnation_ended(self, inc: Incarnation, reason: str) -> None:
        """``inc`` has ended (its sockets are closed, its ports released)."""

    def release_held_ports(self) -> None:
        """Give back ports reserved for a kernel someone else would start."""

    def new_connection_info(self) -> ConnectionInfo:
        """Connection info with freshly reserved ports and the session's key."""


@contextlib.asynccontextmanager
async def open_sockets(
    transport: KernelTransport,
    info: ConnectionInfo,
    identity: bytes,
    *,
    watch_disconnect: bool = False,
) -> AsyncIterator[KernelConnection]:
    """Connect to a kernel's five sockets: the one place a run gets its connection."""
    endpoints = {channel: info.endpoint(channel) for channel in CHANNELS}
    async with transport.open_kernel_connection(
        endpoints, identity=identity, watch_disconnect=watch_disconnect
    ) as sockets:
        yield sockets


def ports_of(info: ConnectionInfo) -> tuple[int, ...]:
    """The five ports of a connection."""
    return (info.control_port, info.shell_port, info.stdin_port, info.hb_port, info.iopub_port)


@attrs.define(eq=False)
class Incarnation:
    """One run of a kernel (a process, or an adopted connection)."""

    host: SessionHost
    spec: LaunchSpec
    #: Signs and checks this kernel's messages (an adopted one's own key).
    signer: Signer
    policy_allows_unsigned: bool
    gate: PumpGate
    drops: DroppedMessageLog
    port_reservations: PortReservations
    #: The session's key, written into the files this run hands the kernel.
    key: str = attrs.field(repr=False, default="")
    lifeline: Lifeline | None = None
    files_dir: str = ""
    #: Spawns the kernel and reaches its sockets.
    backend: KernelBackend = attrs.field(factory=LocalKernelBackend)
    process: SupervisedProcess | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: The kernel's channels, once its sockets are open.
    channels: KernelChannels | None = None
    # Set when the incarnation's cleanup is complete.
    done: trio.Event = attrs.field(factory=trio.Event)
    exit_code: int | None = None
    # Kill skips the polite shutdown_request.
    kill: bool = False
    restart: bool = False
    # Output lines captured while starting, for a startup error.
    startup_output: list[str] = attrs.field(factory=list)
    starting: bool = True
    ports: tuple[int, ...] = ()
    # Files written for this kernel (they hold the key); removed when it ends.
    files: list[str] = attrs.field(factory=list)

    @property
    def session_id(self) -> str:
        return self.spec.session_id

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.host.log

    @property
    def pid(self) -> int | None:
        """PID of the kernel process while it runs."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return None
        return proc.pid

    # ------------------------------------------------------------- spawned

    async def run_spawned(
        self,
        env_actions: tuple[tuple[str, str, str], ...],
        working_directory: str,
        *,
        task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start a kernel process and run it until it exits or is stopped."""
        self.host.set_status(SessionStatus.STARTING, "start API called")
        jep66 = uses_registration_handshake(self.spec.protocol_version)
        async with contextlib.AsyncExitStack() as registration:
            reg_sock, plan = await self._launch(env_actions, working_directory, registration)
            assert self.process is not None
            self.log.info("started process %d: %s", self.process.pid, " ".join(plan.argv))
            self.host.incarnation_running(self)
            run = _SpawnedRun(self, plan, reg_sock, registration)
            await run.run(task_status)
        if not run.started:
            failure = run.failure or self._startup_failed(
                plan, during_handshake=jep66 and self.host.connection_info is None
            )
            raise failure

    async def _launch(
        self,
        env_actions: tuple[tuple[str, str, str], ...],
        working_directory: str,
        registration: contextlib.AsyncExitStack,
    ) -> tuple[FrameSocket | None, launch.LaunchPlan]:
        """Write the kernel's file and spawn it; every failure is a StartupError."""
        try:
            return await self._spawn(env_actions, working_directory, registration)
        except Exception as exc:
            # Whatever failed before the kernel existed: release what was
            # reserved, record the exit, and report a startup error.
            self._release()
            self.host.set_status(SessionStatus.EXITED, f"failed to start: {exc}")
            if isinstance(exc, StartupError):
                raise
            if not isinstance(exc, TransportError | OSError | PortPickError | ValueError):
                self.log.exception("unexpected error while starting")
            raise StartupError(
                ErrorCode.PROCESS_START_FAILED, f"Failed to start process for session: {exc}"
            ) from None

    async def _spawn(
        self,
        env_actions: tuple[tuple[str, str, str], ...],
        working_directory: str,
        registration: contextlib.AsyncExitStack,
    ) -> tuple[FrameSocket | None, launch.LaunchPlan]:
        spec, host = self.spec, self.host
        env = launch.resolve_environment(dict(os.environ), env_actions)
        host.initial_env = env
        cwd, warning = launch.choose_working_directory(working_directory, os.getcwd())
        if warning:
            self.log.warning("%s", warning)
        # Ports reserved by an earlier GET connection_info are not reused:
        # a start always writes a fresh connection file (as Kallichore).
        host.release_held_ports()
        reg_sock: FrameSocket | None = None
        if uses_registration_handshake(spec.protocol_version):
            host.connection_info = None  # the kernel will report its ports
            reg_sock, reg_port = await registration.enter_async_context(
                self.backend.transport.open_registration()
            )
            path = self._private_file("registration")
            _write_private(path, encode_registration_file(key=self.key, registration_port=reg_port))
        else:
            info = host.new_connection_info()
            self.ports = ports_of(info)
            path = self._private_file("connection")
            _write_private(path, encode_connection_file(info))
            host.connection_info = info
        plan = launch.build_command(
            launch.substitute_connection_file(spec.argv, path),
            startup_environment=spec.startup_environment.value,
            startup_arg=spec.startup_environment_arg,
            working_directory=cwd,
            server_shell=os.environ.get("SHELL"),
            env=env,
        )
        try:
            self.process = await self.backend.spawn(
                list(plan.argv), env=env, cwd=cwd, lifeline=self.lifeline
            )
        except OSError as exc:
            raise StartupError(
                ErrorCode.PROCESS_START_FAILED,
                f"Failed to start process for session: {exc}",
                exit_code=exc.errno,
            ) from None
        return reg_sock, plan

    def _private_file(self, kind: str) -> str:
        path = os.path.join(self.files_dir, f"{kind}_{_file_stem(self.session_id)}.json")
        self.files.append(path)
        return path

    def _startup_failed(
        self, plan: launch.LaunchPlan | None, *, during_handshake: bool
    ) -> StartupError:
        raw_output = "".join(self.startup_output)
        output = launch.clean_startup_output(raw_output)
        code = self.exit_code if self.exit_code is not None else -1
        mode = plan.mode if plan else "none"
        shell = plan.shell if plan else None
        startup_arg = plan.startup_arg if plan else None
        if during_handshake:
            message = "The kernel exited before a connection could be established"
            prefix = launch.startup_context_prefix(mode, shell, startup_arg)
            return StartupError(
                ErrorCode.EXITED_BEFORE_CONNECTION,
                message,
                prefix + message,
                exit_code=code,
                output=output,
            )
        # The details look for the startup markers, so they read the raw output.
        details = launch.startup_failure_details(
            mode, shell, startup_arg, raw_output, connect_failure=False
        )
        return StartupError(
            ErrorCode.PROCESS_ABNORMAL_EXIT,
            f"The process exited abnormally ({describe_status(code)})",
            details,
            exit_code=code,
            output=output,
        )

    def connect_timeout_error(
        self, plan: launch.LaunchPlan, *, handshake_pending: bool
    ) -> StartupError:
        """The startup error for a connect phase that ran out of time."""
        raw_output = "".join(self.startup_output)
        if handshake_pending:
            code, message = (
                ErrorCode.HANDSHAKE_FAILED,
                (
                    f"JEP 66 handshake failed for session {self.session_id}: "
                    "Timeout waiting for handshake"
                ),
            )
        else:
            code, message = (
                ErrorCode.SESSION_CONNECTION_TIMEOUT,
                (
                    "Timed out waiting to connect to session's ZeroMQ "
                    f"sockets after {self.spec.connection_timeout:g} seconds"
                ),
            )
        return StartupError(
            code,
            message,
            launch.startup_failure_details(
                plan.mode, plan.shell, plan.startup_arg, raw_output, connect_failure=True
            ),
            exit_code=None if handshake_pending else 130,
            output=launch.clean_startup_output(raw_output),
        )

    async def registration_handshake(self, reg: FrameSocket) -> ConnectionInfo:
        """Answer the kernel's JEP 66 handshake request; its ports."""
        deserializer = Deserializer(self.signer, None, accept_unsigned=False)
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
                header=wire_header(self.spec, "handshake_reply", short_msg_id()),
                parent_header=msg.header,
                metadata=b"{}",
                content=orjson.dumps(handshake_reply_content()),
            )
            await reg.send_multipart(serialize(reply, self.signer))
            info = ConnectionInfo(**ports, key=self.key)
            self.host.emit_event({"handshakeCompleted": [self.session_id, info.to_json_dict()]})
            return info

    def output_emitter(self) -> Callable[[str, str], None]:
        """The callback the process's output pump calls for each line."""
        put = self.host.put_frame

        def emit(stream: str, line: str) -> None:
            if self.starting:
                self.startup_output.append(line)
            put(orjson.dumps({"kind": "kernel", "output": [stream, line]}), droppable=True)

        return emit

    # ------------------------------------------------------------- adopted

    async def run_adopted(
        self,
        info: ConnectionInfo,
        *,
        task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect to a kernel someone else started; run until its sockets disconnect."""
        self.host.incarnation_running(self)
        run = _AdoptedRun(self, info)
        try:
            with self.scope:
                await run.run(task_status)
        except Exception:
            if not run.started:
                raise
            self.log.exception("internal error; disconnecting the adopted kernel")
        finally:
            self.exit_code = 0
            if run.started:
                self.finish("all sockets disconnected from an adopted kernel")
            else:
                # A failed adoption leaves the session as it was.
                if self.channels is not None:
                    self.channels.close()
                self.host.incarnation_abandoned(self)
                self.done.set()
        if not run.started:
            raise run.failure or KallichoreError(
                ErrorCode.SESSION_CONNECTION_FAILED, "Failed to connect to session's ZeroMQ sockets"
            )

    # ----------------------------------------------------------- the run

    async def open_channels(
        self,
        stack: contextlib.AsyncExitStack,
        info: ConnectionInfo,
        *,
        watch_disconnect: bool = False,
    ) -> KernelChannels:
        """Connect to the kernel's sockets (closed with ``stack``)."""
        sockets = await stack.enter_async_context(
            open_sockets(
                self.backend.transport,
                info,
                self.session_id.encode(),
                watch_disconnect=watch_disconnect,
            )
        )
        self.channels = KernelChannels(
            self.host,
            self.spec,
            sockets,
            self.signer,
            self.policy_allows_unsigned,
            self.gate,
            self.drops,
        )
        return self.channels

    async def monitor_heartbeat(self, probe: AdoptedKernelProbe | None = None) -> None:
        """Follow the kernel's heartbeat; a kernel found gone ends the run."""
        assert self.channels is not None
        await self.channels.monitor_heartbeat(self.scope.cancel, probe)

    async def watch_exit(self) -> None:
        """Wait for the process to exit; then end the incarnation."""
        assert self.process is not None
        self.exit_code = await self.process.wait()
        # Busy: reported so, or running an execute_request whose busy status
        # may still be unread. A kill or shutdown cancels this wait first.
        status = describe_status(self.exit_code)
        if self.host.is_executing() and not self.scope.cancel_called:
            self.log.warning("kernel process %d died while busy (%s)", self.process.pid, status)
        else:
            self.log.info("kernel process %d exited (%s)", self.process.pid, status)
        self.scope.cancel()

    # ---------------------------------------------------------------- stop

    def kill_now(self, reason: str) -> None:
        """Kill the process group now and end the run (no polite request)."""
        assert self.process is not None
        self.kill = True
        self.process.kill_group()
        self.scope.cancel(reason=reason)

    def request_stop(self, *, restart: bool = False) -> None:
        """End the run: a polite ``shutdown_request`` first, then the ladder."""
        self.restart = restart
        self.scope.cancel(reason="restart" if restart else "shutdown")

    async def stop(self) -> None:
        """Shielded: ask, then force, the kernel to exit; then clean up."""
        with trio.CancelScope(shield=True):
            proc = self.process
            polite = None
            if (
                proc is not None
                and proc.returncode is None
                and not self.kill
                and not self.starting
                and self.channels is not None
            ):
                channels, restart = self.channels, self.restart

                async def polite_request() -> None:
                    await channels.send("control", "shutdown_request", {"restart": restart})

                polite = polite_request
            if proc is not None:
                if self.kill:
                    proc.kill_group()
                self.exit_code = await terminate_process_group(
                    proc,
                    polite=polite,
                    polite_grace=SHUTDOWN_POLITE_GRACE,
                    term_grace=SHUTDOWN_TERM_GRACE,
                    session_id=self.session_id,
                )
            # A failed start keeps its buffered frames (Kallichore drains them):
            # the output is also in the startup error, but nothing is lost.
            self.finish("child process exited")

    def finish(self, reason: str) -> None:
        """Close, release, tell the session; then the run is done."""
        if self.channels is not None:
            self.channels.close()
        self._release()
        self.host.incarnation_ended(self, reason)
        self.done.set()

    def _release(self) -> None:
        if self.ports:
            self.port_reservations.release(self.ports)
            self.ports = ()
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.files.clear()


@attrs.define(eq=False)
class _SpawnedRun:
    """The connect-and-run phase of a spawned kernel (its nurseries and outcome)."""

    inc: Incarnation
    plan: launch.LaunchPlan
    reg_sock: FrameSocket | None
    registration: contextlib.AsyncExitStack
    started: bool = False
    failure: StartupError | None = None

    async def run(self, task_status: trio.TaskStatus[dict[str, Any]]) -> None:
        inc = self.inc
        assert inc.process is not None
        # The output pump lives outside the incarnation's scope: when the
        # kernel dies it must still read the last lines (a startup error
        # reports them); the shutdown ladder closes the pipes, which ends it.
        async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as output_nursery:
            output_nursery.start_soon(inc.process.pump_output, inc.output_emitter())
            try:
                with inc.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(inc.watch_exit)
                        await self._connect_and_serve(stack, nursery, task_status)
            except Exception:
                if not self.started:
                    raise
                # A bug in a pump must not reach the registry's nursery
                # (it would take every session and the server down):
                # treat it as a crash of this kernel.
                inc.log.exception("internal error; stopping the kernel")
            finally:
                await inc.stop()

    async def _connect_and_serve(
        self,
        stack: contextlib.AsyncExitStack,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[dict[str, Any]],
    ) -> None:
        inc, host = self.inc, self.inc.host
        try:
            with trio.fail_after(inc.spec.connection_timeout):
                if self.reg_sock is not None:
                    host.connection_info = await inc.registration_handshake(self.reg_sock)
                    await self.registration.aclose()
                assert host.connection_info is not None
                channels = await inc.open_channels(stack, host.connection_info)
                kernel_info = await channels.connect(nursery)
        except trio.TooSlowError:
            handshake_pending = self.reg_sock is not None and host.connection_info is None
            self._fail(
                nursery, inc.connect_timeout_error(self.plan, handshake_pending=handshake_pending)
            )
        except TransportError as exc:
            self._fail(
                nursery,
                StartupError(
                    ErrorCode.SESSION_CONNECTION_FAILED,
                    f"Failed to connect to session's ZeroMQ sockets: {exc}",
                    exit_code=130,
                ),
            )
        else:
            host.kernel_ready(kernel_info, extract_prompts=True)
            inc.starting = False
            self.started = True
            task_status.started(kernel_info)
            nursery.start_soon(inc.monitor_heartbeat)
            await trio.sleep_forever()

    def _fail(self, nursery: trio.Nursery, failure: StartupError) -> None:
        self.failure = failure
        self.inc.kill = True
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class _AdoptedRun:
    """The run of an adopted kernel: connect, serve until its sockets disconnect."""

    inc: Incarnation
    info: ConnectionInfo
    started: bool = False
    failure: KallichoreError | None = None

    async def run(self, task_status: trio.TaskStatus[dict[str, Any]]) -> None:
        inc = self.inc
        async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
            try:
                with trio.fail_after(inc.spec.connection_timeout):
                    channels = await inc.open_channels(stack, self.info, watch_disconnect=True)
                    kernel_info = await channels.connect(nursery)
            except trio.TooSlowError:
                self.failure = KallichoreError(
                    ErrorCode.SESSION_CONNECTION_TIMEOUT,
                    "Timed out waiting to connect to session's ZeroMQ sockets after "
                    f"{inc.spec.connection_timeout:g} seconds",
                )
                nursery.cancel_scope.cancel()
            except TransportError as exc:
                self.failure = KallichoreError(
                    ErrorCode.SESSION_CONNECTION_FAILED,
                    f"Failed to connect to session's ZeroMQ sockets: {exc}",
                )
                nursery.cancel_scope.cancel()
            else:
                await self._serve(nursery, channels.sockets, kernel_info, task_status)

    async def _serve(
        self,
        nursery: trio.Nursery,
        sockets: KernelConnection,
        kernel_info: dict[str, Any],
        task_status: trio.TaskStatus[dict[str, Any]],
    ) -> None:
        inc = self.inc
        inc.host.connection_info = self.info
        inc.host.kernel_ready(kernel_info, extract_prompts=False)
        inc.starting = False
        self.started = True
        task_status.started(kernel_info)
        probe = AdoptedKernelProbe(self.info)
        nursery.start_soon(probe.learn_process)
        nursery.start_soon(inc.monitor_heartbeat, probe)
        await sockets.wait_disconnected()
        inc.log.info("the adopted kernel's sockets disconnected")
        nursery.cancel_scope.cancel()


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
