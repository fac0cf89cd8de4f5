"""Frames <-> :class:`~kallichore.wire.message.WireMessage`, sans-io.

Theory of operation
-------------------

The Jupyter wire format is a ZeroMQ multipart message::

    [*identities, DELIMITER, signature, header, parent_header, metadata, content, *buffers]

Routing identities come first and end at the first :data:`DELIMITER` frame. The
signature is the lowercase hex HMAC over exactly the four frames after it
(header, parent header, metadata, content); binary buffers are *not* signed.
The HMAC key is whatever bytes the connection file's ``key`` string encodes to
(the ASCII of a hex string, in Kallichore's and Jupyter's practice); an empty
key turns signing off: we send empty signatures and accept any signature.

This module owns no sockets and no clock, only three pieces of state:

* :class:`Signer` -- the keyed HMAC. It is built once per session, and each
  signature starts from a copy of the keyed template, so the key schedule is
  not recomputed per message. Its ``repr`` never shows the key.
* :class:`ReplayWindow` -- the signatures of the last ``capacity`` verified
  messages; a signature seen again is a replay. Memory is bounded: the oldest
  entry is evicted first.
* :class:`Deserializer` -- a :class:`Signer` plus an optional
  :class:`ReplayWindow`; :meth:`Deserializer.receive_frames` turns one frame
  list into a :class:`WireMessage` or raises
  :class:`~kallichore.errors.RemoteProtocolError`.

Sending is stateless, so it is a function, :func:`serialize`.

Unlike h11's ``Connection``, a deserializer has no sticky ``ERROR`` state:
Jupyter messages are independent datagrams, so a malformed message is rejected
on its own and the next one is judged afresh (Kallichore logs and drops bad
frames; the channel stays up).

Order of checks in :meth:`Deserializer.receive_frames` (each failure raises
``RemoteProtocolError`` and nothing is returned):

1. the delimiter exists and at least five frames follow it;
2. the signature verifies -- a non-empty wrong signature never gets through;
   an *empty* signature under a non-empty key is accepted only when the
   deserializer was built with ``accept_unsigned=True`` (Kallichore's
   behaviour, and the default);
3. the signature has not been seen before (only when signing is on and the
   signature is non-empty; a signature is remembered only once verified);
4. header and parent header decode to JSON objects, and the header carries
   string ``msg_id`` and ``msg_type`` (other header fields are not required).

Metadata and content are never decoded here: they stay the peer's raw bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from kallichore.errors import LocalProtocolError, RemoteProtocolError
from kallichore.wire.message import WireMessage

__all__ = [
    "DEFAULT_REPLAY_CAPACITY",
    "DELIMITER",
    "SIGNATURE_SCHEME",
    "Deserializer",
    "ReplayWindow",
    "Signer",
    "serialize",
    "split_identities",
]

#: Separates routing identities from the message proper.
DELIMITER = b"<IDS|MSG>"
#: The only signature scheme Kallichore (and this server) speaks.
SIGNATURE_SCHEME = "hmac-sha256"
DEFAULT_REPLAY_CAPACITY = 2048  # signatures remembered per deserializer
SIGNED_FRAME_COUNT = 4  # frames covered by the HMAC: header, parent, metadata, content
MIN_FRAMES_AFTER_DELIMITER = 5  # signature + the four signed frames


class Signer:
    """The HMAC-SHA256 signer of one session.

    Args:
        key: the HMAC key. For Jupyter connection files this is the ASCII
            encoding of the ``key`` string (``info.key.encode("ascii")``), not
            the hex-decoded bytes. Empty disables signing.
        scheme: the connection file's ``signature_scheme``; only
            ``"hmac-sha256"`` is supported.

    Raises:
        LocalProtocolError: an unsupported scheme, or a key that is not bytes.
    """

    __slots__ = ("_template", "scheme")

    def __init__(self, key: bytes, scheme: str = SIGNATURE_SCHEME) -> None:
        if scheme != SIGNATURE_SCHEME:
            raise LocalProtocolError(f"unsupported signature scheme {scheme!r}")
        if not isinstance(key, bytes):
            raise LocalProtocolError("signing key must be bytes")
        self.scheme = scheme
        # Keyed once; sign() works on copies. None <=> signing disabled.
        self._template = hmac.new(key, digestmod=hashlib.sha256) if key else None

    @property
    def enabled(self) -> bool:
        """Whether messages are signed and signatures checked (key non-empty)."""
        return self._template is not None

    def sign(self, parts: Sequence[bytes]) -> bytes:
        """Sign one message.

        Args:
            parts: exactly the header, parent header, metadata and content
                frames, in that order (never the buffers).

        Returns:
            The lowercase hex digest as ASCII bytes, or ``b""`` when signing is
            disabled.

        Raises:
            LocalProtocolError: ``parts`` does not have exactly four frames.
        """
        if len(parts) != SIGNED_FRAME_COUNT:
            raise LocalProtocolError(
                f"a signature covers exactly {SIGNED_FRAME_COUNT} frames, got {len(parts)}"
            )
        if self._template is None:
            return b""
        return self._digest(b"".join(parts))

    def _digest(self, signed: bytes) -> bytes:
        # One update with the frames joined: each update is a Python-level
        # call on hmac.HMAC, and the frames are small, so the copy is cheaper.
        assert self._template is not None
        mac = self._template.copy()
        mac.update(signed)
        return mac.hexdigest().encode("ascii")

    def verify(self, parts: Sequence[bytes], signature: bytes) -> bool:
        """Check a signature in constant time.

        Args:
            parts: the four signed frames, as for :meth:`sign`.
            signature: the signature frame the peer sent.

        Returns:
            ``True`` if signing is disabled or ``signature`` is the correct
            digest; ``False`` otherwise (including an empty signature while
            signing is enabled -- :class:`Deserializer` decides separately
            whether to tolerate unsigned messages).
        """
        if self._template is None:
            return True
        return hmac.compare_digest(self.sign(parts), signature)

    def __repr__(self) -> str:
        # Never the key, not even a prefix or a hash of it.
        return f"Signer(scheme={self.scheme!r}, enabled={self.enabled})"


class ReplayWindow:
    """The most recent message signatures, for replay detection.

    Args:
        capacity: how many signatures to remember; the oldest is forgotten
            first once full.

    Raises:
        LocalProtocolError: ``capacity`` is less than 1.
    """

    __slots__ = ("_capacity", "_order", "_seen")

    def __init__(self, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1:
            raise LocalProtocolError(f"replay window capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        # Invariant: set(self._order) == self._seen and len(self._order) <= capacity.
        self._order: deque[bytes] = deque()
        self._seen: set[bytes] = set()

    @property
    def capacity(self) -> int:
        """The maximum number of signatures remembered."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, signature: object) -> bool:
        return signature in self._seen

    def check_and_record(self, signature: bytes) -> bool:
        """Record ``signature`` unless it was seen recently.

        Args:
            signature: a verified signature. Empty signatures carry no identity
                and are never tracked.

        Returns:
            ``False`` if ``signature`` is in the window (a replay), else
            ``True`` (and it is now remembered).
        """
        if not signature:
            return True
        if signature in self._seen:
            return False
        if len(self._order) >= self._capacity:
            self._seen.discard(self._order.popleft())
        self._order.append(signature)
        self._seen.add(signature)
        return True

    def __repr__(self) -> str:
        return f"ReplayWindow(capacity={self._capacity}, size={len(self._order)})"


