"""kallichore: a trio-based supervisor for Jupyter kernels.

Drop-in compatible with Kallichore's ``kcserver`` (the supervisor inside the
Positron IDE): same flags, connection file, REST API and WebSocket envelope.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The Kallichore API level this server implements; reported by ``GET /status``
#: as ``version`` (Positron compares it with the version it pins).
API_VERSION = "0.1.64"
