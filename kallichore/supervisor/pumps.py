"""What the output pumps wait for: the gate the server holds while a request runs.

The session's pumps (the iopub reader, client delivery, resource sampling)
step aside while the server handles an HTTP request. The server decides when
that is; the supervisor only needs the two questions in :class:`PumpGate`.
The server root wires its request-priority object in (it satisfies the
protocol); :class:`OpenGate` never holds anything back (embedding, tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

__all__ = ["OpenGate", "PumpGate"]


class PumpGate(Protocol):
    """Lets pumps wait while a request is in flight."""

    async def wait_turn(self, *, busy: bool = False) -> None:
        """Return at once unless the pumps must wait; ``busy``: more work is queued.

        Need not checkpoint when there is nothing to wait for.
        """

    def holding(self) -> bool:
        """Whether the pumps are being held back right now."""


class OpenGate:
    """A gate that never holds (no HTTP server in front of the sessions)."""

    async def wait_turn(self, *, busy: bool = False) -> None:
        """Never waits (and does not checkpoint)."""

    def holding(self) -> bool:
        """Never holds."""
        return False


if TYPE_CHECKING:

    def _satisfies_pump_gate(gate: OpenGate) -> PumpGate:
        return gate  # mypy checks OpenGate against the protocol here
