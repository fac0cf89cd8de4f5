"""Kernel connection info, connection and registration files, JEP 66 (pure).

Theory of operation
-------------------

A kernel learns where to listen in one of two ways, chosen by the session's
Jupyter protocol version (:func:`uses_registration_handshake`):

* **Connection file** (protocol < 5.5, or any version that is not exactly
  ``major.minor``): the server picks five ports and writes
  :func:`encode_connection_file` of a :class:`ConnectionInfo`; the kernel binds
  them.
* **JEP 66 registration** (protocol >= 5.5): the server binds one REP socket and
  writes :func:`encode_registration_file`; the kernel binds ports of its own
  choosing and reports them in a signed ``handshake_request``
  (:func:`parse_handshake_request`), answered with
  :func:`handshake_reply_content`.

Both files are pretty-printed JSON (two-space indent) with keys in the order
Kallichore writes them. The HMAC key is :func:`generate_key` (32 lowercase hex
characters); the HMAC uses the ASCII bytes of that string, not its hex decoding.

This module builds bytes and values only; writing files, picking ports and
owning sockets belong to the supervisor.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any, TypedDict, TypeGuard

import attrs
import orjson

from kallichore.errors import LocalProtocolError, RemoteProtocolError
from kallichore.wire.message import WireMessage

__all__ = [
    "CHANNELS",
    "HANDSHAKE_REPLY",
    "HANDSHAKE_REQUEST",
    "PORT_FIELDS",
    "ConnectionInfo",
    "HandshakePorts",
    "encode_connection_file",
    "encode_registration_file",
    "generate_key",
    "handshake_reply_content",
    "parse_handshake_request",
    "uses_registration_handshake",
]

KEY_BYTES = 16  # random bytes in a session HMAC key (32 hex characters)
MIN_PORT = 1  # lowest usable TCP port
MAX_PORT = 65535  # highest TCP port
#: Protocol version from which JEP 66 registration is used, as (major, minor).
REGISTRATION_MIN_VERSION = (5, 5)

#: The port fields of a connection file, in the order they are written.
PORT_FIELDS = ("control_port", "shell_port", "stdin_port", "hb_port", "iopub_port")
#: Channel names accepted by :meth:`ConnectionInfo.endpoint`.
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")

HANDSHAKE_REQUEST = "handshake_request"  # msg_type the kernel sends on registration
HANDSHAKE_REPLY = "handshake_reply"  # msg_type of our answer


class HandshakePorts(TypedDict):
    """The ports a kernel reports in its JEP 66 ``handshake_request``."""

    control_port: int
    shell_port: int
    stdin_port: int
    hb_port: int
    iopub_port: int


_VERSION_RE = re.compile(r"([0-9]+)\.([0-9]+)")


def _is_port(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_PORT <= value <= MAX_PORT


def _check_port(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not _is_port(value):
        raise ValueError(
            f"field {attribute.name!r} must be an integer in {MIN_PORT}..{MAX_PORT}, got {value!r}"
        )


def _check_str(_instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"field {attribute.name!r} must be a string, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class ConnectionInfo:
    """Where a kernel's five sockets are, and how its messages are signed.

    Keyword-only, with fields in the order the spec serialises them. Every
    field is validated on construction; the key is hidden from ``repr``.

    Raises:
        ValueError: a port is not an int in 1..65535 (bools rejected), or a
            string field is not a string; the message names the field.
    """

    control_port: int = attrs.field(validator=_check_port)
    shell_port: int = attrs.field(validator=_check_port)
    stdin_port: int = attrs.field(validator=_check_port)
    hb_port: int = attrs.field(validator=_check_port)
    iopub_port: int = attrs.field(validator=_check_port)
    signature_scheme: str = attrs.field(default="hmac-sha256", validator=_check_str)
    key: str = attrs.field(validator=_check_str, repr=False)
    transport: str = attrs.field(default="tcp", validator=_check_str)
    ip: str = attrs.field(default="127.0.0.1", validator=_check_str)

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> ConnectionInfo:
        """Build from a decoded connection file or ``connectionInfo`` body.

        Unknown keys (e.g. ``kernel_name``) are ignored. ``signature_scheme``,
        ``transport`` and ``ip`` default as in the class when absent; the
        ports and ``key`` are required.

        Args:
            d: the decoded JSON object.

        Returns:
            The validated connection info.

        Raises:
            ValueError: ``d`` is not a mapping, a required field is missing, or
                a field has the wrong type or range; the message names the
                field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"connection info must be a JSON object, got {type(d).__name__}")
        for name in (*PORT_FIELDS, "key"):
            if name not in d:
                raise ValueError(f"missing field {name!r}")
        optional = {name: d[name] for name in ("signature_scheme", "transport", "ip") if name in d}
        return cls(
            control_port=d["control_port"],
            shell_port=d["shell_port"],
            stdin_port=d["stdin_port"],
            hb_port=d["hb_port"],
            iopub_port=d["iopub_port"],
            key=d["key"],
            **optional,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The spec's ``connectionInfo`` object, keys in spec order."""
        return {
            "control_port": self.control_port,
            "shell_port": self.shell_port,
            "stdin_port": self.stdin_port,
            "hb_port": self.hb_port,
            "iopub_port": self.iopub_port,
            "signature_scheme": self.signature_scheme,
            "key": self.key,
            "transport": self.transport,
            "ip": self.ip,
        }

    def port(self, channel: str) -> int:
        """The port of ``channel`` (one of :data:`CHANNELS`).

        Raises:
            LocalProtocolError: an unknown channel name.
        """
        if channel not in CHANNELS:
            raise LocalProtocolError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        port: int = getattr(self, f"{channel}_port")
        return port

    def endpoint(self, channel: str) -> str:
        """The ZeroMQ endpoint of ``channel``, e.g. ``tcp://127.0.0.1:5555``.

        IPv6 addresses are bracketed (``tcp://[::1]:5555``); the ``ipc``
        transport uses Jupyter's ``ipc://<path>-<port>`` form.

        Args:
            channel: one of ``shell``, ``control``, ``stdin``, ``iopub``, ``hb``.

        Raises:
            LocalProtocolError: an unknown channel or an unsupported transport.
        """
        port = self.port(channel)
        if self.transport == "tcp":
            host = f"[{self.ip}]" if ":" in self.ip else self.ip
            return f"tcp://{host}:{port}"
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        raise LocalProtocolError(f"unsupported transport {self.transport!r}")


def encode_connection_file(info: ConnectionInfo) -> bytes:
    """The connection file Kallichore writes for a kernel (protocol < 5.5).

    Returns:
        Pretty JSON (two-space indent, no trailing newline) with the nine
        fields of :meth:`ConnectionInfo.to_json_dict`, in spec order; no
        ``kernel_name``.
    """
    return orjson.dumps(info.to_json_dict(), option=orjson.OPT_INDENT_2)


def encode_registration_file(*, key: str, registration_port: int, ip: str = "127.0.0.1") -> bytes:
    """The JEP 66 registration file Kallichore writes (protocol >= 5.5).

    Args:
        key: the session's HMAC key string.
        registration_port: the port of the server's REP socket.
        ip: the address the REP socket is bound on.

    Returns:
        Pretty JSON ``{"transport", "signature_scheme", "ip", "key",
        "registration_port"}``, in that order.

    Raises:
        LocalProtocolError: ``registration_port`` is not a valid port.
    """
    if not _is_port(registration_port):
        raise LocalProtocolError(f"invalid registration port {registration_port!r}")
    document = {
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "ip": ip,
        "key": key,
        "registration_port": registration_port,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def generate_key() -> str:
    """A fresh session HMAC key: 32 random lowercase hex characters."""
    return secrets.token_hex(KEY_BYTES)


def uses_registration_handshake(protocol_version: str) -> bool:
    """Whether a kernel of this protocol version registers via JEP 66.

    True iff ``protocol_version`` is exactly ``<major>.<minor>`` (ASCII digits
    only) and at least 5.5. ``"5.5.0"``, ``"6"`` or ``" 5.5"`` fall back to a
    connection file, as in Kallichore.
    """
    match = _VERSION_RE.fullmatch(protocol_version)
    if match is None:
        return False
    return (int(match[1]), int(match[2])) >= REGISTRATION_MIN_VERSION


def parse_handshake_request(msg: WireMessage) -> HandshakePorts:
    """Extract the kernel's ports from a JEP 66 ``handshake_request``.

    Args:
        msg: the (already verified) message from the registration socket.

    Returns:
        ``{"control_port", "shell_port", "stdin_port", "hb_port",
        "iopub_port"}`` in that order (a plain dict at run time), ready for
        ``ConnectionInfo(**ports, key=...)``. Other content keys are ignored.

    Raises:
        RemoteProtocolError: the wrong ``msg_type``, content that is not a JSON
            object, or a port missing or not an int in 1..65535.
    """
    if msg.msg_type != HANDSHAKE_REQUEST:
        raise RemoteProtocolError(
            f"expected {HANDSHAKE_REQUEST!r} on the registration socket, got {msg.msg_type!r}"
        )
    try:
        content = msg.content_json()
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"handshake content is not valid JSON: {exc}") from None
    if not isinstance(content, dict):
        raise RemoteProtocolError("handshake content is not a JSON object")
    for name in PORT_FIELDS:
        value = content.get(name)
        if not _is_port(value):
            raise RemoteProtocolError(
                f"handshake field {name!r} must be an integer in {MIN_PORT}..{MAX_PORT}, "
                f"got {value!r}"
            )
    return HandshakePorts(
        control_port=content["control_port"],
        shell_port=content["shell_port"],
        stdin_port=content["stdin_port"],
        hb_port=content["hb_port"],
        iopub_port=content["iopub_port"],
    )


def handshake_reply_content() -> dict[str, Any]:
    """The content of our ``handshake_reply``: ``{"status": "ok", "capabilities": {}}``."""
    return {"status": "ok", "capabilities": {}}
