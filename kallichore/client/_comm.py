"""Comms: kernel-side objects' conversations with the client, routed by ``comm_id``.

A channel holds one :class:`Comms`: the open :class:`Comm`\\ s and the targets
that accept comms the kernel opens. The channel's reader hands it every
``comm_open``, ``comm_msg`` and ``comm_close``; comms send through the
channel's ``send`` callable, so this module needs nothing of the channel.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from kallichore.client._errors import ChannelClosedError, KallichoreClientError
from kallichore.client._handler import MessageHandler, call_handler
from kallichore.client._models import Message

__all__ = ["Comm", "CommTargetHandler", "Comms", "SendMessage"]

logger = logging.getLogger(__name__)

CommTargetHandler = Callable[["Comm", Message], Awaitable[None] | None]


class SendMessage(Protocol):
    """Send a new shell message on the channel; returns its ``msg_id``.

    Raises:
        ChannelClosedError: the channel is closed.
    """

    def __call__(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> Awaitable[str]: ...


@attrs.define(eq=False)
class Comm:
    """One open comm, opened by either side.

    Register handlers with :meth:`on_message` / :meth:`on_close` (both usable
    as decorators); they receive the ``comm_msg`` / ``comm_close``
    :class:`Message` (``msg.content["data"]``, ``msg.buffers``).
    """

    comm_id: str
    target_name: str
    _comms: Comms = attrs.field(alias="comms", repr=False)
    _message_handlers: list[MessageHandler] = attrs.field(factory=list, repr=False)
    _close_handlers: list[MessageHandler] = attrs.field(factory=list, repr=False)
    closed: bool = False

    def on_message(self, handler: MessageHandler) -> MessageHandler:
        """Call ``handler`` for each ``comm_msg`` on this comm."""
        self._message_handlers.append(handler)
        return handler

    def on_close(self, handler: MessageHandler) -> MessageHandler:
        """Call ``handler`` when the kernel closes this comm."""
        self._close_handlers.append(handler)
        return handler

    async def send(
        self,
        data: dict[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> str:
        """Send a ``comm_msg``; returns its ``msg_id``.

        Raises:
            ChannelClosedError: the comm or the channel is closed.
        """
        if self.closed:
            raise ChannelClosedError(f"comm {self.comm_id} is closed")
        content = {"comm_id": self.comm_id, "data": data or {}}
        return await self._comms.send("comm_msg", content, metadata=metadata, buffers=buffers)

    async def close(self, data: dict[str, Any] | None = None) -> None:
        """Send ``comm_close`` and forget the comm (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._comms.forget(self.comm_id)
        await self._comms.send("comm_close", {"comm_id": self.comm_id, "data": data or {}})

    async def _deliver(self, msg: Message) -> None:
        handlers = self._close_handlers if msg.msg_type == "comm_close" else self._message_handlers
        for handler in list(handlers):
            try:
                await call_handler(handler, msg)
            except Exception:
                logger.exception("comm %s handler failed on %s", self.comm_id, msg.msg_type)


@attrs.define(eq=False)
class Comms:
    """A channel's open comms by ``comm_id``, and the targets that accept
    comms the kernel opens.

    Attributes:
        send: sends a new message on the channel (comms use it too).
    """

    _session_id: str = attrs.field(alias="session_id")
    send: SendMessage = attrs.field(repr=False)
    _open: dict[str, Comm] = attrs.field(factory=dict, repr=False)
    _targets: dict[str, CommTargetHandler] = attrs.field(factory=dict, repr=False)

    def add(self, comm: Comm) -> None:
        """Route messages for ``comm`` to it from now on."""
        self._open[comm.comm_id] = comm

    def register_target(self, target_name: str, handler: CommTargetHandler) -> None:
        """Accept comms the kernel opens to ``target_name``."""
        self._targets[target_name] = handler

    def snapshot(self) -> dict[str, Comm]:
        """Open comms by ``comm_id`` (a copy)."""
        return dict(self._open)

    def forget(self, comm_id: str) -> None:
        """Drop ``comm_id`` from the open comms (it was closed)."""
        self._open.pop(comm_id, None)

    async def route(self, msg: Message) -> None:
        """Act on a ``comm_open``, ``comm_msg`` or ``comm_close`` from the kernel.

        A comm opened to a target nobody registered is closed at once. Handler
        errors are logged, not raised.
        """
        comm_id = str(msg.content.get("comm_id", ""))
        if msg.msg_type == "comm_open":
            await self._accept(comm_id, msg)
            return
        comm = self._open.get(comm_id)
        if comm is None:
            return
        if msg.msg_type == "comm_close":
            comm.closed = True
            self._open.pop(comm_id, None)
        await comm._deliver(msg)

    async def _accept(self, comm_id: str, msg: Message) -> None:
        target = str(msg.content.get("target_name", ""))
        handler = self._targets.get(target)
        if handler is None:
            logger.info("channel %s: no comm target %r; closing", self._session_id, target)
            with contextlib.suppress(KallichoreClientError):
                await self.send("comm_close", {"comm_id": comm_id, "data": {}})
            return
        opened = Comm(comm_id, target, comms=self)
        self._open[comm_id] = opened
        try:
            await call_handler(handler, opened, msg)
        except Exception:
            logger.exception("comm target %r failed", target)
