"""The layers of ``kallichore/`` as the layering tests see them (docs in tests/README.md)."""

from __future__ import annotations

from collections.abc import Iterable

#: The pure packages: no event loop, sockets or web framework.
PURE = ("kallichore.protocol", "kallichore.session", "kallichore.wire")
#: What the pure packages never import.
IO_LIBRARIES = ("trio", "trio_websocket", "zmq", "quart", "quart_trio", "hypercorn")
#: The server root and its services.
SERVER = ("kallichore.server",)
#: What ``client/`` may import from the package besides the package root.
CLIENT_MAY_USE = (
    *PURE,
    "kallichore.transport",
    "kallichore.client",
    "kallichore.config",
    "kallichore.settings",
    "kallichore.flag_values",
    "kallichore.errors",
    "kallichore.logs",
)

#: The layers from the bottom up (docs/architecture.md draws them). A module
#: may import its own layer and the layers below; the facades may import any.
LAYER_ORDER = ("base", "pure", "transport", "kernels", "carriers", "web", "root", "facades")
_LAYER_OF_PACKAGE = {
    **dict.fromkeys(("protocol", "session", "wire"), "pure"),
    "transport": "transport",
    "supervisor": "kernels",
    # Process limits: used by the supervisor, and sizes the ZeroMQ context.
    "fd_limit": "kernels",
    "channels": "carriers",
    "api": "web",
    "server": "root",
    **dict.fromkeys(("cli", "embed", "pytest_plugin", "testing", "client", "__main__"), "facades"),
}


def under(name: str, packages: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``packages`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def layer_of(name: str) -> str:
    """The layer of ``kallichore`` module ``name``; anything unlisted is base."""
    parts = name.split(".")
    return _LAYER_OF_PACKAGE.get(parts[1], "base") if len(parts) > 1 else "base"


def client_may_import(name: str) -> bool:
    """Whether ``client/`` may import the ``kallichore`` module ``name``.

    The package root counts as base: it runs for any import anyway.
    """
    return name == "kallichore" or under(name, CLIENT_MAY_USE)
