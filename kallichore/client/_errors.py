"""The client's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["ChannelClosedError", "ExecutionDroppedError", "KallichoreClientError", "unwrap_group"]


class KallichoreClientError(Exception):
    """A request to the server failed, or the server could not be reached.

    Attributes:
        status: the HTTP status, or ``None`` when no response arrived
            (connection refused, socket missing, timeout).
        code: the spec's error code (``KS-2`` ...), when the body had one.
        message: a one-line human-readable explanation.
        details: extra context from the server, if any.
        exit_code: for a failed kernel start (``startupError``), the kernel's
            exit code or OS error number, when known.
        output: for a failed kernel start, what the kernel process printed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
        exit_code: int | None = None,
        output: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.exit_code = exit_code
        self.output = output

    def __str__(self) -> str:
        text = self.message
        if self.details:
            text = f"{text} ({self.details})"
        return text

    def __repr__(self) -> str:
        return (
            f"KallichoreClientError({self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, details={self.details!r}, exit_code={self.exit_code!r})"
        )


class ChannelClosedError(KallichoreClientError):
    """The channel is closed (by us, by a takeover, or after failed reconnects)
    while an action was pending or a send was attempted."""


class ExecutionDroppedError(KallichoreClientError):
    """The server dropped a queued request (interrupt, shutdown, kill, exit)
    or the kernel exited before the request completed."""


@contextlib.contextmanager
def unwrap_group() -> Iterator[None]:
    """Around a nursery whose helper tasks never fail: re-raise the one
    exception it wrapped (the body's) as it was raised, so callers can catch
    :class:`KallichoreClientError` and friends by type."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
