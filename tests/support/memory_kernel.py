"""A fake kernel in trio tasks on the in-memory transport, and the backend that spawns it.

With :class:`MemoryKernelBackend` given to a
:class:`~kallichore.supervisor.registry.SessionRegistry`, sessions run the
real supervisor code -- connection files, the JEP 66 handshake, the pumps,
heartbeats, the shutdown ladder of
:func:`~kallichore.supervisor.process.terminate_process_group` -- against
kernels that live in the test's nursery and talk over
:mod:`kallichore.transport.memory`. Nothing waits on the outside world, so
the tests run under the autojump clock: a 30 s connection timeout or a
5 s + 3 s shutdown ladder takes no real time.

The kernel speaks what :mod:`kallichore.testing.fake_kernel` speaks, and is
started by the same command line (:func:`~kallichore.testing.fake_kernel.fake_kernel_argv`,
behaviours from ``--behaviour`` and the ``FAKE_KERNEL_BEHAVIOUR`` variable):
busy/idle around every request, ``kernel_info_reply``, ``execute_request``
with the ``flood N``, ``sleep S`` and ``exit CODE`` commands,
``shutdown_request`` (exit 0) and ``interrupt_request``. Not supported:
``--welcome`` (a memory PUB reports no subscriptions); a session then proves
its iopub subscription the way it does for any kernel without JEP 65.

Its process (:class:`MemoryKernelProcess`) takes signals as a POSIX kernel
would: SIGINT interrupts, SIGTERM ends it with ``-15`` (unless the
``ignore-shutdown`` behaviour is on), SIGKILL with ``-9``; SIGSTOP marks it
stopped (its tasks still run) and holds SIGTERM back until SIGCONT. Its pids are above
Linux's largest (``PID_MAX_LIMIT``), so nothing ever signals a real process.

Why here and not in ``kallichore.testing``: it plugs into an internal seam
(:class:`~kallichore.supervisor.backend.KernelBackend`) that no public entry
point accepts, and it is useful only inside this process; the process-based
fake kernel, which works with any supervisor, is the one users get.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from kallichore.errors import RemoteProtocolError
from kallichore.supervisor.lifeline import Lifeline
from kallichore.testing.fake_kernel import (
    BEHAVIOUR_ENV,
    KERNEL_INFO,
    Behaviour,
    FakeKernelError,
    KernelMessages,
    _command,
    _content,
    _parser,
)
from kallichore.transport.base import CHANNELS, TransportError
from kallichore.transport.memory import MemoryNetwork, MemorySocket, MemoryTransport, SocketKind
from kallichore.wire.message import WireMessage

if TYPE_CHECKING:
    from kallichore.supervisor.backend import KernelBackend
    from kallichore.supervisor.process import EmitLine, SupervisedProcess

__all__ = ["FIRST_FAKE_PID", "MemoryKernel", "MemoryKernelBackend", "MemoryKernelProcess"]

#: Pids of fake kernels start here: above Linux's PID_MAX_LIMIT (2**22).
FIRST_FAKE_PID = 5_000_000
#: The module a fake kernel's command line runs.
FAKE_KERNEL_MODULE = "kallichore.testing.fake_kernel"
HANDSHAKE_TIMEOUT = 10.0  # seconds to wait for a JEP 66 handshake_reply (as the real fake)


@attrs.define(eq=False)
class MemoryKernelProcess:
    """The "process" of a :class:`MemoryKernel`; satisfies ``SupervisedProcess``."""

    pid: int
    #: SIGTERM is ignored (the ``ignore-shutdown`` behaviour).
    ignore_sigterm: bool = False
    #: Stopped by SIGSTOP until SIGCONT: a SIGTERM meanwhile stays pending,
    #: as for a real kernel with a SIGTERM handler.
    stopped: bool = False
    _pending_sigterm: bool = attrs.field(default=False, init=False)
    #: Every signal sent to the group, in order (for assertions).
    signals: list[int] = attrs.field(factory=list)
    #: The kernel's tasks run in this scope; cancelling it is the process dying.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: SIGINT (or ``interrupt_request``) sets it; an execution waits on it.
    interrupted: trio.Event = attrs.field(factory=trio.Event)
    _status: int | None = attrs.field(default=None, init=False)
    _returncode: int | None = attrs.field(default=None, init=False)
    _exited: trio.Event = attrs.field(factory=trio.Event, init=False)
    _lines: tuple[
        trio.MemorySendChannel[tuple[str, str]], trio.MemoryReceiveChannel[tuple[str, str]]
    ] = attrs.field(factory=lambda: trio.open_memory_channel[tuple[str, str]](math.inf), init=False)
    _pump_started: bool = attrs.field(default=False, init=False)
    _output_closed: trio.Event = attrs.field(factory=trio.Event, init=False)

    @property
    def returncode(self) -> int | None:
        """The exit status once the kernel's tasks are over (``-signum`` for a signal)."""
        return self._returncode

    @property
    def output_pump_started(self) -> bool:
        return self._pump_started

    def print(self, stream: str, text: str) -> None:
        """A line on the kernel's stdout or stderr."""
        if self._returncode is None:
            self._lines[0].send_nowait((stream, f"fake kernel {self.pid}: {text}\n"))

    def exit(self, status: int) -> None:
        """End the kernel with ``status`` (the first call wins)."""
        if self._status is None:
            self._status = status
        self.scope.cancel()

    def reap(self) -> None:
        """Called by the kernel's task once it is over: the process is gone."""
        self._returncode = self._status if self._status is not None else 0
        self._lines[0].close()
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    async def pump_output(self, emit: EmitLine) -> None:
        if self._pump_started:
            raise RuntimeError(f"{self!r}: pump_output already started")
        self._pump_started = True
        try:
            async for stream, line in self._lines[1]:
                emit(stream, line)
        except trio.ClosedResourceError:
            pass  # aclose_pipes
        finally:
            self._output_closed.set()

    async def wait_output_closed(self) -> None:
        await self._output_closed.wait()

    async def aclose_pipes(self) -> None:
        await self._lines[1].aclose()

    def signal_group(self, sig: int) -> bool:
        if self._status is not None:
            return False
        self.signals.append(sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False
            if self._pending_sigterm and not self.ignore_sigterm:
                self.exit(-signal.SIGTERM)
            self._pending_sigterm = False
        elif sig == signal.SIGTERM and self.stopped:
            self._pending_sigterm = True
        elif sig == signal.SIGINT:
            self.interrupted.set()
        elif sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.ignore_sigterm):
            self.exit(-sig)
        return True

    def is_stopped(self) -> bool:
        return self.stopped and self._status is None

    def interrupt(self) -> bool:
        return self.signal_group(signal.SIGINT)

    def kill_group(self) -> bool:
        return self.signal_group(signal.SIGKILL)

    def forget_group(self) -> None:
        pass

    def note_escapees(self) -> None:
        pass

    def kill_escapees(self) -> int:
        return 0


