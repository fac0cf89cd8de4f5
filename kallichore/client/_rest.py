"""``KallichoreClient``: every REST operation of ``kallichore.json`` as a typed method.

Method names are the spec's operationIds in snake_case; request bodies are
the attrs models of :mod:`kallichore.protocol.models`, responses the models of
:mod:`kallichore.client._models`, both converted by the server's one cattrs
converter (strict JSON types, unknown fields ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
import cattrs

from kallichore.client._errors import KallichoreClientError
from kallichore.client._http import HttpTransport
from kallichore.client._models import ActiveSession, ServerStatus, SessionList
from kallichore.protocol.converter import converter, unstructure
from kallichore.protocol.models import (
    ClientHeartbeat,
    ConnectionInfo,
    NewSession,
    RestartSession,
    ServerConfiguration,
)

__all__ = ["KallichoreClient", "open_client"]

T = TypeVar("T")

#: Bound on ``start``/``restart``/``adopt``: the server waits for the kernel.
START_TIMEOUT = 300.0  # seconds


@attrs.define(eq=False)
class KallichoreClient:
    """A client for one server. Make one with :func:`open_client`.

    Attributes:
        base_url: ``http://HOST:PORT`` for a TCP server, else ``None``.
        socket_path: the server's Unix socket, else ``None``.
        token: the bearer token, if the server has one.
    """

    base_url: str | None
    socket_path: str | None
    token: str | None
    _http: HttpTransport

    # ------------------------------------------------------------- sessions

    async def list_sessions(self) -> SessionList:
        """``GET /sessions``."""
        return self._structure(await self._http.request("GET", "/sessions"), SessionList)

    async def new_session(self, session: NewSession) -> str:
        """``PUT /sessions``: create a session (not started); returns its id."""
        data = await self._http.request("PUT", "/sessions", body=unstructure(session))
        if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
            raise KallichoreClientError(f"unexpected response to PUT /sessions: {data!r}")
        return str(data["session_id"])

    async def get_session(self, session_id: str) -> ActiveSession:
        """``GET /sessions/{id}``."""
        data = await self._http.request("GET", _path(session_id))
        return self._structure(data, ActiveSession)

    async def delete_session(self, session_id: str) -> None:
        """``DELETE /sessions/{id}`` (the session must have exited)."""
        await self._http.request("DELETE", _path(session_id))

    async def start_session(self, session_id: str) -> dict[str, Any]:
        """``POST /sessions/{id}/start``; returns the kernel's ``kernel_info_reply`` content.

        Errors:
            A failed start raises :class:`KallichoreClientError` with
            ``status=500`` and the ``startupError``'s ``exit_code`` and
            ``output``.
        """
        return _as_dict(
            await self._http.request("POST", _path(session_id, "start"), read_timeout=START_TIMEOUT)
        )

    async def restart_session(self, session_id: str, restart: RestartSession | None = None) -> None:
        """``POST /sessions/{id}/restart``, optionally with a new directory or environment."""
        await self._http.request(
            "POST",
            _path(session_id, "restart"),
            body=unstructure(restart or RestartSession()),
            read_timeout=START_TIMEOUT,
        )

    async def kill_session(self, session_id: str) -> None:
        """``POST /sessions/{id}/kill``."""
        await self._http.request("POST", _path(session_id, "kill"))

    async def interrupt_session(self, session_id: str) -> None:
        """``POST /sessions/{id}/interrupt``."""
        await self._http.request("POST", _path(session_id, "interrupt"))

    async def adopt_session(self, session_id: str, info: ConnectionInfo) -> dict[str, Any]:
        """``PUT /sessions/{id}/adopt``: take over a running kernel; returns its kernel_info."""
        return _as_dict(
            await self._http.request(
                "PUT",
                _path(session_id, "adopt"),
                body=unstructure(info),
                read_timeout=START_TIMEOUT,
            )
        )

    async def connection_info(self, session_id: str) -> ConnectionInfo:
        """``GET /sessions/{id}/connection_info``."""
        data = await self._http.request("GET", _path(session_id, "connection_info"))
        return self._structure(data, ConnectionInfo)

    async def channels_upgrade(self, session_id: str) -> str:
        """``GET /sessions/{id}/channels`` without an upgrade: on a Unix-socket
        server, the path of the session's channel socket.

        On a TCP server this operation is the WebSocket upgrade itself; use
        :meth:`open_channel`.
        """
        data = await self._http.request("GET", _path(session_id, "channels"))
        if not isinstance(data, str):
            raise KallichoreClientError(f"unexpected channels response: {data!r}")
        return data

    # --------------------------------------------------------------- server

    async def server_status(self) -> ServerStatus:
        """``GET /status``."""
        return self._structure(await self._http.request("GET", "/status"), ServerStatus)

    async def shutdown_server(self) -> None:
        """``POST /shutdown``: the server kills every kernel and exits."""
        await self._http.request("POST", "/shutdown")

    async def client_heartbeat(self, process_id: int | None = None) -> None:
        """``POST /client_heartbeat`` (by default with our own pid)."""
        body = ClientHeartbeat(process_id=os.getpid() if process_id is None else process_id)
        await self._http.request("POST", "/client_heartbeat", body=unstructure(body))

    async def get_server_configuration(self) -> ServerConfiguration:
        """``GET /server_configuration``."""
        data = await self._http.request("GET", "/server_configuration")
        return self._structure(data, ServerConfiguration)

    async def set_server_configuration(self, config: ServerConfiguration) -> None:
        """``POST /server_configuration``; ``None`` fields are left unchanged."""
        await self._http.request("POST", "/server_configuration", body=unstructure(config))

    # -------------------------------------------------------------- channel

    def open_channel(
        self, session_id: str, **options: Any
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """Attach to a session's Jupyter channel; see :func:`kallichore.client.open_channel`."""
        from kallichore.client._channel import open_channel

        return open_channel(self, session_id, **options)

    async def aclose(self) -> None:
        """Close pooled HTTP connections."""
        await self._http.aclose()

    # ------------------------------------------------------------- internal

    def _structure(self, data: Any, model: type[T]) -> T:
        try:
            return converter.structure(data, model)
        except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
            raise KallichoreClientError(
                f"unexpected response for {model.__name__}: {exc}"
            ) from None


