"""A protocol fuzzer at the connection level, for the server's listeners.

Where schemathesis judges one request at a time, this drives whole
connections: random sequences, on one kept-alive connection, of valid and
invalid requests, WebSocket upgrades that are accepted and refused (with
more requests after a refusal), partial requests, bad WebSocket frames,
pipelining, half-closes and resets. What must hold throughout:

* the server process stays up and ``GET /status`` answers on a new connection;
* a well-formed request on a connection in a clean state gets a response
  that is not a 5xx, within :data:`RESPONSE_TIMEOUT`;
* no kernel is touched: requests that name the kernel's session only read it
  (the caller checks its pid and status at the end). Upgrades go to a
  session with no kernel, made for the purpose.

Everything random comes from one :class:`random.Random(seed)`, so the
sequence of actions is the same for a seed (timing is not). Every problem is
recorded with the seed and the actions of its sequence.

Stdlib only (``socket``), so the bytes on the wire are exactly the ones
written here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.server_process import Endpoint

__all__ = ["RESPONSE_TIMEOUT", "ConnectionFuzzer", "FuzzStats", "FuzzTarget"]

#: How long a well-formed request may take to be answered (the machine is shared).
RESPONSE_TIMEOUT = 15.0  # seconds
#: How long to listen after something the server may answer or ignore.
QUIET_TIMEOUT = 0.15  # seconds
#: How often the liveness probe runs during a fuzz run.
PROBE_INTERVAL = 2.0  # seconds
#: Most actions in one sequence (one connection).
MAX_ACTIONS = 12
#: Sequences whose actions a problem report shows.
HISTORY = 3


@dataclass(frozen=True)
class FuzzTarget:
    """A running server and the two sessions the fuzzer knows about."""

    endpoint: Endpoint
    #: A session with a running kernel: only ever read.
    kernel_session: str
    #: A session with no kernel: upgrades are accepted here.
    spare_session: str
    is_alive: Callable[[], bool]


@dataclass
class FuzzStats:
    """What a run did, and the problems it found."""

    seed: int
    sequences: int = 0
    requests: int = 0
    frames: int = 0
    upgrades_accepted: int = 0
    upgrades_refused: int = 0
    probes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.sequences} sequences, {self.requests} requests, "
            f"{self.frames} WebSocket frames, {self.upgrades_accepted} upgrades accepted, "
            f"{self.upgrades_refused} refused, {self.probes} status probes, "
            f"{len(self.problems)} problems, {self.seconds:.1f} s"
        )


class _Unreachable(AssertionError):
    """The server no longer accepts connections."""


class _Closed(Exception):
    """The server closed the connection (or reset it)."""


class _Conn:
    """One client connection and the bytes read from it but not yet used."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:  # EPIPE, ECONNRESET: the server let go
            raise _Closed(str(exc)) from None

    def _fill(self, deadline: float) -> None:
        if self.eof:
            raise _Closed("EOF")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:
            raise _Closed(str(exc)) from None
        if not chunk:
            self.eof = True
            raise _Closed("EOF")
        self.buf += chunk

    def read_until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buf:
            self._fill(deadline)
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buf) < size:
            self._fill(deadline)
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def drain(self, seconds: float) -> None:
        """Read whatever comes within ``seconds`` (EOF ends it early)."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while True:
                self._fill(deadline)

    def close(self, *, reset: bool = False) -> None:
        with contextlib.suppress(OSError):
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _read_response(conn: _Conn, deadline: float, *, head_only: bool = False) -> _Response:
    """One HTTP/1.1 response (raises :class:`_Closed` or ``TimeoutError``)."""
    head = conn.read_until(b"\r\n\r\n", deadline)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP response: {head[:200]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status < 200 or status in (204, 304):
        return _Response(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(conn.read_until(b"\r\n", deadline).split(b";")[0], 16)
            if size == 0:
                conn.read_until(b"\r\n", deadline)
                return _Response(status, headers, body)
            body += conn.read_exactly(size, deadline)
            conn.read_until(b"\r\n", deadline)
    length = int(headers.get("content-length", "0"))
    return _Response(status, headers, conn.read_exactly(length, deadline))


def _keeps_alive(response: _Response) -> bool:
    """Whether the connection carries on after ``response`` (else it is closing)."""
    if response.headers.get("connection", "").lower() == "close":
        raise _Closed("Connection: close")
    return True


# ----------------------------------------------------------------- request text


def _request(
    method: str,
    path: str,
    *,
    token: str | None,
    body: bytes | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in extra or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _ws_key(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(16)).decode()


def _upgrade_headers(rng: random.Random) -> list[tuple[str, str]]:
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", _ws_key(rng)),
        ("Sec-WebSocket-Version", "13"),
    ]


def _frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _bad_frames(rng: random.Random) -> list[bytes]:
    """Frames a server must refuse by closing the connection (all but the last two).

    The last two need not end it at once: a length far over the limit with no
    payload yet may be refused from its header or once the limit is reached
    (the fallback path reads on), and noise may be the start of a valid frame.
    """
    return [
        _frame(0x1, b"\xff\xfe\xfd"),  # text that is not UTF-8
        _frame(0x1, b"x", mask=False),  # unmasked client frame
        _frame(0x1, b"x", rsv=rng.choice([1, 2, 4])),  # reserved bits
        _frame(rng.choice([0x3, 0x4, 0xB, 0xF]), b"x"),  # unknown opcode
        _frame(0x9, b"p" * 126),  # control frame too long
        _frame(0x9, b"p", fin=False),  # fragmented control frame
        _frame(0x0, b"orphan"),  # continuation with nothing started
        _frame(0x8, b"\x03"),  # close with a one-byte payload
        _frame(0x8, struct.pack("!H", 1005)),  # a code a peer may not send
        struct.pack("!BBQ", 0x81, 0xFF, 2**62) + b"\x00" * 4,  # a length far over any limit
        rng.randbytes(rng.randint(1, 64)),  # noise
    ]


def _good_frames(rng: random.Random) -> list[bytes]:
    """Frames a server must take without closing."""
    junk = json.dumps({"kind": "jupyter", "x": rng.random()}).encode()
    return [
        _frame(0x1, junk),  # valid UTF-8, not a valid message: dropped with a warning
        _frame(0x2, rng.randbytes(rng.randint(0, 40))),  # binary: ignored
        _frame(0x9, b"ping"),
        _frame(0xA, b"unsolicited pong"),
        _frame(0x1, junk[:3], fin=False) + _frame(0x0, junk[3:]),  # fragmented text
    ]


# ------------------------------------------------------------------- the fuzzer


class ConnectionFuzzer:
    """Runs random connection sequences against one server."""

    def __init__(self, target: FuzzTarget, seed: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.stats = FuzzStats(seed=seed)
        self.token = target.endpoint.token
        self._log: list[str] = []
        # The action logs of the latest sequences (the one that broke the
        # server is often the one before the first that notices).
        self._history: list[list[str]] = []

    # ------------------------------------------------------------ run and probe

    def run(self, seconds: float) -> FuzzStats:
        """Fuzz for ``seconds``; stops early at the first problem that ends the server."""
        began = time.monotonic()
        next_probe = began
        while time.monotonic() - began < seconds:
            self._log = []
            self._history.append(self._log)
            del self._history[:-HISTORY]
            try:
                self.sequence()
            except _Unreachable as exc:
                self._problem(str(exc))
                break
            except AssertionError as exc:
                self._problem(str(exc))
            if not self.target.is_alive():
                self._problem("the server process exited")
                break
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + PROBE_INTERVAL
                if not self.probe():
                    break
        self.stats.seconds = time.monotonic() - began
        return self.stats

    def probe(self) -> bool:
        """``GET /status`` on a new connection; records a problem if it fails."""
        self.stats.probes += 1
        try:
            reply = self.target.endpoint.request("GET", "/status", authorization=None)
        except OSError as exc:
            self._problem(f"GET /status failed: {exc!r}")
            return False
        if reply.status != 200:
            self._problem(f"GET /status answered {reply.status}: {reply.body[:200]!r}")
            return False
        return True

    def _problem(self, what: str) -> None:
        first = self.stats.sequences - len(self._history) + 1
        recent = "\n".join(
            f"  sequence {first + i}: {' -> '.join(log) or '(none)'}"
            for i, log in enumerate(self._history)
        )
        self.stats.problems.append(
            f"seed {self.stats.seed}, sequence {self.stats.sequences}: {what}\n{recent}"
        )

    # ---------------------------------------------------------------- sequences

    def sequence(self) -> None:
        """One connection, a few random actions, then a random ending."""
        self.stats.sequences += 1
        try:
            conn = _Conn(self.target.endpoint.open_raw(RESPONSE_TIMEOUT))
        except OSError as exc:
            raise _Unreachable(f"cannot connect: {exc!r}") from None
        clean = True  # nothing unparseable sent: a valid request must be answered
        try:
            for _ in range(self.rng.randint(1, MAX_ACTIONS)):
                action = self.rng.choices(
                    self._actions, weights=[w for _, w in self._ACTION_WEIGHTS]
                )[0]
                self._log.append(action.__name__.lstrip("_"))
                clean = action(conn, clean)
            self._end(conn)
        except _Closed:
            self._log.append("closed by server")
        finally:
            conn.close()

    _ACTION_WEIGHTS = [
        ("_valid_request", 6),
        ("_invalid_request", 3),
        ("_pipelined", 1),
        ("_partial_request", 1),
        ("_upgrade_refused", 2),
        ("_upgrade_accepted", 2),
        ("_half_close", 1),
    ]

    @property
    def _actions(self) -> list[Callable[[_Conn, bool], bool]]:
        return [getattr(self, name) for name, _ in self._ACTION_WEIGHTS]

    def _end(self, conn: _Conn) -> None:
        ending = self.rng.choice(["close", "reset", "half-close", "linger"])
        self._log.append(f"end:{ending}")
        if ending == "reset":
            conn.close(reset=True)
        elif ending == "half-close":
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            conn.drain(QUIET_TIMEOUT)
        elif ending == "linger":
            conn.drain(QUIET_TIMEOUT)

    # ------------------------------------------------------------------ actions

    def _valid(self) -> bytes:
        """A well-formed request (one that never changes the kernel's session)."""
        rng, token = self.rng, self.token
        kernel, unknown = self.target.kernel_session, f"no-such-{rng.randint(0, 999)}"
        choices: list[bytes] = [
            _request("GET", "/status", token=None),
            _request("GET", "/sessions", token=token),
            _request("GET", f"/sessions/{kernel}", token=token),  # read only
            _request("GET", f"/sessions/{unknown}", token=token),
            _request("GET", "/server_configuration", token=token),
            _request("POST", "/client_heartbeat", token=token, body=b"{}"),
            _request(
                "POST",
                f"/sessions/{unknown}/{rng.choice(['start', 'kill', 'interrupt', 'restart'])}",
                token=token,
            ),
            _request("DELETE", f"/sessions/{unknown}", token=token),
            _request(
                "PUT",
                "/sessions",
                token=token,
                body=rng.choice([b"{}", b"[]", b"null", b'{"session_id": 5}']),
            ),
            _request("GET", "/sessions", token="wrong-token"),
            _request("GET", f"/{rng.choice(['nope', 'sessions/a/b/c', 'status/x'])}", token=token),
            _request(rng.choice(["PATCH", "DELETE"]), "/status", token=token),
            _request("HEAD", "/status", token=None),
            _request("OPTIONS", "/sessions", token=token),
            _request(
                "POST",
                "/server_configuration",
                token=token,
                body=rng.choice([b"{}", b'{"log_level": "x"}', b"{"]),
            ),
        ]
        return rng.choice(choices)

    def _expect_response(self, conn: _Conn, request: bytes, *, head: bool = False) -> _Response:
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        try:
            response = _read_response(conn, deadline, head_only=head)
        except TimeoutError:
            raise AssertionError(
                f"no response within {RESPONSE_TIMEOUT} s to {request[:80]!r}"
            ) from None
        if response.status >= 500:
            raise AssertionError(f"{response.status} for {request[:80]!r}: {response.body[:300]!r}")
        return response

    def _exchange(self, conn: _Conn, request: bytes, clean: bool) -> _Response | None:
        """Send ``request``; its response if the connection was clean, else ``None``."""
        self.stats.requests += 1
        conn.send(request)
        if not clean:
            conn.drain(QUIET_TIMEOUT)
            return None
        return self._expect_response(conn, request, head=request.startswith(b"HEAD "))

    def _valid_request(self, conn: _Conn, clean: bool) -> bool:
        response = self._exchange(conn, self._valid(), clean)
        return response is not None and _keeps_alive(response)

    def _invalid(self) -> bytes:
        rng = self.rng
        return rng.choice(
            [
                rng.randbytes(rng.randint(1, 200)),
                b"GET\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"G\x00T /status HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /status HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
                b"GET /status HTTP/1.1\r\nHost : x\r\n\r\n",
                b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
                b"PUT /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                b"PUT /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"PUT /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                b"PUT /sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                b"PUT /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"GET /" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /sessions/%ff%fe/channels HTTP/1.1\r\nHost: x\r\n\r\n",
                b"BREW /status HTTP/1.1\r\nHost: x\r\n\r\n",
                b"get /status HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET http://other/status HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\r\n\r\n\r\n",
                b"GET /status HTTP/1.1\nHost: x\n\n",
            ]
        )

    def _invalid_request(self, conn: _Conn, clean: bool) -> bool:
        self.stats.requests += 1
        conn.send(self._invalid())
        conn.drain(QUIET_TIMEOUT)
        return False

    def _pipelined(self, conn: _Conn, clean: bool) -> bool:
        first, second = self._valid(), self._valid()
        self.stats.requests += 2
        conn.send(first + second)
        if not clean:
            conn.drain(QUIET_TIMEOUT)
            return False
        for request in (first, second):
            response = self._expect_response(conn, request, head=request.startswith(b"HEAD "))
            if not _keeps_alive(response):
                return False
        return True

    def _partial_request(self, conn: _Conn, clean: bool) -> bool:
        request = self._valid()
        cut = self.rng.randint(1, len(request) - 1)
        self.stats.requests += 1
        conn.send(request[:cut])
        conn.drain(QUIET_TIMEOUT)
        if not clean or self.rng.random() < 0.5:
            return False  # left hanging: whatever comes next continues it
        conn.send(request[cut:])
        self._expect_response(conn, request, head=request.startswith(b"HEAD "))
        return True

    def _half_close(self, conn: _Conn, clean: bool) -> bool:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.drain(QUIET_TIMEOUT)
        raise _Closed("half-closed by us")

    def _upgrade_refused(self, conn: _Conn, clean: bool) -> bool:
        rng, token = self.rng, self.token
        spare = self.target.spare_session
        headers = _upgrade_headers(rng)
        variant = rng.randrange(5)
        path, use_token = f"/sessions/{spare}/channels", token
        if variant == 0:
            path = f"/sessions/no-such-{rng.randint(0, 999)}/channels"
        elif variant == 1:
            use_token = "wrong-token"
        elif variant == 2:
            headers = [h for h in headers if h[0] != "Sec-WebSocket-Key"]
        elif variant == 3:
            headers = [(n, "8" if n == "Sec-WebSocket-Version" else v) for n, v in headers]
        else:
            headers = [(n, v) for n, v in headers if n != "Upgrade"] + [("Upgrade", "foo/1")]
        response = self._exchange(
            conn, _request("GET", path, token=use_token, extra=headers), clean
        )
        if response is None:
            return False
        if response.status == 101:
            raise AssertionError(f"refused upgrade variant {variant} was accepted")
        if self.target.endpoint.transport == "tcp":
            self.stats.upgrades_refused += 1
        return _keeps_alive(response)

    def _upgrade_accepted(self, conn: _Conn, clean: bool) -> bool:
        request = _request(
            "GET",
            f"/sessions/{self.target.spare_session}/channels",
            token=self.token,
            extra=_upgrade_headers(self.rng),
        )
        response = self._exchange(conn, request, clean)
        if response is None:
            return False
        if response.status != 101:
            # The Unix main socket answers a channels GET with the socket path.
            return _keeps_alive(response)
        self.stats.upgrades_accepted += 1
        self._websocket(conn)
        raise _Closed("WebSocket over")

    def _expect_eof(self, conn: _Conn, after: str) -> None:
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        with contextlib.suppress(_Closed):
            while True:
                try:
                    conn._fill(deadline)
                except TimeoutError:
                    raise AssertionError(
                        f"connection still open {RESPONSE_TIMEOUT} s after {after}"
                    ) from None

    def _websocket(self, conn: _Conn) -> None:
        """Good frames, then maybe one bad one; then a random way out."""
        rng = self.rng
        for _ in range(rng.randint(0, 4)):
            frame = rng.choice(_good_frames(rng))
            self.stats.frames += 1
            self._log.append("ws:good")
            conn.send(frame)
        conn.drain(QUIET_TIMEOUT / 3)
        if rng.random() < 0.6:
            frames = _bad_frames(rng)
            index = rng.randrange(len(frames))
            self.stats.frames += 1
            self._log.append(f"ws:bad{index}")
            conn.send(frames[index])
            if index < len(frames) - 2:
                self._expect_eof(conn, f"bad frame {index}")
            else:
                conn.drain(QUIET_TIMEOUT)
            return
        if rng.random() < 0.5:
            self.stats.frames += 1
            self._log.append("ws:close")
            conn.send(_frame(0x8, struct.pack("!H", 1000) + b"bye"))
            conn.drain(QUIET_TIMEOUT)
