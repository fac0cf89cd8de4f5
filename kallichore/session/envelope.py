"""Kernel messages as the client's text frames (the ``kind: jupyter`` envelope), sans-io.

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
"""

from __future__ import annotations

import base64

import orjson

from kallichore.errors import RemoteProtocolError
from kallichore.wire.message import WireMessage

__all__ = ["EnvelopeEncoder"]

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