def split_identities(frames: Sequence[bytes]) -> tuple[tuple[bytes, ...], list[bytes]]:
    """Split routing identities off a multipart message.

    Args:
        frames: the whole multipart message.

    Returns:
        ``(identities, rest)``: the frames before the first :data:`DELIMITER`
        and the frames after it (the delimiter itself is dropped).

    Raises:
        RemoteProtocolError: there is no delimiter frame.
    """
    try:
        index = frames.index(DELIMITER)
    except ValueError:
        raise RemoteProtocolError("no <IDS|MSG> delimiter in message") from None
    return tuple(frames[:index]), list(frames[index + 1 :])


def serialize(msg: WireMessage, signer: Signer) -> list[bytes]:
    """Turn a message into the frames to send.

    The header and parent header are encoded as compact JSON (key order
    preserved); metadata, content and buffers are sent as they are.

    Args:
        msg: the message; ``msg.identities`` become the leading routing frames.
        signer: the session's signer.

    Returns:
        ``[*identities, DELIMITER, signature, header, parent_header, metadata,
        content, *buffers]``.

    Raises:
        LocalProtocolError: a header holds a value JSON cannot encode.
    """
    try:
        header = orjson.dumps(msg.header)
        parent_header = orjson.dumps(msg.parent_header)
    except orjson.JSONEncodeError as exc:
        raise LocalProtocolError(f"header is not JSON-encodable: {exc}") from exc
    signature = signer.sign((header, parent_header, msg.metadata, msg.content))
    return [
        *msg.identities,
        DELIMITER,
        signature,
        header,
        parent_header,
        msg.metadata,
        msg.content,
        *msg.buffers,
    ]


