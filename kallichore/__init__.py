"""kallichore: a trio-based supervisor for Jupyter kernels.

Drop-in compatible with Kallichore's ``kcserver`` (the supervisor inside the
Positron IDE): same flags, connection file, REST API and WebSocket envelope.

The embedding API is re-exported here (see ``docs/embedding.md``):
:func:`open_supervisor` and :class:`Supervisor` (:mod:`kallichore.embed`),
:func:`serve`, :class:`Server` and :class:`ServerAddress`
(:mod:`kallichore.server`), :class:`ServerConfig` and :class:`Transport`
(:mod:`kallichore.config`). They are loaded on first use (PEP 562), so
``import kallichore`` stays cheap and imports neither trio nor the HTTP stack:
the sans-io modules run this file too. Type checkers should import them from
their modules for full types; through this package they are ``Any``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: The Kallichore API level this server implements; reported by ``GET /status``
#: as ``version`` (Positron compares it with the version it pins).
API_VERSION = "0.1.64"

#: Public name -> the module it lives in, imported on first access.
_LAZY_EXPORTS = {
    "open_supervisor": "kallichore.embed",
    "Supervisor": "kallichore.embed",
    "serve": "kallichore.server.root",
    "Server": "kallichore.server.root",
    "ServerAddress": "kallichore.server.root",
    "ServerConfig": "kallichore.config",
    "Transport": "kallichore.config",
}

__all__ = [
    "API_VERSION",
    "Server",
    "ServerAddress",
    "ServerConfig",
    "Supervisor",
    "Transport",
    "__version__",
    "open_supervisor",
    "serve",
    "version_line",
]


def version_line(prog: str) -> str:
    """What ``--version`` prints, the same for ``kcserver``, ``kcclient`` and
    ``python -m kallichore``: ``<prog> <Kallichore API version> (kallichore <ours>)``.

    The first two words are what Kallichore's own ``kcserver --version``
    prints, so anything that reads them sees the API level we implement.
    """
    return f"{prog} {API_VERSION} (kallichore {__version__})"


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
