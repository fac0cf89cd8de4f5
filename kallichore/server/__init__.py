"""server: the root of the task tree and the server's own services.

:mod:`kallichore.server.root` holds :func:`serve` and :class:`Server`; the
other modules are services the root starts and owns: the idle timer, request
priority, the listener, heap trimming, the resource sampler and the
announce/handshake files.

``from kallichore.server import serve`` works, but the names are looked up
on first use, so importing a service module (``kallichore.server.priority``)
does not import the root and everything under it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kallichore.server.root import Server, ServerAddress, serve

__all__ = ["Server", "ServerAddress", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("kallichore.server.root"), name)
    raise AttributeError(f"module 'kallichore.server' has no attribute {name!r}")
