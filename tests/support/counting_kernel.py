"""An ipykernel that records what its IOPub socket drops at the send high-water mark.

ipykernel publishes output on a ZeroMQ XPUB socket. When the subscriber's
queue on that socket holds ``SNDHWM`` messages (1000 by default) -- because
the subscriber's side of the TCP connection is full, or the kernel's own
ZeroMQ I/O thread has not run for a while -- ZeroMQ silently drops every
further message until the queue drains. Nobody is told: the kernel does not
know, and the subscriber only sees a gap.

This kernel behaves exactly like the stock one (it still drops), but knows
when it does: its socket has ``XPUB_NODROP`` set, and each send is
non-blocking, so ZeroMQ refuses (``EAGAIN``) precisely the messages the
stock socket would have dropped, and this kernel records them before
discarding them. A test asks it afterwards, by executing::

    import ipykernel.iostream, json
    print(json.dumps(ipykernel.iostream.IOPubThread.kc_dropped))

and gets, for each dropped message, ``[msg_id, msg_type, parent_msg_id,
name, text]`` (``name`` and ``text`` are a stream message's, else ``""``).
With that, a test can tell loss inside the kernel (at its own socket) from
loss anywhere after it: every message that ZeroMQ accepted from the kernel
must reach the client.

Also recorded (``IOPubThread.kc_stalls``), when a drop follows a successful
send: the TCP queues of the IOPub connection at that moment, read from
``/proc/net/tcp`` -- ``[kernel_send_queue, subscriber_receive_queue,
io_thread_states]``, the queues in bytes (``None`` where they cannot be
read), the states one letter per ZeroMQ I/O thread of the kernel (``R``
running or runnable, ``S`` asleep). A full subscriber receive queue means
the subscriber did not read; an empty one means the queue that overflowed
is inside the kernel, in front of its own I/O thread.

With ``KC_TEST_IOPUB_SNDHWM`` set, the socket's high-water mark is that
many messages instead of 1000, so that drops can be made to happen.

Run as ``python -m tests.support.counting_kernel -f {connection_file}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import zmq
from ipykernel.iostream import MASTER as _MASTER
from ipykernel.iostream import IOPubThread
from ipykernel.kernelapp import IPKernelApp

#: Environment variable: a send high-water mark for the IOPub socket, in
#: place of ZeroMQ's 1000 messages (to make drops happen on purpose).
SNDHWM_VAR = "KC_TEST_IOPUB_SNDHWM"

_DELIMITER = b"<IDS|MSG>"
_PROC_NET_TCP = "/proc/net/tcp"


def _describe(frames: list[Any]) -> list[str]:
    """``[msg_id, msg_type, parent msg_id, stream name, text]`` of a serialized message."""
    parts = [bytes(f) for f in frames]
    try:
        at = parts.index(_DELIMITER)
        header = json.loads(parts[at + 2])
        parent = json.loads(parts[at + 3])
        content = json.loads(parts[at + 5])
    except (ValueError, IndexError):
        return ["?", "?", "", "", ""]
    stream = header.get("msg_type") == "stream"
    return [
        header.get("msg_id", "?"),
        header.get("msg_type", "?"),
        parent.get("msg_id", ""),
        content.get("name", "") if stream else "",
        content.get("text", "") if stream else "",
    ]


def _tcp_queues(port: int) -> list[int | None]:
    """``[send queue on the kernel's side, receive queue on the subscriber's]``."""
    kernel_tx: int | None = None
    subscriber_rx: int | None = None
    try:
        with open(_PROC_NET_TCP) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return [None, None]
    for row in rows:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        tx, rx = (int(q, 16) for q in fields[4].split(":"))
        if fields[3] != "01":  # ESTABLISHED only
            continue
        if local_port == port:
            kernel_tx = tx
        elif remote_port == port:
            subscriber_rx = rx
    return [kernel_tx, subscriber_rx]


def _io_thread_states() -> str:
    """The scheduler state of this process's ZeroMQ I/O threads (``R``: waiting for a CPU)."""
    states = []
    try:
        for tid in sorted(os.listdir("/proc/self/task")):
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if name.startswith("ZMQbg/IO"):
                states.append(stat[stat.rindex(")") + 2])
    except OSError:
        return "?"
    return "".join(states)


def _counting_send(self: Any, msg: list[Any], *args: Any, **kwargs: Any) -> None:
    """``IOPubThread._really_send``, recording what the socket refuses."""
    if self.closed or self._check_mp_mode() != _MASTER:
        _stock_really_send(self, msg, *args, **kwargs)
        return
    kwargs.pop("flags", None)
    try:
        self.socket.send_multipart(msg, zmq.NOBLOCK, **kwargs)
    except zmq.Again:
        cls = type(self)
        if not self.kc_dropping:
            port = int(self.socket.getsockopt(zmq.LAST_ENDPOINT).rsplit(b":", 1)[1])
            cls.kc_stalls.append([*_tcp_queues(port), _io_thread_states()])
        self.kc_dropping = True
        cls.kc_dropped.append(_describe(msg))
    else:
        self.kc_dropping = False


_stock_bind_socket = IPKernelApp._bind_socket
_stock_really_send = IOPubThread._really_send


def _bind_socket(self: Any, socket: zmq.Socket[bytes], port: int) -> int:
    # Options must be set before bind: connections accepted later take the
    # options the socket had when it was bound.
    if socket.getsockopt(zmq.TYPE) == zmq.XPUB:
        socket.setsockopt(zmq.XPUB_NODROP, 1)
        hwm = os.environ.get(SNDHWM_VAR)
        if hwm:
            socket.setsockopt(zmq.SNDHWM, int(hwm))
    port = _stock_bind_socket(self, socket, port)
    return port


IOPubThread.kc_dropped = []  # type: ignore[attr-defined]
IOPubThread.kc_stalls = []  # type: ignore[attr-defined]
IOPubThread.kc_dropping = False  # type: ignore[attr-defined]
IOPubThread._really_send = _counting_send  # type: ignore[method-assign]
IPKernelApp._bind_socket = _bind_socket  # type: ignore[method-assign]

if __name__ == "__main__":
    IPKernelApp.launch_instance()
