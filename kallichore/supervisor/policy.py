"""What the server trusts of its kernels, and how long they may live.

One frozen value, built from :class:`~kallichore.config.ServerConfig` (or
given to :func:`kallichore.embed.open_supervisor`), handed by the registry to
every session. Pure: no trio, no processes.
"""

from __future__ import annotations

import attrs

__all__ = ["KernelPolicy"]


@attrs.frozen(kw_only=True)
class KernelPolicy:
    """How sessions treat their kernels.

    Attributes:
        allow_unsigned_messages: accept kernel messages whose signature is
            empty although the session has a key. Off by default: such a
            message is dropped and counted in the log (a non-empty wrong
            signature is always dropped).
        outlive_server: kernels keep running when the server dies without
            stopping them, so that a new server can adopt them. Off by
            default: kernels die with the server (see
            :mod:`kallichore.supervisor.lifeline`).
    """

    allow_unsigned_messages: bool = False
    outlive_server: bool = False
