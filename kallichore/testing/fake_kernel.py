"""A small fake Jupyter kernel: real ZeroMQ, its own process, scripted misbehaviour.

Run it the way a kernelspec runs a kernel::

    python -m kallichore.testing.fake_kernel -f CONNECTION_FILE
        [--welcome] [--registration-file] [--behaviour NAME [VALUE]]...

or build that command line with :func:`fake_kernel_argv`, which leaves the
``{connection_file}`` placeholder for the supervisor to fill in::

    argv = fake_kernel_argv("stall-heartbeat-after 1", welcome=True)

What it speaks (signed with the connection file's key, via
:mod:`kallichore.wire.codec`):

* shell/control/stdin are ROUTERs, iopub an XPUB (so subscriptions are seen),
  the heartbeat a ROUTER that echoes every frame back;
* every request gets ``busy`` and ``idle`` on iopub around it, with the
  request's header as the parent;
* ``kernel_info_request`` -> a complete ``kernel_info_reply`` (implementation
  ``fake``, language ``fake``);
* ``execute_request`` -> ``execute_input``, output, ``execute_reply`` with a
  growing ``execution_count``. The output is a ``stream`` message whose text is
  the code itself, except for these commands:

  ``flood N``      N stream messages, ``"0\\n"`` to ``"N-1\\n"``, as fast as possible;
  ``sleep S``      wait S seconds first (heartbeats and control are still served;
                   an ``interrupt_request`` or SIGINT ends the wait and the reply
                   is a ``KeyboardInterrupt`` error);
  ``exit CODE``    exit with CODE at once, without a reply (a crash);

* ``shutdown_request`` (control) -> reply, then exit 0;
  ``interrupt_request`` (control) -> reply; SIGINT is an interrupt too;
* any other ``*_request`` -> a ``*_reply`` with ``{"status": "ok"}``.

``--welcome`` sends a JEP 65 ``iopub_welcome`` on each new iopub subscription.
``--registration-file`` accepts a JEP 66 registration file as ``-f``: when the
file has a ``registration_port``, the kernel binds ports of its own choosing
and reports them in a signed ``handshake_request``, then waits for the
``handshake_reply``. Behaviours (``--behaviour``, repeatable, ``NAME VALUE``
or ``NAME=VALUE``) are listed in :data:`BEHAVIOURS`; more can come from the
environment variable :data:`BEHAVIOUR_ENV` (``;``-separated, e.g.
``"slow-start 5; bad-signature"``), which lets a test change how the *next*
incarnation misbehaves: a restart may replace the environment, not the argv.

Once bound, the kernel prints one ``fake kernel <pid>: listening ...`` line
on stdout. Exit status: 0 after a shutdown request, 1 on a fatal error (the
reason goes to stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import attrs
import zmq

from kallichore.errors import RemoteProtocolError
from kallichore.wire.codec import Deserializer, ReplayWindow, Signer, serialize
from kallichore.wire.message import WireMessage, new_header

__all__ = [
    "BEHAVIOURS",
    "BEHAVIOUR_ENV",
    "Behaviour",
    "FakeKernel",
    "KernelMessages",
    "fake_kernel_argv",
    "main",
]

#: Behaviour name -> the type of its value (``None``: it takes no value).
BEHAVIOURS: dict[str, type[int] | type[float] | None] = {
    "ignore-shutdown": None,  # reply to shutdown_request but never exit; ignore SIGTERM
    "no-kernel-info": None,  # never answer kernel_info_request
    "bad-signature": None,  # sign every outgoing message with a wrong key
    "unsigned": None,  # send every message with an empty signature
    "stall-heartbeat-after": float,  # stop echoing heartbeats N seconds after binding
    "exit-on-start": int,  # print a line to stdout and stderr, exit CODE before binding
    "slow-start": float,  # sleep SECONDS before binding
}
#: Environment variable with extra behaviours, ``;``-separated.
BEHAVIOUR_ENV = "FAKE_KERNEL_BEHAVIOUR"
PROTOCOL_VERSION = "5.3"  # what our replies claim
POLL_INTERVAL = 100  # milliseconds between checks of flags (SIGINT, stall, deadlines)
HANDSHAKE_TIMEOUT = 10_000  # milliseconds to wait for a JEP 66 handshake_reply
LINGER = 1000  # milliseconds to flush the last replies when exiting
KERNEL_INFO: dict[str, Any] = {
    "status": "ok",
    "protocol_version": PROTOCOL_VERSION,
    "implementation": "fake",
    "implementation_version": "1.0",
    "language_info": {
        "name": "fake",
        "version": "1.0",
        "mimetype": "text/plain",
        "file_extension": ".txt",
    },
    "banner": "Fake kernel (kallichore.testing)",
    "help_links": [],
}


class FakeKernelError(Exception):
    """A fatal problem (bad connection file, failed handshake)."""


@attrs.frozen
class Behaviour:
    """The misbehaviours a fake kernel was asked for (all off by default)."""

    ignore_shutdown: bool = False
    no_kernel_info: bool = False
    bad_signature: bool = False
    unsigned: bool = False
    stall_heartbeat_after: float | None = None
    exit_on_start: int | None = None
    slow_start: float = 0.0

    @classmethod
    def parse(cls, groups: Sequence[Sequence[str]]) -> Behaviour:
        """Build from ``--behaviour`` groups (``[name]``, ``[name, value]`` or ``[name=value]``).

        Raises:
            ValueError: an unknown name, a missing/extra value, a bad number.
        """
        fields: dict[str, Any] = {}
        for group in groups:
            words = [w for part in group for w in part.split("=", 1)]
            name, values = words[0], words[1:]
            if name not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {name!r}; known: {', '.join(BEHAVIOURS)}")
            kind = BEHAVIOURS[name]
            if len(values) != (0 if kind is None else 1):
                raise ValueError(
                    f"behaviour {name!r} takes {'no' if kind is None else 'one'} value"
                )
            fields[name.replace("-", "_")] = True if kind is None else kind(values[0])
        return cls(**fields)


@attrs.define(eq=False)
class KernelMessages:
    """A fake kernel's end of the wire codec: what it sends, signed, and what it accepts.

    Sans-io (no sockets), so a kernel on another transport can speak alike.

    Args:
        key: the connection file's key.
        behaviour: ``bad-signature`` and ``unsigned`` change how messages are signed.
    """

    key: bytes
    behaviour: Behaviour = attrs.field(factory=Behaviour)
    #: The kernel's session id (in every header it sends, and in iopub topics).
    session: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _out_signer: Signer = attrs.field(init=False)
    _deserializer: Deserializer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        signer = Signer(self.key)
        self._out_signer = signer
        if self.behaviour.bad_signature:
            self._out_signer = Signer(b"wrong-" + self.key)
        if self.behaviour.unsigned:
            self._out_signer = Signer(b"")
        self._deserializer = Deserializer(signer, ReplayWindow())

    def receive(self, frames: Sequence[bytes]) -> WireMessage:
        """Verify and decode a request.

        Raises:
            RemoteProtocolError: bad signature, replay, malformed frames.
        """
        return self._deserializer.receive_frames(frames)

    def frames(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any],
        identities: Sequence[bytes] = (),
    ) -> list[bytes]:
        """A new message of ours, serialized and signed."""
        header = new_header(
            msg_type, session=self.session, username="fake", version=PROTOCOL_VERSION
        )
        msg = WireMessage(
            header=header,
            parent_header=parent,
            metadata=b"{}",
            content=json.dumps(content).encode(),
            identities=tuple(identities),
        )
        return serialize(msg, self._out_signer)

    def reply(self, request: WireMessage, content: dict[str, Any]) -> list[bytes]:
        """The ``*_reply`` to ``request``, routed back to its sender."""
        msg_type = request.msg_type.removesuffix("_request") + "_reply"
        return self.frames(msg_type, content, request.header, request.identities)

    def publication(
        self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]
    ) -> list[bytes]:
        """An iopub message (topic ``kernel.<session>.<msg_type>``)."""
        topic = f"kernel.{self.session}.{msg_type}".encode()
        return self.frames(msg_type, content, parent, [topic])

    def check_handshake_reply(self, frames: Sequence[bytes]) -> None:
        """Accept the supervisor's JEP 66 ``handshake_reply``.

        Raises:
            FakeKernelError: a refusal (the supervisor's raw error frame), a
                bad message, or a reply whose status is not ``ok``.
        """
        if len(frames) == 1:  # the supervisor's raw error frame
            raise FakeKernelError(f"handshake refused: {frames[0].decode(errors='replace')}")
        try:
            reply = self.receive(frames)
        except RemoteProtocolError as exc:
            raise FakeKernelError(f"bad handshake_reply: {exc}") from None
        if reply.msg_type != "handshake_reply" or reply.content_json().get("status") != "ok":
            raise FakeKernelError(f"handshake failed: {reply.msg_type} {reply.content!r}")


def fake_kernel_argv(
    *behaviours: str,
    welcome: bool = False,
    registration_file: bool = False,
    connection_file: str = "{connection_file}",
    python: str = sys.executable,
) -> list[str]:
    """The command line that runs a fake kernel (e.g. a session's ``argv``).

    Args:
        behaviours: ``"name"`` or ``"name value"``, e.g. ``"slow-start 0.5"``.
        welcome: send JEP 65 ``iopub_welcome`` messages.
        registration_file: accept a JEP 66 registration file as ``-f``.
        connection_file: the ``-f`` argument; the supervisor's placeholder by default.
        python: the interpreter (``kallichore`` must be importable by it).
    """
    argv = [python, "-m", "kallichore.testing.fake_kernel", "-f", connection_file]
    if welcome:
        argv.append("--welcome")
    if registration_file:
        argv.append("--registration-file")
    for behaviour in behaviours:
        argv += ["--behaviour", *behaviour.split()]
    return argv


def _say(stream: Any, text: str) -> None:
    """Print a line for the supervisor; a closed pipe is not an error."""
    with contextlib.suppress(OSError, ValueError):
        print(f"fake kernel {os.getpid()}: {text}", file=stream, flush=True)


class FakeKernel:
    """The kernel proper: binds the sockets, then :meth:`serve` answers requests.

    Args:
        info: the decoded connection (or registration) file.
        behaviour: what to do wrong.
        welcome: send JEP 65 welcomes.
        register: perform the JEP 66 handshake if ``info`` has a ``registration_port``.
    """

    def __init__(
        self, info: dict[str, Any], behaviour: Behaviour, *, welcome: bool, register: bool
    ) -> None:
        if info.get("transport", "tcp") != "tcp":
            raise FakeKernelError(f"unsupported transport {info.get('transport')!r}")
        key = str(info.get("key", "")).encode("ascii")
        self.behaviour = behaviour
        self.welcome = welcome
        self.messages = KernelMessages(key, behaviour)
        self.execution_count = 0
        self.exiting = False  # set by shutdown_request
        self.interrupted = False  # set by interrupt_request / SIGINT, cleared by execute
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._bind(info, register=register)
        except BaseException:
            self.context.destroy(linger=0)
            raise

    def _bind(self, info: dict[str, Any], *, register: bool) -> None:
        ip = str(info.get("ip", "127.0.0.1"))
        jep66 = register and "registration_port" in info
        self.ports: dict[str, int] = {}
        sockets: dict[str, zmq.Socket[bytes]] = {}
        for channel, kind in (
            ("shell", zmq.ROUTER),
            ("control", zmq.ROUTER),
            ("stdin", zmq.ROUTER),
            ("iopub", zmq.XPUB),
            ("hb", zmq.ROUTER),
        ):
            sock = self.context.socket(kind)
            sock.setsockopt(zmq.LINGER, LINGER)
            if kind == zmq.XPUB:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber, not just new topics
                sock.setsockopt(zmq.SNDHWM, 0)  # never drop output: losses are the supervisor's
            if jep66:
                self.ports[channel] = sock.bind_to_random_port(f"tcp://{ip}")
            else:
                self.ports[channel] = int(info[f"{channel}_port"])
                sock.bind(f"tcp://{ip}:{self.ports[channel]}")
            sockets[channel] = sock
        self.shell, self.control, self.stdin = (
            sockets["shell"],
            sockets["control"],
            sockets["stdin"],
        )
        self.iopub, self.hb = sockets["iopub"], sockets["hb"]
        self.poller = zmq.Poller()
        for sock in sockets.values():
            self.poller.register(sock, zmq.POLLIN)
        self.started = time.monotonic()
        if jep66:
            self._register(ip, int(info["registration_port"]))

    # ------------------------------------------------------------- messaging

    def _reply(
        self, sock: zmq.Socket[bytes], request: WireMessage, content: dict[str, Any]
    ) -> None:
        sock.send_multipart(self.messages.reply(request, content))

    def publish(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]) -> None:
        """Send one iopub message (topic ``kernel.<session>.<msg_type>``)."""
        self.iopub.send_multipart(self.messages.publication(msg_type, content, parent))

    @contextlib.contextmanager
    def _busy(self, request: WireMessage) -> Iterator[None]:
        self.publish("status", {"execution_state": "busy"}, request.header)
        yield
        self.publish("status", {"execution_state": "idle"}, request.header)

    def _receive(self, sock: zmq.Socket[bytes], channel: str) -> WireMessage | None:
        frames = sock.recv_multipart()
        try:
            return self.messages.receive(frames)
        except RemoteProtocolError as exc:
            _say(sys.stderr, f"dropped a {channel} message: {exc}")
            return None

    def _register(self, ip: str, registration_port: int) -> None:
        """JEP 66: report our ports to the supervisor's REP socket, await the reply."""
        req = self.context.socket(zmq.REQ)
        try:
            req.setsockopt(zmq.LINGER, 0)
            req.connect(f"tcp://{ip}:{registration_port}")
            content = {f"{channel}_port": port for channel, port in self.ports.items()}
            req.send_multipart(self.messages.frames("handshake_request", content, {}))
            if not req.poll(HANDSHAKE_TIMEOUT, zmq.POLLIN):
                raise FakeKernelError("no handshake_reply from the registration socket")
            frames = req.recv_multipart()
        finally:
            req.close()
        self.messages.check_handshake_reply(frames)

    # --------------------------------------------------------------- serving

    def serve(self) -> int:
        """Answer requests until a ``shutdown_request``; returns the exit status."""
        _say(sys.stdout, "listening on " + " ".join(f"{c}={p}" for c, p in self.ports.items()))
        while not self.exiting:
            self._service(dict(self.poller.poll(POLL_INTERVAL)), shell=True)
        return 0

    def _service(self, ready: dict[Any, int], *, shell: bool) -> None:
        """Handle one message from each ready socket (shell only if ``shell``)."""
        if self.hb in ready:
            frames = self.hb.recv_multipart()
            stall = self.behaviour.stall_heartbeat_after
            if stall is None or time.monotonic() - self.started < stall:
                self.hb.send_multipart(frames)  # echo, envelope included
        if self.iopub in ready:
            event = self.iopub.recv()
            if self.welcome and event[:1] == b"\x01":
                topic = event[1:]
                welcome = self.messages.frames(
                    "iopub_welcome", {"subscription": topic.decode(errors="replace")}, {}
                )
                self.iopub.send_multipart([topic, *welcome] if topic else welcome)
        if self.control in ready and (msg := self._receive(self.control, "control")):
            self._on_request(self.control, msg)
        if self.stdin in ready:
            self._receive(self.stdin, "stdin")  # input_reply: nothing ever asks for input
        if shell and self.shell in ready and (msg := self._receive(self.shell, "shell")):
            self._on_request(self.shell, msg)

    def _on_request(self, sock: zmq.Socket[bytes], msg: WireMessage) -> None:
        msg_type = msg.msg_type
        if msg_type == "kernel_info_request" and self.behaviour.no_kernel_info:
            return
        if msg_type == "execute_request":
            self._execute(msg)
            return
        with self._busy(msg):
            if msg_type == "kernel_info_request":
                self._reply(sock, msg, KERNEL_INFO)
            elif msg_type == "shutdown_request":
                restart = bool(_content(msg).get("restart", False))
                self._reply(sock, msg, {"status": "ok", "restart": restart})
                self.exiting = not self.behaviour.ignore_shutdown
            elif msg_type == "interrupt_request":
                self.interrupted = True
                self._reply(sock, msg, {"status": "ok"})
            elif msg_type.endswith("_request"):
                self._reply(sock, msg, {"status": "ok"})

    def _execute(self, request: WireMessage) -> None:
        code = str(_content(request).get("code", ""))
        # Before execute_input: an interrupt sent once a client sees it must count.
        self.interrupted = False
        self.execution_count += 1
        count = self.execution_count
        command, arg = _command(code)
        with self._busy(request):
            self.publish("execute_input", {"code": code, "execution_count": count}, request.header)
            if command == "exit":
                os._exit(int(arg))
            interrupted = command == "sleep" and self._pause(arg)
            if interrupted:
                error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
                self.publish("error", error, request.header)
                reply: dict[str, Any] = {"status": "error", "execution_count": count, **error}
            else:
                texts = [f"{i}\n" for i in range(int(arg))] if command == "flood" else [code]
                for text in texts:
                    self.publish("stream", {"name": "stdout", "text": text}, request.header)
                reply = {
                    "status": "ok",
                    "execution_count": count,
                    "user_expressions": {},
                    "payload": [],
                }
            self._reply(self.shell, request, reply)

    def _pause(self, seconds: float) -> bool:
        """Wait, serving everything but shell; returns whether we were interrupted."""
        deadline = time.monotonic() + seconds
        while not self.interrupted and not self.exiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._service(
                dict(self.poller.poll(min(POLL_INTERVAL, int(left * 1000) + 1))), shell=False
            )
        return True

    def close(self) -> None:
        """Close every socket, flushing for up to :data:`LINGER` ms."""
        self.context.destroy(linger=LINGER)


def _command(code: str) -> tuple[str, float]:
    """``("flood" | "sleep" | "exit", number)`` for those commands, else ``("", 0)``."""
    words = code.split()
    if len(words) == 2 and words[0] in ("flood", "sleep", "exit"):
        with contextlib.suppress(ValueError):
            number = float(words[1]) if words[0] == "sleep" else int(words[1])
            return words[0], number
    return "", 0.0


def _content(msg: WireMessage) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        content = msg.content_json()
        if isinstance(content, dict):
            return content
    return {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kallichore.testing.fake_kernel",
        description="A fake Jupyter kernel for testing supervisors.",
    )
    parser.add_argument(
        "-f",
        dest="connection_file",
        required=True,
        help="connection file (or JEP 66 registration file)",
    )
    parser.add_argument(
        "--welcome",
        action="store_true",
        help="send a JEP 65 iopub_welcome on each new subscription",
    )
    parser.add_argument(
        "--registration-file",
        action="store_true",
        help="if -f has a registration_port, do the JEP 66 handshake",
    )
    parser.add_argument(
        "--behaviour",
        action="append",
        nargs="+",
        default=[],
        metavar="NAME [VALUE]",
        help=f"misbehave (repeatable): {', '.join(BEHAVIOURS)}",
    )
    return parser


def _exit_on_start(code: int) -> NoReturn:
    _say(sys.stdout, f"exiting with status {code} before binding (exit-on-start)")
    _say(sys.stderr, "simulated startup failure (exit-on-start)")
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a fake kernel until it is told to shut down; returns the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the kernel can take interrupts
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        extra = [g.split() for g in os.environ.get(BEHAVIOUR_ENV, "").split(";") if g.strip()]
        behaviour = Behaviour.parse([*args.behaviour, *extra])
    except ValueError as exc:
        parser.error(str(exc))
    if behaviour.ignore_shutdown:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(behaviour.slow_start)
    if behaviour.exit_on_start is not None:
        _exit_on_start(behaviour.exit_on_start)
    try:
        with open(args.connection_file, encoding="utf-8") as f:
            info = json.load(f)
        if not isinstance(info, dict):
            raise ValueError(f"{args.connection_file} does not hold a JSON object")
        kernel = FakeKernel(info, behaviour, welcome=args.welcome, register=args.registration_file)
    except (OSError, ValueError, KeyError, FakeKernelError, zmq.ZMQError) as exc:
        _say(sys.stderr, f"error: {exc}")
        return 1

    def on_sigint(_signum: int, _frame: object) -> None:
        kernel.interrupted = True

    signal.signal(signal.SIGINT, on_sigint)
    try:
        return kernel.serve()
    finally:
        kernel.close()


if __name__ == "__main__":
    sys.exit(main())