@attrs.define(eq=False)
class MemoryKernel:
    """The kernel proper: binds on the network, then answers requests until it exits."""

    network: MemoryNetwork
    connection_file: str
    behaviour: Behaviour
    register: bool
    process: MemoryKernelProcess
    execution_count: int = 0
    _sockets: dict[str, MemorySocket] = attrs.field(factory=dict, init=False)
    _messages: KernelMessages = attrs.field(init=False)
    _started: float = attrs.field(default=0.0, init=False)

    async def run(self) -> None:
        """The kernel's life, from start to exit; ends by reaping its process."""
        process = self.process
        try:
            with process.scope:
                await trio.sleep(self.behaviour.slow_start)
                if self.behaviour.exit_on_start is not None:
                    code = self.behaviour.exit_on_start
                    process.print("stdout", f"exiting with status {code} before binding")
                    process.print("stderr", "simulated startup failure (exit-on-start)")
                    process.exit(code)
                    return
                try:
                    await self._bind()
                except (OSError, ValueError, KeyError, TransportError, FakeKernelError) as exc:
                    process.print("stderr", f"error: {exc}")
                    process.exit(1)
                    return
                ports = " ".join(
                    f"{c}={s.endpoint.rsplit(':', 1)[1]}" for c, s in self._sockets.items()
                )
                process.print("stdout", f"listening on {ports}")
                await self._serve()
        finally:
            for sock in self._sockets.values():
                sock.close()
            process.reap()

    # ----------------------------------------------------------- start

    async def _bind(self) -> None:
        info = _read_json(self.connection_file)
        self._messages = KernelMessages(str(info.get("key", "")).encode("ascii"), self.behaviour)
        ip = str(info.get("ip", "127.0.0.1"))
        jep66 = self.register and "registration_port" in info
        for channel in CHANNELS:
            port = self.network.pick_port() if jep66 else int(info[f"{channel}_port"])
            kind = SocketKind.PUB if channel == "iopub" else SocketKind.ROUTER
            self._sockets[channel] = self.network.bind(kind, f"tcp://{ip}:{port}")
        self._started = trio.current_time()
        if jep66:
            await self._register(f"tcp://{ip}:{info['registration_port']}")

    async def _register(self, endpoint: str) -> None:
        """JEP 66: report our ports to the supervisor's REP socket, await the reply."""
        req = self.network.connect(SocketKind.REQ, endpoint)
        try:
            content = {
                f"{channel}_port": int(sock.endpoint.rsplit(":", 1)[1])
                for channel, sock in self._sockets.items()
            }
            await req.send_multipart(self._messages.frames("handshake_request", content, {}))
            with trio.move_on_after(HANDSHAKE_TIMEOUT) as waiting:
                frames = await req.receive_multipart()
            if waiting.cancelled_caught:
                raise FakeKernelError("no handshake_reply from the registration socket")
        finally:
            req.close()
        self._messages.check_handshake_reply(frames)

    # ----------------------------------------------------------- serving

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._echo_heartbeats)
            nursery.start_soon(self._answer, "control")
            nursery.start_soon(self._answer, "shell")
            nursery.start_soon(self._answer, "stdin")

    async def _echo_heartbeats(self) -> None:
        hb = self._sockets["hb"]
        stall = self.behaviour.stall_heartbeat_after
        while True:
            frames = await hb.receive_multipart()
            if stall is None or trio.current_time() - self._started < stall:
                await hb.send_multipart(frames)

    async def _answer(self, channel: str) -> None:
        sock = self._sockets[channel]
        while True:
            frames = await sock.receive_multipart()
            try:
                msg = self._messages.receive(frames)
            except RemoteProtocolError as exc:
                self.process.print("stderr", f"dropped a {channel} message: {exc}")
                continue
            if channel != "stdin":  # input_reply: nothing ever asks for input
                await self._on_request(sock, msg)

    async def _on_request(self, sock: MemorySocket, msg: WireMessage) -> None:
        msg_type = msg.msg_type
        if msg_type == "kernel_info_request" and self.behaviour.no_kernel_info:
            return
        if msg_type == "execute_request":
            await self._execute(msg)
            return
        exiting = False
        await self._publish("status", {"execution_state": "busy"}, msg.header)
        if msg_type == "kernel_info_request":
            await self._reply(sock, msg, KERNEL_INFO)
        elif msg_type == "shutdown_request":
            restart = bool(_content(msg).get("restart", False))
            await self._reply(sock, msg, {"status": "ok", "restart": restart})
            exiting = not self.behaviour.ignore_shutdown
        elif msg_type == "interrupt_request":
            self.process.interrupted.set()
            await self._reply(sock, msg, {"status": "ok"})
        elif msg_type.endswith("_request"):
            await self._reply(sock, msg, {"status": "ok"})
        await self._publish("status", {"execution_state": "idle"}, msg.header)
        if exiting:
            self.process.exit(0)

    async def _execute(self, request: WireMessage) -> None:
        code = str(_content(request).get("code", ""))
        # Before execute_input: an interrupt sent once a client sees it must count.
        self.process.interrupted = trio.Event()
        self.execution_count += 1
        count = self.execution_count
        command, arg = _command(code)
        parent = request.header
        await self._publish("status", {"execution_state": "busy"}, parent)
        await self._publish("execute_input", {"code": code, "execution_count": count}, parent)
        if command == "exit":
            self.process.exit(int(arg))
            await trio.lowlevel.checkpoint()  # the scope is cancelled: never returns
        interrupted = False
        if command == "sleep":
            with trio.move_on_after(arg):
                await self.process.interrupted.wait()
                interrupted = True
        if interrupted:
            error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
            await self._publish("error", error, parent)
            reply: dict[str, Any] = {"status": "error", "execution_count": count, **error}
        else:
            texts = [f"{i}\n" for i in range(int(arg))] if command == "flood" else [code]
            for text in texts:
                await self._publish("stream", {"name": "stdout", "text": text}, parent)
            reply = {
                "status": "ok",
                "execution_count": count,
                "user_expressions": {},
                "payload": [],
            }
        await self._reply(self._sockets["shell"], request, reply)
        await self._publish("status", {"execution_state": "idle"}, parent)

    # --------------------------------------------------------- messages

    async def _reply(
        self, sock: MemorySocket, request: WireMessage, content: dict[str, Any]
    ) -> None:
        await sock.send_multipart(self._messages.reply(request, content))

    async def _publish(
        self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]
    ) -> None:
        await self._sockets["iopub"].send_multipart(
            self._messages.publication(msg_type, content, parent)
        )


