"""A synthetic firehose kernel for the benchmark: real ZeroMQ, minimal Python.

``python firehose_kernel.py -f CONNECTION_FILE``

Speaks just enough of the Jupyter protocol (v5.3, HMAC-SHA256 signed) for a
supervisor, jupyter_client and Kernel Gateway to start it and drive it:

* ``kernel_info_request`` -> ``kernel_info_reply`` (shell or control);
* ``execute_request`` whose code is an integer N -> busy, N iopub ``stream``
  messages (``"0\\n"`` .. ``"N-1\\n"``) published as fast as ZeroMQ takes them,
  ``execute_reply``, idle; any other code publishes no stream;
* ``shutdown_request`` (control) -> reply, exit 0; other ``*_request`` -> ok reply;
* heartbeat: echoes.

Each stream message has a unique ``msg_id`` (so replay detection accepts it);
the header, parent and content are spliced from pre-encoded pieces and only
the HMAC is computed per message, so this process is not the bottleneck
(``python firehose_kernel.py --self-test`` prints its own publishing rate).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

import zmq

DELIM = b"<IDS|MSG>"


class Firehose:
    def __init__(self, info: dict[str, Any]) -> None:
        self.key = info.get("key", "").encode()
        self.session = uuid.uuid4().hex
        self.ctx = zmq.Context()
        url = f"{info.get('transport', 'tcp')}://{info['ip']}:"
        self.shell = self._bind(zmq.ROUTER, url, info["shell_port"])
        self.control = self._bind(zmq.ROUTER, url, info["control_port"])
        self.stdin = self._bind(zmq.ROUTER, url, info["stdin_port"])
        self.iopub = self._bind(zmq.PUB, url, info["iopub_port"], hwm=True)
        self.hb = self._bind(zmq.REP, url, info["hb_port"])
        self.count = 0
        self.seq = 0
        self._hmac = hmac.new(self.key, digestmod=sha256) if self.key else None

    def _bind(self, kind: int, url: str, port: int, hwm: bool = False) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if hwm:  # never drop: the benchmark counts every message
            sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(f"{url}{port}")
        return sock

    # ----------------------------------------------------------------- wire

    def _sign(self, parts: list[bytes]) -> bytes:
        if self._hmac is None:
            return b""
        h = self._hmac.copy()
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def _header(self, msg_type: str) -> bytes:
        self.seq += 1
        return json.dumps(
            {
                "msg_id": f"{self.session}_{self.seq}",
                "msg_type": msg_type,
                "username": "firehose",
                "session": self.session,
                "date": datetime.now(UTC).isoformat(),
                "version": "5.3",
            }
        ).encode()

    def _send(
        self, sock: zmq.Socket[bytes], idents: list[bytes], msg_type: str, content: Any,
        parent: bytes,
    ) -> None:
        parts = [self._header(msg_type), parent, b"{}", json.dumps(content).encode()]
        sock.send_multipart([*idents, DELIM, self._sign(parts), *parts])

    def _publish(self, msg_type: str, content: Any, parent: bytes) -> None:
        topic = f"kernel.{self.session}.{msg_type}".encode()
        self._send(self.iopub, [topic], msg_type, content, parent)

    def _flood(self, n: int, parent: bytes) -> None:
        # Pre-encoded pieces; only msg_id, content and the HMAC change.
        topic = f"kernel.{self.session}.stream".encode()
        date = datetime.now(UTC).isoformat()
        head = ('{"msg_id": "' + self.session + "_f").encode()
        tail = (
            '", "msg_type": "stream", "username": "firehose", "session": "'
            + self.session + '", "date": "' + date + '", "version": "5.3"}'
        ).encode()
        send = self.iopub.send_multipart
        base = self.seq
        self.seq += n
        mac = self._hmac
        # Built before the first send, so the publishing loop is ZeroMQ alone
        # (clients measure the rate from the first stream message to the last).
        messages = []
        for i in range(n):
            header = b"%s%d%s" % (head, base + i, tail)
            content = b'{"name": "stdout", "text": "%d\\n"}' % i
            if mac is not None:
                h = mac.copy()
                h.update(header)
                h.update(parent)
                h.update(b"{}")
                h.update(content)
                sig = h.hexdigest().encode()
            else:
                sig = b""
            messages.append((topic, DELIM, sig, header, parent, b"{}", content))
        for frames in messages:
            send(frames)

    # ------------------------------------------------------------- handling

    def _handle(self, sock: zmq.Socket[bytes]) -> bool:
        frames = sock.recv_multipart()
        i = frames.index(DELIM)
        idents = frames[:i]
        header_b, _, _, content_b = frames[i + 2 : i + 6]
        header = json.loads(header_b)
        msg_type = header["msg_type"]
        content = json.loads(content_b)
        self._publish("status", {"execution_state": "busy"}, header_b)
        reply_type = msg_type.removesuffix("_request") + "_reply"
        keep_going = True
        if msg_type == "kernel_info_request":
            reply: dict[str, Any] = {
                "status": "ok", "protocol_version": "5.3", "implementation": "firehose",
                "implementation_version": "1.0",
                "language_info": {"name": "firehose", "version": "1.0", "mimetype": "text/plain",
                                  "file_extension": ".txt"},
                "banner": "firehose", "help_links": [],
            }
        elif msg_type == "execute_request":
            self.count += 1
            code = str(content.get("code", "")).strip()
            self._publish("execute_input", {"code": code, "execution_count": self.count},
                          header_b)
            if code.isdigit():
                self._flood(int(code), header_b)
            reply = {"status": "ok", "execution_count": self.count, "user_expressions": {},
                     "payload": []}
        elif msg_type == "shutdown_request":
            reply = {"status": "ok", "restart": bool(content.get("restart"))}
            keep_going = False
        else:
            reply = {"status": "ok"}
        self._send(sock, idents, reply_type, reply, header_b)
        self._publish("status", {"execution_state": "idle"}, header_b)
        return keep_going

    def serve(self) -> None:
        poller = zmq.Poller()
        for s in (self.shell, self.control, self.stdin, self.hb):
            poller.register(s, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                if sock is self.hb:
                    self.hb.send(self.hb.recv())
                elif sock is self.stdin:
                    sock.recv_multipart()
                elif not self._handle(sock):
                    time.sleep(0.05)  # let the reply and idle leave
                    return


def self_test(n: int) -> float:
    """Publishing rate (msg/s) of ``_flood`` to a connected SUB draining it."""
    import socket

    ports = []
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    info = dict(zip(["shell_port", "control_port", "stdin_port", "iopub_port", "hb_port"],
                    ports, strict=True), ip="127.0.0.1", key=uuid.uuid4().hex)
    fh = Firehose(info)
    sub = fh.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{info['iopub_port']}")
    time.sleep(0.3)
    t0 = time.perf_counter()
    fh._flood(n, b"{}")
    t_pub = time.perf_counter() - t0
    got = 0
    while got < n:
        sub.recv_multipart()
        got += 1
    return n / t_pub


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-f", dest="connection_file")
    parser.add_argument("--self-test", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.self_test:
        print(f"{self_test(args.self_test):.0f} msg/s published")
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(args.connection_file) as f:
        info = json.load(f)
    Firehose(info).serve()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
