"""HTTP to the server over TCP or a Unix socket (httpx, run by trio via anyio).

The only place httpx appears: its exceptions become
:class:`KallichoreClientError` here, so no httpx type leaks upward (httpcore's
``map_exceptions`` idea), and error bodies (``error`` and ``startupError``)
are decoded into the exception's fields.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx

from kallichore.client._errors import KallichoreClientError

__all__ = ["HttpTransport"]

#: Bound on connecting and on each read; kernel starts get their own bound.
DEFAULT_TIMEOUT = 30.0  # seconds


@attrs.define(eq=False)
class HttpTransport:
    """One pooled httpx client for one server.

    Exactly one of ``base_url`` (``http://127.0.0.1:PORT``) and
    ``socket_path`` is set.
    """

    base_url: str | None
    socket_path: str | None
    token: str | None
    _client: httpx.AsyncClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.socket_path is not None:
            self._client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=self.socket_path),
                base_url="http://localhost",
                headers=headers,
                timeout=DEFAULT_TIMEOUT,
            )
        elif self.base_url is not None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/"), headers=headers, timeout=DEFAULT_TIMEOUT
            )
        else:
            raise ValueError("either base_url or socket_path is required")

    @property
    def where(self) -> str:
        """The server's address, for messages."""
        return self.socket_path or self.base_url or "?"

    async def request(
        self, method: str, path: str, *, body: Any = None, read_timeout: float | None = None
    ) -> Any:
        """Send one request; return the decoded JSON body (``None`` if empty).

        Args:
            body: JSON-ready data, or ``None`` for no body.
            read_timeout: per-phase httpx timeout; ``None`` keeps the default.

        Raises:
            KallichoreClientError: no response (with ``status=None``), or a
                non-2xx status with the body's code/message/details.
        """
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        if read_timeout is not None:
            kwargs["timeout"] = read_timeout
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise KallichoreClientError(
                f"{method} {path}: no response from {self.where} in time"
            ) from None
        except httpx.TransportError as exc:
            raise KallichoreClientError(
                f"cannot reach the server at {self.where}: {_reason(exc)}"
            ) from None
        data = _decode(response.content)
        if response.is_success:
            return data
        raise _error_from(method, path, response.status_code, response.reason_phrase, data)

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()


def _reason(exc: BaseException) -> str:
    # httpx wraps OSErrors; the innermost cause has the useful text.
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
            continue
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _decode(content: bytes) -> Any:
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _error_from(
    method: str, path: str, status: int, phrase: str, data: Any
) -> KallichoreClientError:
    exit_code: int | None = None
    output: str | None = None
    error = data
    if isinstance(data, dict) and isinstance(data.get("error"), dict):  # startupError
        error = data["error"]
        if isinstance(data.get("exit_code"), int):
            exit_code = data["exit_code"]
        if isinstance(data.get("output"), str):
            output = data["output"]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        details = error.get("details")
        return KallichoreClientError(
            error["message"],
            status=status,
            code=error.get("code") if isinstance(error.get("code"), str) else None,
            details=details if isinstance(details, str) else None,
            exit_code=exit_code,
            output=output,
        )
    text = f"{method} {path}: HTTP {status} {phrase}".rstrip()
    if isinstance(error, str) and error.strip():
        text = f"{text}: {error.strip()}"
    return KallichoreClientError(text, status=status)