def _read_json(path: str) -> dict[str, Any]:
    """A connection file, read synchronously.

    Deliberately not through a thread (``trio.Path``): under the autojump
    clock a task waiting for a thread counts as blocked, and the clock would
    jump past the kernel's timeouts while the file is read.
    """
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if not isinstance(info, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return info


@attrs.define(eq=False)
class MemoryKernelBackend:
    """Spawns :class:`MemoryKernel`\\ s in ``nursery``; satisfies ``KernelBackend``.

    Args:
        nursery: where the kernels' tasks run (the test's).
        transport: the in-memory transport sessions connect with.
    """

    nursery: trio.Nursery
    transport: MemoryTransport = attrs.field(factory=MemoryTransport)
    #: Every process spawned, in order.
    spawned: list[MemoryKernelProcess] = attrs.field(factory=list)
    #: Raised by the next spawn instead of starting a kernel (then cleared).
    spawn_error: OSError | None = None
    #: How many of the next spawned kernels find their shell port taken by
    #: another program (they exit 1 with "Address already in use").
    ports_taken: int = 0
    #: Sockets bound by :attr:`ports_taken`, open until the test ends.
    squatters: list[MemorySocket] = attrs.field(factory=list)
    _pids: Iterator[int] = attrs.field(factory=lambda: itertools.count(FIRST_FAKE_PID), init=False)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        lifeline: Lifeline | None,
    ) -> MemoryKernelProcess:
        """Start a fake kernel for a :func:`fake_kernel_argv` command line.

        **Errors:** ``FileNotFoundError`` for any other command line (as a
        missing executable), or :attr:`spawn_error` if set.
        """
        await trio.lowlevel.checkpoint()
        if self.spawn_error is not None:
            error, self.spawn_error = self.spawn_error, None
            raise error
        if FAKE_KERNEL_MODULE not in argv:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
        args = _parser().parse_args(list(argv)[list(argv).index(FAKE_KERNEL_MODULE) + 1 :])
        extra = [g.split() for g in env.get(BEHAVIOUR_ENV, "").split(";") if g.strip()]
        behaviour = Behaviour.parse([*args.behaviour, *extra])
        if self.ports_taken > 0:
            self.ports_taken -= 1
            self._take_shell_port(args.connection_file)
        process = self.start_kernel(
            args.connection_file, behaviour, register=args.registration_file
        )
        self.spawned.append(process)
        return process

    def _take_shell_port(self, connection_file: str) -> None:
        """Bind the kernel's shell endpoint first, as a program racing it would."""
        info = _read_json(connection_file)
        endpoint = f"tcp://{info.get('ip', '127.0.0.1')}:{info['shell_port']}"
        self.squatters.append(self.transport.network.bind(SocketKind.ROUTER, endpoint))

    def start_kernel(
        self, connection_file: str, behaviour: Behaviour, *, register: bool = False
    ) -> MemoryKernelProcess:
        """Run a kernel on this backend's network without spawning it.

        For a kernel someone else started (a session adopts it): it is not
        in :attr:`spawned`.
        """
        process = MemoryKernelProcess(next(self._pids), ignore_sigterm=behaviour.ignore_shutdown)
        kernel = MemoryKernel(
            self.transport.network, connection_file, behaviour, register=register, process=process
        )
        self.nursery.start_soon(kernel.run)
        return process


if TYPE_CHECKING:

    def _satisfies_supervised_process(proc: MemoryKernelProcess) -> SupervisedProcess:
        return proc

    def _satisfies_kernel_backend(backend: MemoryKernelBackend) -> KernelBackend:
        return backend