def _decode_object(frame: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what} is not a JSON object")
    return value


class Deserializer:
    """Turns received frame lists into verified :class:`WireMessage` values.

    One per receiving channel (or per session, sharing the window across
    channels, as jupyter_client does). Not thread-safe; trio tasks calling it
    one at a time need no lock, since it never awaits.

    Args:
        signer: the session's signer.
        replay: the window used to reject replayed signatures, or ``None`` to
            skip replay detection.
        accept_unsigned: whether a message with an *empty* signature is
            accepted while signing is enabled. ``True`` matches Kallichore,
            which accepts such messages from kernels and on the JEP 66
            registration socket; ``False`` matches jupyter_client.
    """

    __slots__ = ("_accept_unsigned", "_last_parent", "_replay", "_signer")

    def __init__(
        self,
        signer: Signer,
        replay: ReplayWindow | None,
        *,
        accept_unsigned: bool = True,
    ) -> None:
        self._signer = signer
        self._replay = replay
        self._accept_unsigned = accept_unsigned
        # The last parent header frame and its decoding: every output of one
        # request carries the same parent, so a flood decodes it once. The
        # dict is shared by those messages; nobody may mutate it.
        self._last_parent: tuple[bytes, dict[str, Any]] = (b"{}", {})

    def receive_frames(self, frames: Sequence[bytes]) -> WireMessage:
        """Verify and decode one multipart message.

        Args:
            frames: the whole multipart message as received (identities
                included).

        Returns:
            The message; ``metadata`` and ``content`` are the raw frames.

        Raises:
            RemoteProtocolError: no delimiter; fewer than five frames after
                it; a bad signature; a replayed signature; a header or parent
                header that is not a JSON object; a header without string
                ``msg_id`` and ``msg_type``.
        """
        # The per-message path of every kernel output: spelled out rather
        # than built from split_identities() and Signer.verify(), which cost
        # a list, a tuple and three calls more per message.
        try:
            index = frames.index(DELIMITER)
        except ValueError:
            raise RemoteProtocolError("no <IDS|MSG> delimiter in message") from None
        after = len(frames) - index - 1
        if after < MIN_FRAMES_AFTER_DELIMITER:
            raise RemoteProtocolError(
                f"expected at least {MIN_FRAMES_AFTER_DELIMITER} frames after the "
                f"delimiter, got {after}"
            )
        signature, header_frame, parent_frame, metadata, content = frames[index + 1 : index + 6]
        signer = self._signer
        if signer._template is not None:
            if signature:
                expected = signer._digest(b"".join((header_frame, parent_frame, metadata, content)))
                if not hmac.compare_digest(expected, signature):
                    raise RemoteProtocolError("bad signature")
                if self._replay is not None and not self._replay.check_and_record(signature):
                    raise RemoteProtocolError("replayed message signature")
            elif not self._accept_unsigned:
                raise RemoteProtocolError("unsigned message")

        header = _decode_object(header_frame, "header")
        if not isinstance(header.get("msg_id"), str):
            raise RemoteProtocolError("header has no string 'msg_id'")
        if not isinstance(header.get("msg_type"), str):
            raise RemoteProtocolError("header has no string 'msg_type'")
        last_frame, parent_header = self._last_parent
        if parent_frame != last_frame:
            parent_header = _decode_object(parent_frame, "parent header")
            self._last_parent = (parent_frame, parent_header)

        return WireMessage(
            header,
            parent_header,
            metadata,
            content,
            tuple(frames[index + 6 :]) if after > MIN_FRAMES_AFTER_DELIMITER else (),
            tuple(frames[:index]) if index else (),
        )

    def __repr__(self) -> str:
        return (
            f"Deserializer(signer={self._signer!r}, replay={self._replay!r}, "
            f"accept_unsigned={self._accept_unsigned})"
        )
