"""The channel envelope in both directions, sans-io.

Kernel -> client
----------------
Every message a kernel sends on iopub, shell, control or stdin reaches the
client as one text frame::

    {"kind":"jupyter",
     "header":{"msg_id":"...","msg_type":"stream"},
     "parent_header":{"msg_id":"...","msg_type":"execute_request"} | null,
     "channel":"iopub",
     "content":<the kernel's content frame, as sent>,
     "metadata":<the kernel's metadata frame, or {}>,
     "buffers":["<base64>", ...]}

(As in Kallichore's envelope, the header and parent header carry
only ``msg_id`` and ``msg_type``.) The content and metadata bytes are
spliced in without being decoded and re-encoded, so each is first checked
to be JSON: one malformed frame must not corrupt the client's stream.

This is the per-message path of a flood of output, so the frame is joined
from pre-encoded pieces, and the parent header -- shared by every output of
one request, and by one dict when it comes from
:class:`~kallichore.wire.codec.Deserializer` -- is encoded once per run of
messages with the same parent.

Client -> kernel
----------------
A client sends one Jupyter message per text frame, as a JSON object (the
shape Positron sends)::

    {"header": {"msg_id": "...", "msg_type": "execute_request", ...},
     "parent_header": null,
     "channel": "shell",
     "content": {...},
     "metadata": {},
     "buffers": ["<base64>", ...]}

``header`` must carry string ``msg_id`` and ``msg_type`` (other header
fields are ignored: the server writes its own ``session``, ``username``,
``date`` and ``version`` towards the kernel); ``channel`` is a string;
``content`` must be present. ``parent_header`` (``null`` or an object),
``metadata`` (an object) and ``buffers`` (a list of base64 strings) are
optional here, more lenient than Kallichore, which requires the last two. A
``"kind": "jupyter"`` tag (sent by Kallichore's own tests, not by Positron)
is accepted and ignored; any other ``kind`` is refused. Unknown keys are
ignored.

Anything else raises :class:`~kallichore.errors.RemoteProtocolError` with a
message saying what is wrong; the bridge logs it and drops the frame.

Pure: no trio, no I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from kallichore.errors import RemoteProtocolError
from kallichore.wire.message import WireMessage

__all__ = ["EnvelopeEncoder", "client_message", "execute_content", "parse_client_frame"]

_EMPTY_OBJECT = b"{}"


class EnvelopeEncoder:
    """Encodes kernel messages as client frames; one per reading task.

    Not thread-safe; it never awaits, so trio tasks may share one.
    """

    __slots__ = ("_channel_parts", "_parent", "_parent_json")

    def __init__(self) -> None:
        # The parent header dict last seen and its encoding (None: none yet).
        self._parent: dict[str, object] | None = None
        self._parent_json = b"null"
        self._channel_parts: dict[str, bytes] = {}

    def encode(self, channel: str, msg: WireMessage) -> bytes:
        """The client frame for ``msg``, received on ``channel``.

        Raises:
            RemoteProtocolError: the content or metadata frame is not JSON
                (the frame must then be dropped, not forwarded).
        """
        content = msg.content
        metadata = msg.metadata or _EMPTY_OBJECT
        try:
            orjson.loads(content)
            if metadata != _EMPTY_OBJECT:
                orjson.loads(metadata)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"content or metadata is not JSON: {exc}") from None
        parent = msg.parent_header
        if parent is not self._parent:
            self._parent = parent
            parent_id = msg.parent_msg_id
            self._parent_json = (
                orjson.dumps({"msg_id": parent_id, "msg_type": msg.parent_msg_type or ""})
                if parent_id
                else b"null"
            )
        channel_part = self._channel_parts.get(channel)
        if channel_part is None:
            channel_part = b',"channel":' + orjson.dumps(channel) + b',"content":'
            self._channel_parts[channel] = channel_part
        buffers = (
            orjson.dumps([base64.b64encode(b).decode("ascii") for b in msg.buffers])
            if msg.buffers
            else b"[]"
        )
        return (
            b'{"kind":"jupyter","header":%b,"parent_header":%b%b%b,"metadata":%b,"buffers":%b}'
            % (
                orjson.dumps({"msg_id": msg.msg_id, "msg_type": msg.msg_type}),
                self._parent_json,
                channel_part,
                content,
                metadata,
                buffers,
            )
        )


#: Jupyter protocol version written into client headers.
PROTOCOL_VERSION = "5.3"


def parse_client_frame(data: str | bytes) -> dict[str, Any]:
    """Parse one client text frame into the message dict the session expects.

    Args:
        data: the frame's text (``str``) or its UTF-8 bytes.

    Returns:
        A dict with ``header`` (``msg_id``, ``msg_type`` and whatever else
        the client sent), ``parent_header`` (``None`` or a dict),
        ``channel``, ``content``, ``metadata`` (a dict, ``{}`` when absent)
        and ``buffers`` (a list of strings, ``[]`` when absent).

    Raises:
        RemoteProtocolError: the frame is not such a message.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"client frame is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"client frame must be a JSON object, not {_json_type(value)}")
    kind = value.get("kind", "jupyter")
    if kind != "jupyter":
        raise RemoteProtocolError(f"client frame has kind {kind!r}; only 'jupyter' is accepted")

    header = value.get("header")
    if not isinstance(header, dict):
        raise RemoteProtocolError("client frame has no 'header' object")
    for field in ("msg_id", "msg_type"):
        if not isinstance(header.get(field), str):
            raise RemoteProtocolError(f"client frame's header has no string {field!r}")

    parent = value.get("parent_header")
    if parent is not None and not isinstance(parent, dict):
        raise RemoteProtocolError(
            f"client frame's 'parent_header' must be an object or null, not {_json_type(parent)}"
        )

    channel = value.get("channel")
    if not isinstance(channel, str):
        raise RemoteProtocolError("client frame has no string 'channel'")

    if "content" not in value:
        raise RemoteProtocolError("client frame has no 'content'")

    metadata = value.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise RemoteProtocolError(
            f"client frame's 'metadata' must be an object, not {_json_type(metadata)}"
        )

    buffers = value.get("buffers")
    if buffers is None:
        buffers = []
    elif not isinstance(buffers, list) or not all(isinstance(b, str) for b in buffers):
        raise RemoteProtocolError("client frame's 'buffers' must be a list of base64 strings")
    for index, buffer in enumerate(buffers):
        try:
            base64.b64decode(buffer, validate=True)
        except ValueError:
            raise RemoteProtocolError(
                f"client frame's buffer {index} is not valid base64"
            ) from None

    return {
        "header": header,
        "parent_header": parent,
        "channel": channel,
        "content": value["content"],
        "metadata": metadata,
        "buffers": buffers,
    }


