"""Embedding: the supervisor as a library inside someone else's trio program.

Two ways in, both without global state (two of them in one process share
nothing but the process):

* :func:`open_supervisor` runs the supervisor *without* the HTTP server::

      async with kallichore.open_supervisor() as sup:
          session = sup.create_session(argv=[sys.executable, "-m", "ipykernel_launcher",
                                             "-f", "{connection_file}"])
          await session.start()
          result = await session.execute("print(6*7)")   # result.stdout == "42\n"
          async with session.attach() as channel:
              await channel.send(execute_request)       # a Jupyter message dict
              async for frame in channel:               # the WebSocket's envelope, decoded
                  ...

* :func:`kallichore.serve` runs the whole server as one task of a bigger
  app (``address = await nursery.start(kallichore.serve, config)``);
  :meth:`Supervisor.of_server` gives the same in-process handle on that
  server's sessions, so an app can drive kernels directly *and* serve them
  over REST.

Task tree of :func:`open_supervisor`::

    open_supervisor                 nursery, owned by the ``async with`` block
    └── SessionRegistry.run         sessions' nursery
        └── Incarnation.run_spawned     one per running kernel (see incarnation.py)

The module lives at the top of the package, not under ``supervisor/``: it is
a public surface composed of the registry (``supervisor/``), the envelope
parser (``protocol/envelope.py``, pure) and the server (``server/root.py``), and
``kallichore.embed`` is what users type. It never imports the HTTP stack.

:meth:`Session.execute` runs code the way a client's ``execute`` does
(through the execution queue) and returns the client library's
:class:`~kallichore.protocol.execution.ExecutionResult`, built by the same code
(:mod:`kallichore.supervisor.execution`). Other message helpers (comms,
input requests, completions) belong to the client library
(:mod:`kallichore.client`), which speaks the same envelope over the network.
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, final

import attrs
import orjson
import trio

from kallichore.api.presenters import active_session_json
from kallichore.protocol.envelope import parse_client_frame
from kallichore.protocol.execution import ExecutionResult
from kallichore.session.spec import (
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_PROTOCOL_VERSION,
    EnvTriple,
    InterruptMode,
    SessionMode,
    SessionSpec,
    StartupEnvironment,
    validate_restart,
    validate_session_spec,
)
from kallichore.session.state import SessionStatus
from kallichore.supervisor import execution
from kallichore.supervisor.launch import find_kernel
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.registry import SessionRegistry
from kallichore.supervisor.session import ClientAttachment, KernelSession

if TYPE_CHECKING:
    from kallichore.server.root import Server

__all__ = [
    "EnvAction",
    "ExecutionResult",
    "InterruptMode",
    "Session",
    "SessionChannel",
    "SessionMode",
    "SessionSpec",
    "StartupEnvironment",
    "Supervisor",
    "open_supervisor",
]

logger = logging.getLogger(__name__)

#: An environment action, as in the REST API's ``varAction``: ``(action, name, value)``
#: with action one of ``"replace"``, ``"append"``, ``"prepend"``.
EnvAction = tuple[Literal["replace", "append", "prepend"], str, str]

#: Frames taken from the session per wake-up of a channel.
CHANNEL_BATCH = 256  # frames


# ------------------------------------------------------------------ channel


@final
@attrs.define(eq=False)
class SessionChannel:
    """An attached client, in process: what the channel WebSocket carries, as dicts.

    Made by :meth:`Session.attach`; not constructed directly. Receiving
    yields exactly the frames a WebSocket client would get, decoded: Jupyter
    messages (``{"kind": "jupyter", "header": ..., "channel": ..., ...}``) and
    kernel events (``{"kind": "kernel", "status": ...}``, ``"output"``,
    ``"exited"``...), in order, each exactly once. Frames buffered before
    the attach (the session's outbox) come first.

    Only one client is attached to a session at a time. A newer one (another
    :meth:`Session.attach`, or a WebSocket) *takes over*: this channel's
    iteration then ends, :meth:`receive` raises :class:`trio.EndOfChannel`
    and :meth:`send` raises :class:`trio.ClosedResourceError`.
    """

    _session: KernelSession
    _attachment: ClientAttachment
    # Frames taken from the outbox but not yet handed out; requeued on close.
    _pending: collections.deque[bytes] = attrs.field(factory=collections.deque, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def taken_over(self) -> bool:
        """Whether a newer client has replaced this one."""
        return not self._session.fanout.is_current_client(self._attachment)

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one Jupyter message to the kernel, as a WebSocket client would.

        ``message`` has the client frame's shape (see
        :mod:`kallichore.protocol.envelope`): ``header`` with string ``msg_id`` and
        ``msg_type``, ``channel`` (``shell``, ``control`` or ``stdin``),
        ``content``, and optionally ``parent_header``, ``metadata`` and
        ``buffers`` (base64 strings). ``execute_request`` goes through the
        session's execution queue.

        Errors:
            kallichore.errors.RemoteProtocolError: ``message`` is not such a
                message (nothing was sent).
            trio.ClosedResourceError: the channel was closed or taken over.

        Cancellation:
            Safe; the message was either sent whole or not at all.
        """
        if self._closed or self.taken_over:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this channel is closed or was taken over")
        # The same validation a WebSocket frame gets; the round trip through
        # JSON also guarantees the message is serialisable.
        await self._session.send_from_client(parse_client_frame(orjson.dumps(dict(message))))

    async def receive(self) -> dict[str, Any]:
        """The next frame for the client, decoded; waits for one.

        Errors:
            trio.EndOfChannel: a newer client took over (or the channel is closed).

        Cancellation:
            Safe: a frame is either returned or stays queued.
        """
        while not self._pending:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel
            # next_frames checkpoints before it takes anything, and returns
            # without another checkpoint once it has: nothing is lost here.
            frames = await self._session.fanout.next_frames(self._attachment, limit=CHANNEL_BATCH)
            if not frames:
                raise trio.EndOfChannel
            self._pending.extend(frames)
        await trio.lowlevel.checkpoint()
        frame = self._pending.popleft()
        decoded: dict[str, Any] = orjson.loads(frame)
        return decoded

    def __aiter__(self) -> SessionChannel:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def _close(self) -> None:
        """Requeue what was not handed out, and detach (sync: runs in cleanup)."""
        if self._closed:
            return
        self._closed = True
        if self._pending and not self.taken_over:
            self._session.fanout.requeue(list(self._pending))
        self._pending.clear()
        self._session.detach_client(self._attachment)


# ------------------------------------------------------------------ session


@final
@attrs.frozen(eq=False)
class Session:
    """A handle on one session of a :class:`Supervisor`.

    Cheap and stateless: it refers to the supervisor's session, and two
    handles on the same session are equal. Made by
    :meth:`Supervisor.create_session` and :meth:`Supervisor.get`.
    """

    _session: KernelSession

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other._session is self._session

    def __hash__(self) -> int:
        return id(self._session)

    def __repr__(self) -> str:
        return f"<Session {self.session_id!r} {self.status.value}>"

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._session.session_id

    @property
    def spec(self) -> SessionSpec:
        """What the session was created with."""
        return self._session.spec

    @property
    def status(self) -> SessionStatus:
        """The current status (``exited`` before the first start)."""
        return self._session.status

    @property
    def process_id(self) -> int | None:
        """PID of the running kernel process, if any."""
        return self._session.process_id

    @property
    def kernel_info(self) -> dict[str, Any]:
        """The last ``kernel_info_reply`` content (empty before the first start)."""
        return self._session.kernel_info

    @property
    def exit_code(self) -> int | None:
        """The last kernel's exit status, once one has exited."""
        return self._session.exit_code

    @property
    def connected(self) -> bool:
        """Whether a client (a channel or a WebSocket) is attached."""
        return self._session.connected

    def is_running(self) -> bool:
        """Whether a kernel is live, starting or restarting."""
        return self._session.is_running()

    def to_json(self) -> dict[str, Any]:
        """The REST API's ``activeSession`` object for this session."""
        return active_session_json(self._session, trio.current_time())

    async def start(self) -> dict[str, Any]:
        """Start the kernel; returns its ``kernel_info_reply`` content.

        Errors:
            kallichore.errors.SessionStateError: a kernel is already running
                or starting.
            kallichore.errors.StartupError: the kernel could not be started,
                died while starting, or did not connect within the session's
                ``connection_timeout`` (it is killed then). The error carries
                the kernel's exit code and output.

        Cancellation:
            The kernel belongs to the supervisor, not to the caller: if the
            caller is cancelled, the start still completes (bounded by
            ``connection_timeout``) before the cancellation is delivered.
        """
        return await self._session.start()

    async def restart(
        self,
        *,
        working_directory: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | Iterable[EnvAction] | None = None,
    ) -> None:
        """Stop the kernel (bounded ladder) and start it again.

        Args:
            working_directory: a new working directory (ignored, with a
                warning, if it is not a directory).
            env: new environment changes, replacing the session's (a mapping
                means ``replace`` actions).

        Errors:
            kallichore.errors.SessionSpecError: (a ``ValueError``) an unusable
                environment action or working directory, as the REST API
                refuses them; nothing was stopped.
            kallichore.errors.StartupError: a restart is already under way,
                or the new kernel failed to start.
            kallichore.errors.SessionStateError: the kernel is still starting.

        Cancellation:
            Shielded, like :meth:`start`: both halves are bounded, and a
            caller that gives up must not leave the session half-restarted.
        """
        actions = _env_actions(env) if env is not None else None
        directory = os.fspath(working_directory) if working_directory is not None else None
        validate_restart(directory, actions)
        await self._session.restart(directory, actions or None)

    async def interrupt(self) -> None:
        """Interrupt the kernel (SIGINT or ``interrupt_request``, per ``interrupt_mode``).

        Clears the execution queue. The kernel's reply (if any) arrives on
        the channel as for any client.

        Errors:
            kallichore.errors.SessionStateError: there is no kernel to interrupt.
        """
        await self._session.interrupt()

    async def execute(
        self,
        code: str,
        *,
        on_output: execution.OutputHandler | None = None,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        stop_on_error: bool = True,
    ) -> ExecutionResult:
        """Run ``code``; return once the kernel replied and went idle.

        Goes through the session's execution queue like a client's
        ``execute_request``, so it waits its turn behind other clients'
        executions. It does not attach: a WebSocket client stays attached
        and sees the execution's output (iopub), not its reply. Returns the
        client library's :class:`~kallichore.client.ExecutionResult`
        (``status``, ``ok``, ``stdout``, ``stderr``, ``outputs``, ``error``,
        ``execution_count``, ``reply``). ``input()`` is not available
        (``allow_stdin`` is false).

        Args:
            on_output: called with each output
                :class:`~kallichore.client.Message` (``stream``,
                ``display_data``, ``execute_result``, ``error``...) in order;
                a plain or coroutine function.

        Errors:
            kallichore.errors.SessionStateError: no kernel is running.
            kallichore.errors.ExecutionDroppedError: the queue dropped the
                execution (interrupt, kill, shutdown) or the kernel exited or
                restarted first.
            Exception: whatever ``on_output`` raised, once the execution is over.

        Cancellation:
            Bound it with ``trio.fail_after``. On cancellation an execution
            still queued is withdrawn (it never runs); a running one is
            interrupted (other queued executions are kept), and the call
            waits, shielded and for at most a few seconds, for the kernel to
            be idle again before the cancellation propagates.
        """
        return await execution.execute(
            self._session,
            code,
            on_output=on_output,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions,
            stop_on_error=stop_on_error,
        )

    async def kill(self) -> None:
        """Kill the kernel's whole process group; returns once it is gone.

        Errors:
            kallichore.errors.SessionStateError: the session has exited, or
                its kernel has no process (adopted).
        """
        await self._session.kill()

    async def shutdown(self) -> None:
        """Stop the kernel politely, escalating to SIGTERM and SIGKILL; returns when it is gone.

        A no-op when no kernel is running.

        Cancellation:
            The stop is not undone: the ladder runs shielded and bounded in
            the supervisor; cancelling the caller only stops its wait.
        """
        await self._session.shutdown()

    @contextlib.asynccontextmanager
    async def attach(self) -> AsyncIterator[SessionChannel]:
        """Attach as the session's client for the duration of the block.

        Takes over from any client already attached (a WebSocket client gets
        ``clientDisconnected``). On leaving, frames that were taken but not
        received are put back, so the next client gets them, in order.

        Errors:
            Whatever the block raises; attaching itself does not fail.

        Cancellation:
            Safe at any point; detaching is synchronous.
        """
        channel = SessionChannel(self._session, self._session.attach_client())
        try:
            yield channel
        finally:
            channel._close()


# --------------------------------------------------------------- supervisor


@final
@attrs.define(eq=False)
class Supervisor:
    """The sessions of one supervisor, in process.

    Made by :func:`open_supervisor`, or by :meth:`of_server` for a running
    :func:`kallichore.serve`. Every method is synchronous except the ones on
    :class:`Session` that wait for kernels.
    """

    _registry: SessionRegistry

    @classmethod
    def of_server(cls, server: Server) -> Supervisor:
        """The in-process handle on a server's sessions.

        Pass a :class:`~kallichore.server.Server` to :func:`kallichore.serve`
        (its ``server=`` argument) and use this on the same object: sessions
        made here are visible over REST and the other way round. The server
        owns their lifetime (they stop when it does).
        """
        return cls(server.registry)

    @property
    def sessions(self) -> list[Session]:
        """Every session, in creation order."""
        return [Session(s) for s in self._registry.list()]

    def get(self, session_id: str) -> Session:
        """The session with this id.

        Errors:
            kallichore.errors.SessionNotFoundError: there is none.
        """
        return Session(self._registry.get(session_id))

    def delete(self, session_id: str) -> None:
        """Forget a session that has no running kernel.

        Errors:
            kallichore.errors.SessionNotFoundError: there is none.
            kallichore.errors.SessionStateError: its kernel is running or starting.
        """
        self._registry.delete(session_id)

    def create_session(
        self,
        *,
        argv: Sequence[str],
        session_id: str | None = None,
        display_name: str | None = None,
        language: str = "",
        username: str | None = None,
        input_prompt: str = "",
        continuation_prompt: str = "",
        session_mode: SessionMode | Literal["console", "notebook", "background"] = "console",
        working_directory: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | Iterable[EnvAction] = (),
        interrupt_mode: InterruptMode | Literal["signal", "message"] = "message",
        startup_environment: StartupEnvironment
        | Literal["none", "shell", "script", "command"] = "none",
        startup_environment_arg: str | None = None,
        notebook_uri: str | None = None,
        connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT,
        protocol_version: str = DEFAULT_PROTOCOL_VERSION,
    ) -> Session:
        """Create a session (not started); the fields of the REST API's ``newSession``.

        Args:
            argv: the kernel's command line; ``{connection_file}`` in any
                argument is replaced by the connection file's path.
            session_id: a fresh ``"session-<hex>"`` when omitted.
            display_name: defaults to the session id.
            language: informational (shown by ``to_json()``).
            username: the ``username`` in message headers; the current user
                by default.
            input_prompt: initial prompts (a kernel may report its own).
            continuation_prompt: see ``input_prompt``.
            session_mode: ``console``, ``notebook`` or ``background`` (a
                :class:`SessionMode` or its value, as for the other enums).
            working_directory: the kernel's working directory; the current
                one by default.
            env: changes to the supervisor's environment for the kernel: a
                mapping (each entry replaces the variable) or
                ``(action, name, value)`` triples applied in order.
            interrupt_mode: ``message`` (``interrupt_request``) or ``signal``
                (SIGINT to the kernel's process group).
            startup_environment: how the kernel is launched: directly, or
                through a login shell, a script or a command.
            startup_environment_arg: the script or command, for those modes.
            notebook_uri: informational, for notebook sessions.
            connection_timeout: seconds a start may take before the kernel
                is killed and the start fails (1 to 86400, as over REST).
            protocol_version: ``"5.5"`` or later uses the JEP 66 registration
                handshake; older versions get a connection file.

        Errors:
            kallichore.errors.SessionSpecError: (a ``ValueError``) the
                arguments break a rule the REST API enforces for
                ``PUT /sessions`` (:mod:`kallichore.session.spec`): a session
                id that is empty, too long or has ``/``, ``\\`` or control
                characters; ``argv[0]`` not found on ``PATH`` (code ``KS-19``);
                NUL characters; an unusable environment variable; a timeout
                outside 1 to 86400 seconds; an unknown enum value. An empty
                ``argv`` is refused too (REST allows it only for adopting).
            kallichore.errors.SessionStateError: the id is taken.
        """
        sid = session_id if session_id is not None else f"session-{uuid.uuid4().hex[:12]}"
        spec = SessionSpec(
            session_id=sid,
            argv=tuple(argv),
            display_name=display_name if display_name is not None else sid,
            language=language,
            username=username if username is not None else _current_user(),
            input_prompt=input_prompt,
            continuation_prompt=continuation_prompt,
            session_mode=session_mode,
            working_directory=os.fspath(working_directory)
            if working_directory is not None
            else os.getcwd(),
            env=_env_actions(env),
            interrupt_mode=interrupt_mode,
            startup_environment=startup_environment,
            startup_environment_arg=startup_environment_arg,
            notebook_uri=notebook_uri,
            connection_timeout=float(connection_timeout),
            protocol_version=protocol_version,
        )
        validate_session_spec(spec, locate_kernel=find_kernel, allow_empty_argv=False)
        return Session(self._registry.create(spec))

    async def shutdown_all(self) -> None:
        """Stop every running kernel, concurrently, each within its bounded ladder.

        Cancellation:
            Each kernel's ladder runs shielded in the supervisor, so a
            cancelled caller still leaves the stops under way.
        """
        await self._registry.shutdown_all()


@contextlib.asynccontextmanager
async def open_supervisor(
    *, allow_unsigned_kernel_messages: bool = False, kernels_outlive_server: bool = False
) -> AsyncIterator[Supervisor]:
    """Run a supervisor (sessions, kernels; no HTTP) for the duration of the block.

    The two options are :class:`~kallichore.config.ServerConfig`'s fields of
    the same names (``--allow-unsigned-kernel-messages`` and
    ``--kernels-outlive-server``): by default a kernel message with an empty
    signature is dropped, and kernels die with this process even when it is
    killed without leaving the block.

    Leaving the block stops every kernel, concurrently, each through its own
    bounded ladder (``shutdown_request``, then SIGTERM, then SIGKILL of the
    process group), and removes the private directory that held the
    connection files. Nothing is left running afterwards.

    Errors:
        Whatever the block raises, unchanged. A kernel's failure never
        raises here: it is a status change of its session.

    Cancellation:
        Cancelling the block takes the same path: the kernels' stops run
        shielded, each bounded (a few seconds at most), so the ``async with``
        exits promptly and cleanly.
    """
    registry = SessionRegistry(
        kernel_policy=KernelPolicy(
            allow_unsigned_messages=allow_unsigned_kernel_messages,
            outlive_server=kernels_outlive_server,
        )
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        try:
            yield Supervisor(registry)
        finally:
            # Bounded: each session's ladder carries its own deadlines.
            with trio.CancelScope(shield=True):
                await registry.shutdown_all()
            nursery.cancel_scope.cancel(reason="supervisor closed")


def _env_actions(env: Mapping[str, str] | Iterable[EnvAction]) -> tuple[EnvTriple, ...]:
    """Normalise a mapping or action triples into the session's action tuple.

    Checking them is :mod:`kallichore.session.spec`'s job.
    """
    if isinstance(env, Mapping):
        return tuple(("replace", str(k), str(v)) for k, v in env.items())
    return tuple((str(a), str(n), str(v)) for a, n, v in env)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no USER variable
        return "kallichore"
