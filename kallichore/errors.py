"""Exceptions, and the error codes clients see.

Every failure a client can observe carries a code from :class:`ErrorCode` (the
``KS-n`` values Kallichore uses, by position in its error enum) and an HTTP
status hint, as h11's ``error_status_hint``. The API layer turns any
:class:`KallichoreError` into the spec's ``error`` body in exactly one place
(``kallichore.api.errors``); nothing else formats error responses.

Two families are kept apart, as h11 does:

* :class:`LocalProtocolError` -- *we* were asked to do something the protocol
  forbids (a bug on our side or a caller's misuse of the library API);
* :class:`RemoteProtocolError` -- a *peer* (kernel or client) sent something
  malformed: a bad signature, a frame without the ``<IDS|MSG>`` delimiter,
  JSON that does not parse.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ErrorCode",
    "ExecutionDroppedError",
    "KallichoreError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SessionNotFoundError",
    "SessionSpecError",
    "SessionStateError",
    "StartupError",
]


class ErrorCode(enum.Enum):
    """Kallichore's ``KS-n`` error codes; the value is the wire string."""

    SESSION_EXISTS = "KS-0"
    SESSION_NOT_FOUND = "KS-1"
    SESSION_RUNNING = "KS-2"
    SESSION_NOT_RUNNING = "KS-3"
    PROCESS_NOT_FOUND = "KS-4"
    PROCESS_START_FAILED = "KS-5"
    SESSION_CONNECTION_FAILED = "KS-6"
    SESSION_CONNECTION_TIMEOUT = "KS-7"
    PROCESS_ABNORMAL_EXIT = "KS-8"
    SESSION_CREATE_FAILED = "KS-9"
    SESSION_INTERRUPT_FAILED = "KS-10"
    ZMQ_PROXY_ERROR = "KS-11"
    NO_PROCESS = "KS-12"
    RESTART_FAILED = "KS-13"
    EXITED_BEFORE_CONNECTION = "KS-14"
    NO_KERNEL_INFO = "KS-15"
    START_FAILED = "KS-16"
    HANDSHAKE_FAILED = "KS-17"
    NO_CONNECTION_INFO = "KS-18"
    KERNEL_PATH_NOT_FOUND = "KS-19"
    # Codes Kallichore uses outside the KS-n enum.
    BAD_REQUEST = "400"
    INTERNAL = "500"
    # A missing or wrong bearer token, which Kallichore answers without a
    # body; the status as the code, as Kallichore does for 400 and 500.
    # Other HTTP-level refusals (404 for an unknown path, 405, 413) use
    # their status the same way (kallichore.api.errors).
    UNAUTHORIZED = "401"
    SOCKET_PATH_TOO_LONG = "socket_path_too_long"
    DOMAIN_SOCKET_ERROR = "domain_socket_error"
    # In process only (kallichore.embed); never in an HTTP response.
    EXECUTION_DROPPED = "execution_dropped"


class KallichoreError(Exception):
    """Root of every error this package raises on purpose.

    Attributes:
        code: the wire code of the error.
        message: one human sentence; never contains secrets.
        details: optional extra context, omitted from the body when ``None``.
        http_status: the status a server should answer with.
    """

    http_status: int = 500

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: str | None = None,
        *,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        if http_status is not None:
            self.http_status = http_status

    def to_body(self) -> dict[str, str]:
        """The spec's ``error`` object (``details`` omitted when absent)."""
        body = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequestError(KallichoreError):
    """The client's request cannot be honoured as sent (HTTP 400)."""

    http_status = 400

    def __init__(
        self,
        message: str,
        details: str | None = None,
        *,
        code: ErrorCode = ErrorCode.BAD_REQUEST,
    ) -> None:
        super().__init__(code, message, details)


class SessionSpecError(BadRequestError, ValueError):
    """A new session (or a restart's settings) breaks a rule of ``kallichore.session.spec``.

    HTTP 400 (``KS-19`` for an unknown kernel binary). It is a
    :class:`ValueError` as well: to a caller in process
    (:mod:`kallichore.embed`) it is an invalid argument.
    """


class AuthenticationError(KallichoreError):
    """The bearer token is missing or wrong (HTTP 401); never names the token."""

    http_status = 401

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)


class SessionNotFoundError(KallichoreError):
    """No session has the given id (HTTP 404, ``KS-1``; Kallichore sends no body)."""

    http_status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(ErrorCode.SESSION_NOT_FOUND, f"Session {session_id} not found")
        self.session_id = session_id


class SessionStateError(KallichoreError):
    """The session is in the wrong state for the request (HTTP 400)."""

    http_status = 400


class ExecutionDroppedError(SessionStateError):
    """An execution sent in process ended without its reply (:meth:`kallichore.embed.Session.execute`).

    The execution queue dropped it (interrupt, kill, shutdown) or the kernel
    exited (or restarted) before it finished.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.EXECUTION_DROPPED, message)


class StartupError(KallichoreError):
    """A kernel failed to start; carries the spec's ``startupError`` extras.

    Attributes:
        exit_code: the process's exit code, if it got that far.
        output: captured stdout/stderr of the failed start, if any.
    """

    http_status = 500

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: str | None = None,
        *,
        exit_code: int | None = None,
        output: str | None = None,
    ) -> None:
        super().__init__(code, message, details)
        self.exit_code = exit_code
        self.output = output

    def to_startup_body(self) -> dict[str, object]:
        """The spec's ``startupError`` object."""
        body: dict[str, object] = {}
        if self.exit_code is not None:
            body["exit_code"] = self.exit_code
        if self.output is not None:
            body["output"] = self.output
        body["error"] = self.to_body()
        return body


class LocalProtocolError(Exception):
    """We were asked to do something the Jupyter protocol forbids."""


class RemoteProtocolError(Exception):
    """A peer (kernel or client) sent something that breaks the protocol."""
