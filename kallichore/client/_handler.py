"""The callbacks a channel's users hand in: plain or coroutine functions."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from kallichore.client._models import InputRequest, Message

__all__ = ["InputHandler", "MessageHandler", "call_handler"]

MessageHandler = Callable[[Message], Awaitable[None] | None]
InputHandler = Callable[[InputRequest], Awaitable[str] | str]


async def call_handler(handler: Callable[..., Any], *args: Any) -> Any:
    """Call ``handler`` and, when it returns an awaitable, await that."""
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
