"""A minimal blocking WebSocket client (RFC 6455), the same for every system.

One small client for kallichore (TCP and Unix socket) and Kernel Gateway, so
the client's own cost is identical across the systems being compared. It
sets TCP_NODELAY, reads in 256 KiB chunks, answers pings, and parses frames
with slicing only (server frames are unmasked).
"""

from __future__ import annotations

import base64
import os
import socket
import struct

__all__ = ["WebSocket", "WebSocketClosed"]


class WebSocketClosed(Exception):
    pass


class WebSocket:
    def __init__(
        self,
        address: tuple[str, int] | str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            host = "localhost"
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host = f"{address[0]}:{address[1]}"
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WebSocketClosed(f"closed during handshake: {buf!r}")
            buf += chunk
            if len(buf) > 1 << 20:
                raise WebSocketClosed("handshake too long")
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise WebSocketClosed(f"upgrade refused: {head[:200]!r} {rest[:300]!r}")
        self.buf = bytearray(rest)
        self.pos = 0
        self.parts: list[bytes] = []
        self.closed = False

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    # ------------------------------------------------------------------ send

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        if n:
            m = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(
                n, "big"
            )
        self.sock.sendall(head + mask + payload)

    def send_text(self, text: str | bytes) -> None:
        self._send_frame(0x1, text.encode() if isinstance(text, str) else text)

    # --------------------------------------------------------------- receive

    def _fill(self) -> None:
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(262144)
        if not chunk:
            self.closed = True
            raise WebSocketClosed("connection closed by the server")
        self.buf += chunk

    def recv(self) -> bytes:
        """The next complete text/binary message's payload."""
        while True:
            buf = self.buf
            avail = len(buf) - self.pos
            if avail >= 2:
                p = self.pos
                b0, b1 = buf[p], buf[p + 1]
                n = b1 & 0x7F
                hl = 2
                if n == 126:
                    hl = 4
                    if avail >= 4:
                        n = struct.unpack_from("!H", buf, p + 2)[0]
                elif n == 127:
                    hl = 10
                    if avail >= 10:
                        n = struct.unpack_from("!Q", buf, p + 2)[0]
                if avail >= hl and avail >= hl + n:
                    payload = bytes(buf[p + hl : p + hl + n])
                    self.pos = p + hl + n
                    opcode = b0 & 0x0F
                    fin = b0 & 0x80
                    if opcode in (0x1, 0x2, 0x0):
                        if fin and not self.parts:
                            return payload
                        self.parts.append(payload)
                        if fin:
                            data = b"".join(self.parts)
                            self.parts = []
                            return data
                    elif opcode == 0x9:
                        self._send_frame(0xA, payload)
                    elif opcode == 0x8:
                        self.closed = True
                        raise WebSocketClosed("close frame")
                    continue
            self._fill()

    def close(self) -> None:
        try:
            if not self.closed:
                self._send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
