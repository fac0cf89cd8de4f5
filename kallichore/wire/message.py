"""The Jupyter wire message as a value.

Theory of operation
-------------------

A Jupyter message on the wire is a list of ZeroMQ frames::

    [*identities, b"<IDS|MSG>", signature, header, parent_header, metadata, content, *buffers]

:class:`WireMessage` is that list after the codec (:mod:`kallichore.wire.codec`) has
split and verified it. The supervisor only ever *routes* messages: it needs the
header (to learn ``msg_id``/``msg_type``) and the parent header (to correlate
replies with requests), but never looks inside ``metadata`` or ``content`` on the
hot path. So the two headers are decoded, while ``metadata`` and ``content`` stay
the raw JSON bytes the peer sent; the WebSocket bridge splices those bytes into
the client's envelope without a decode/re-encode round trip. Whoever does need
them calls :meth:`WireMessage.content_json` / :meth:`WireMessage.metadata_json`.

Headers built by this server (:func:`new_header`) have exactly the six standard
fields, in the order Kallichore writes them, with an RFC 3339 UTC timestamp at
millisecond precision.

Nothing here performs I/O or imports an async library.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from kallichore.errors import LocalProtocolError

__all__ = [
    "WireMessage",
    "new_header",
    "new_msg_id",
    "short_msg_id",
]

MSG_ID_BYTES = 16  # random bytes in a full msg_id (32 hex characters)
SHORT_MSG_ID_BYTES = 5  # random bytes in a server-originated msg_id (10 hex characters)


@attrs.frozen
class WireMessage:
    """One Jupyter message, as routed between kernel and client.

    Attributes:
        header: the decoded header; always carries string ``msg_id`` and
            ``msg_type`` when the message came out of the codec.
        parent_header: the decoded parent header; ``{}`` when there is none.
            Read-only: the codec shares one dict between messages with the
            same parent.
        metadata: the raw JSON bytes of the metadata frame (not decoded).
        content: the raw JSON bytes of the content frame (not decoded).
        buffers: the binary frames after ``content``, in order.
        identities: the ZeroMQ routing frames before ``<IDS|MSG>``.
    """

    header: dict[str, Any]
    parent_header: dict[str, Any]
    metadata: bytes
    content: bytes
    buffers: tuple[bytes, ...] = ()
    identities: tuple[bytes, ...] = ()

    @property
    def msg_id(self) -> str:
        """The header's ``msg_id``, or ``""`` if absent or not a string."""
        value = self.header.get("msg_id")
        return value if isinstance(value, str) else ""

    @property
    def msg_type(self) -> str:
        """The header's ``msg_type``, or ``""`` if absent or not a string."""
        value = self.header.get("msg_type")
        return value if isinstance(value, str) else ""

    @property
    def parent_msg_id(self) -> str | None:
        """The parent header's ``msg_id``, or ``None`` if there is no parent."""
        value = self.parent_header.get("msg_id")
        return value if isinstance(value, str) else None

    @property
    def parent_msg_type(self) -> str | None:
        """The parent header's ``msg_type``, or ``None`` if there is no parent."""
        value = self.parent_header.get("msg_type")
        return value if isinstance(value, str) else None

    def content_json(self) -> Any:
        """Decode the content frame.

        Returns:
            The parsed JSON value (usually a dict).

        Raises:
            orjson.JSONDecodeError: the frame is not valid JSON (a ``ValueError``).
        """
        return orjson.loads(self.content)

    def metadata_json(self) -> Any:
        """Decode the metadata frame.

        Returns:
            The parsed JSON value (usually a dict).

        Raises:
            orjson.JSONDecodeError: the frame is not valid JSON (a ``ValueError``).
        """
        return orjson.loads(self.metadata)


def new_msg_id() -> str:
    """A fresh message id: 32 random lowercase hex characters."""
    return secrets.token_hex(MSG_ID_BYTES)


def short_msg_id() -> str:
    """A fresh short message id: 10 random lowercase hex characters.

    Kallichore uses ids of this shape for the requests the server itself
    originates (``kernel_info_request``, ``shutdown_request``,
    ``interrupt_request``).
    """
    return secrets.token_hex(SHORT_MSG_ID_BYTES)


def _format_date(date: datetime) -> str:
    # RFC 3339, UTC, millisecond precision, "Z" suffix: 2026-03-02T10:00:00.123Z
    # (formatted by hand: half the cost of astimezone + isoformat, and every
    # request a client sends gets a header).
    if date.tzinfo is None or date.utcoffset() is None:
        raise LocalProtocolError("header date must be timezone-aware")
    if date.tzinfo is not UTC:
        date = date.astimezone(UTC)
    return (
        f"{date.year:04d}-{date.month:02d}-{date.day:02d}T{date.hour:02d}:{date.minute:02d}:"
        f"{date.second:02d}.{date.microsecond // 1000:03d}Z"
    )


def new_header(
    msg_type: str,
    *,
    session: str,
    username: str,
    version: str,
    msg_id: str | None = None,
    date: datetime | None = None,
) -> dict[str, Any]:
    """Build a message header the way Kallichore writes them.

    Args:
        msg_type: the message type, e.g. ``"execute_request"``.
        session: the session id.
        username: the session's user name.
        version: the Jupyter protocol version, e.g. ``"5.3"``.
        msg_id: the message id; a fresh :func:`new_msg_id` when omitted.
        date: the timestamp; ``datetime.now(UTC)`` when omitted. Must be
            timezone-aware; it is converted to UTC and truncated to
            milliseconds.

    Returns:
        ``{"msg_id", "msg_type", "session", "username", "date", "version"}``,
        in that key order (orjson preserves it when encoding).

    Raises:
        LocalProtocolError: ``date`` is a naive datetime.
    """
    return {
        "msg_id": new_msg_id() if msg_id is None else msg_id,
        "msg_type": msg_type,
        "session": session,
        "username": username,
        "date": _format_date(datetime.now(UTC) if date is None else date),
        "version": version,
    }