def client_message(
    msg_type: str,
    content: dict[str, Any],
    *,
    channel: str = "shell",
    parent: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    buffers: Sequence[bytes] = (),
    session: str = "",
    username: str = "",
    msg_id: str | None = None,
) -> dict[str, Any]:
    """A client frame, the inverse of :func:`parse_client_frame`.

    The shape a client sends over the channel (and the in-process
    :class:`~kallichore.embed.SessionChannel` accepts): a Jupyter message
    with ``channel`` and base64 ``buffers``. The server re-signs it with
    the session key, so the header's identity fields are informational.
    """
    return {
        "header": {
            "msg_id": msg_id or uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": username,
            "date": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "version": PROTOCOL_VERSION,
        },
        "parent_header": parent or {},
        "channel": channel,
        "content": content,
        "metadata": metadata or {},
        "buffers": [base64.b64encode(b).decode("ascii") for b in buffers],
    }


def execute_content(
    code: str,
    *,
    silent: bool = False,
    store_history: bool = True,
    user_expressions: dict[str, Any] | None = None,
    allow_stdin: bool = False,
    stop_on_error: bool = True,
) -> dict[str, Any]:
    """The content of an ``execute_request`` (Jupyter's defaults)."""
    return {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": user_expressions or {},
        "allow_stdin": allow_stdin,
        "stop_on_error": stop_on_error,
    }


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