def _path(session_id: str, *rest: str) -> str:
    return "/".join(["/sessions", quote(session_id, safe=""), *rest])


def _as_dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {}


def read_connection_file(path: str) -> dict[str, Any]:
    """Parse a server connection file.

    Raises:
        KallichoreClientError: unreadable, not JSON, or not an object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            details = json.load(f)
    except OSError as exc:
        raise KallichoreClientError(
            f"cannot read connection file {path}: {exc.strerror or exc}"
        ) from None
    except ValueError as exc:
        raise KallichoreClientError(f"connection file {path} is not JSON: {exc}") from None
    if not isinstance(details, dict):
        raise KallichoreClientError(f"connection file {path} is not a JSON object")
    return details


@contextlib.asynccontextmanager
async def open_client(
    *,
    connection_file: str | None = None,
    base_url: str | None = None,
    socket_path: str | None = None,
    token: str | None = None,
) -> AsyncIterator[KallichoreClient]:
    """Open a client from a connection file or an explicit address.

    Args:
        connection_file: a server connection file (``--connection-file``);
            its ``base_path`` or ``socket_path`` and ``bearer_token`` are
            used unless given explicitly.
        base_url: ``http://127.0.0.1:PORT`` of a TCP server.
        socket_path: the server's Unix socket.
        token: the bearer token.

    Raises:
        KallichoreClientError: no address, both addresses, or an unusable
            connection file.
    """
    if connection_file is not None:
        details = read_connection_file(connection_file)
        if base_url is None and socket_path is None:
            if details.get("transport") == "socket" or (
                details.get("socket_path") and not details.get("base_path")
            ):
                socket_path = details.get("socket_path")
            elif details.get("base_path"):
                base_url = str(details["base_path"])
            elif details.get("port"):
                base_url = f"http://127.0.0.1:{details['port']}"
            else:
                raise KallichoreClientError(
                    f"connection file {connection_file} has no usable address "
                    f"(transport {details.get('transport')!r})"
                )
        if token is None and isinstance(details.get("bearer_token"), str):
            token = details["bearer_token"]
    if (base_url is None) == (socket_path is None):
        raise KallichoreClientError("give exactly one of a connection file, a URL or a socket path")
    if base_url is not None and urlsplit(base_url).scheme not in ("http",):
        raise KallichoreClientError(f"unsupported URL {base_url!r} (expected http://HOST:PORT)")
    http = HttpTransport(base_url=base_url, socket_path=socket_path, token=token)
    client = KallichoreClient(base_url, socket_path, token, http)
    try:
        yield client
    finally:
        await client.aclose()


def from_connection_file(path: str) -> contextlib.AbstractAsyncContextManager[KallichoreClient]:
    """``open_client(connection_file=path)``."""
    return open_client(connection_file=path)
