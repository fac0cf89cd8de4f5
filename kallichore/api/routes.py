"""REST handlers, named after the operationIds in ``kallichore.json``.

Handlers are thin: parse the body (:mod:`kallichore.protocol.converter`), call
into the services of their :class:`~kallichore.api.context.ApiContext` (the
only thing they see of the server), build the response. Errors are raised as
:class:`~kallichore.errors.KallichoreError` and turned into bodies by
:mod:`kallichore.api.errors`.

Routes are registered in groups, one per resource: the server itself
(status, OpenAPI document, shutdown), its configuration and heartbeats, the
session collection, one session's kernel, and its channels
(:mod:`kallichore.api.channel_route`).
"""

from __future__ import annotations

import functools
import importlib.resources
import logging

import trio
from quart import Quart, Response, request

from kallichore.api.channel_route import register_channel_route
from kallichore.api.context import ApiContext
from kallichore.api.presenters import active_session_json
from kallichore.api.responses import json_response, null_response
from kallichore.config import (
    MAX_IDLE_SHUTDOWN_HOURS,
    MAX_SAMPLE_INTERVAL_MS,
    MIN_SAMPLE_INTERVAL_MS,
    idle_shutdown_period,
)
from kallichore.errors import BadRequestError
from kallichore.protocol.converter import format_timestamp, parse_body, unstructure
from kallichore.protocol.models import (
    ClientHeartbeat,
    ConnectionInfo,
    LogLevel,
    NewSession,
    RestartSession,
    ServerConfiguration,
    ServerStatus,
    StartupEnvironment,
    VarAction,
)
from kallichore.session.spec import (
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_PROTOCOL_VERSION,
    EnvTriple,
    SessionSpec,
    validate_restart,
    validate_session_spec,
)
from kallichore.supervisor.launch import find_kernel
from kallichore.wire import connection_file as wire_connection

__all__ = ["MAX_PID", "build_server_status", "openapi_document", "register_routes"]

logger = logging.getLogger(__name__)

#: Largest process id a heartbeat may name (pid_t is a signed 32-bit int).
MAX_PID = 2**31 - 1


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI document shipped in the package, as served by ``GET /openapi.json``.

    ``kallichore/api/kallichore.json`` is a link to the repository's
    ``kallichore.json`` (one source); wheels and sdists carry it as a file.
    Read once (48 KB), when the routes are registered, so serving it opens
    no file (at the open-file limit there is no descriptor to open one with).
    """
    return importlib.resources.files("kallichore.api").joinpath("kallichore.json").read_bytes()


def _env_actions(actions: list[VarAction] | None) -> tuple[EnvTriple, ...]:
    return tuple((a.action.value, a.name, a.value) for a in actions or ())


def session_spec(body: NewSession) -> SessionSpec:
    """Build the spec of a ``newSession`` body (after parsing) and validate it.

    Defaults as Kallichore's: ``connection_timeout`` 30 seconds, protocol
    5.3, and ``startup_environment`` from the older ``run_in_shell`` flag.

    Raises:
        SessionSpecError: KS-19 when ``argv[0]`` is not found on the server's
            PATH; 400 for every other rule of :mod:`kallichore.session.spec`.
            An empty ``argv`` is accepted: such a session can only be adopted.
    """
    timeout = body.connection_timeout
    startup = body.startup_environment
    if startup is None:
        startup = StartupEnvironment.SHELL if body.run_in_shell else StartupEnvironment.NONE
    spec = SessionSpec(
        session_id=body.session_id,
        argv=tuple(body.argv),
        display_name=body.display_name,
        language=body.language,
        username=body.username,
        input_prompt=body.input_prompt,
        continuation_prompt=body.continuation_prompt,
        session_mode=body.session_mode,
        working_directory=body.working_directory,
        env=_env_actions(body.env),
        interrupt_mode=body.interrupt_mode,
        startup_environment=startup,
        startup_environment_arg=body.startup_environment_arg,
        notebook_uri=body.notebook_uri,
        connection_timeout=DEFAULT_CONNECTION_TIMEOUT if timeout is None else float(timeout),
        protocol_version=body.protocol_version or DEFAULT_PROTOCOL_VERSION,
    )
    validate_session_spec(spec, locate_kernel=find_kernel, allow_empty_argv=True)
    return spec


def build_server_status(context: ApiContext) -> ServerStatus:
    """The ``serverStatus`` figures of ``GET /status``."""
    stats = context.registry.statistics()
    identity = context.identity
    now = trio.current_time()
    uptime = now - identity.started_at
    if stats.sessions == 0:
        idle_seconds = uptime
    elif stats.latest_idle_since is not None:
        idle_seconds = now - stats.latest_idle_since
    else:
        idle_seconds = 0.0
    busy_seconds = now - stats.earliest_busy_since if stats.earliest_busy_since else 0.0
    return ServerStatus(
        sessions=stats.sessions,
        active=stats.active,
        busy=stats.busy,
        idle_seconds=int(idle_seconds),
        busy_seconds=int(busy_seconds),
        uptime_seconds=int(uptime),
        version=identity.api_version,
        process_id=identity.process_id,
        started=format_timestamp(identity.started_wall),
        server_id=identity.server_id,
    )


async def _body() -> bytes:
    """The raw request body, whatever the Content-Type says."""
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def _validate_configuration(body: ServerConfiguration) -> ServerConfiguration:
    """Check every field before anything is applied (all or nothing)."""
    hours = body.idle_shutdown_hours
    if hours is not None and hours > MAX_IDLE_SHUTDOWN_HOURS:
        raise BadRequestError("idle_shutdown_hours is too large")
    interval = body.resource_sample_interval_ms
    if interval is not None:
        if interval < 0:
            raise BadRequestError("resource_sample_interval_ms must be non-negative")
        if interval > MAX_SAMPLE_INTERVAL_MS:
            raise BadRequestError(
                f"resource_sample_interval_ms is too large (maximum {MAX_SAMPLE_INTERVAL_MS})"
            )
    return body


def register_routes(app: Quart, context: ApiContext) -> None:
    """Attach every handler to ``app``."""
    _register_server_routes(app, context)
    _register_configuration_routes(app, context)
    _register_session_collection_routes(app, context)
    _register_kernel_routes(app, context)
    register_channel_route(app, context)


def _register_server_routes(app: Quart, context: ApiContext) -> None:
    """``/status``, ``/openapi.json``, ``/shutdown``."""
    openapi_document()  # read now, not on a request that may find no descriptor free

    @app.get("/status")
    async def server_status() -> Response:
        return json_response(unstructure(build_server_status(context)))

    @app.get("/openapi.json")
    async def get_openapi() -> Response:
        return Response(openapi_document(), content_type="application/json")

    @app.post("/shutdown")
    async def shutdown_server() -> Response:
        context.request_shutdown("requested by a client (POST /shutdown)")
        return null_response()


def _register_configuration_routes(app: Quart, context: ApiContext) -> None:
    """``/server_configuration`` (both ways) and ``/client_heartbeat``."""

    @app.get("/server_configuration")
    async def get_server_configuration() -> Response:
        hours = context.idle_shutdown_hours
        config = ServerConfiguration(
            idle_shutdown_hours=hours if hours is not None and hours >= 0 else None,
            resource_sample_interval_ms=context.sampler.interval_ms,
            log_level=LogLevel(context.log_level) if context.log_level else None,
        )
        return json_response(unstructure(config))

    @app.post("/server_configuration")
    async def set_server_configuration() -> Response:
        body = _validate_configuration(
            parse_body(await _body(), ServerConfiguration, name="ServerConfiguration")
        )
        if body.idle_shutdown_hours is not None:
            context.idle_shutdown_hours = body.idle_shutdown_hours
            context.idle.set_period(idle_shutdown_period(body.idle_shutdown_hours))
        if body.resource_sample_interval_ms is not None:
            interval = body.resource_sample_interval_ms
            if 0 < interval < MIN_SAMPLE_INTERVAL_MS:
                interval = MIN_SAMPLE_INTERVAL_MS
            context.sampler.set_interval(interval)
            logger.info("Resource sample interval set to %d ms", interval)
        if body.log_level is not None:
            logger.info(
                "Ignoring log_level %s: it cannot change while running", body.log_level.value
            )
        return null_response()

    @app.post("/client_heartbeat")
    async def client_heartbeat() -> Response:
        body = parse_body(await _body(), ClientHeartbeat, name="ClientHeartbeat")
        if body.process_id is not None and not 0 <= body.process_id <= MAX_PID:
            raise BadRequestError(f"process_id must be between 0 and {MAX_PID}")
        context.idle.track_client(body.process_id)
        context.idle.nudge()
        return null_response()


def _register_session_collection_routes(app: Quart, context: ApiContext) -> None:
    """``/sessions`` and ``/sessions/{id}``: list, create, read, delete."""
    registry = context.registry

    @app.get("/sessions")
    async def list_sessions() -> Response:
        now = trio.current_time()
        sessions = [active_session_json(s, now) for s in registry.list()]
        return json_response({"total": len(sessions), "sessions": sessions})

    @app.put("/sessions")
    async def new_session() -> Response:
        body = parse_body(await _body(), NewSession, name="NewSession")
        session = registry.create(session_spec(body))
        return json_response({"session_id": session.session_id})

    @app.get("/sessions/<session_id>")
    async def get_session(session_id: str) -> Response:
        session = registry.get(session_id)
        return json_response(active_session_json(session, trio.current_time()))

    @app.delete("/sessions/<session_id>")
    async def delete_session(session_id: str) -> Response:
        registry.delete(session_id)
        return null_response()


def _register_kernel_routes(app: Quart, context: ApiContext) -> None:
    """One session's kernel: start, restart, kill, interrupt, adopt, connection info."""
    registry = context.registry

    @app.post("/sessions/<session_id>/start")
    async def start_session(session_id: str) -> Response:
        session = registry.get(session_id)
        return json_response(await session.start())

    @app.post("/sessions/<session_id>/restart")
    async def restart_session(session_id: str) -> Response:
        session = registry.get(session_id)
        data = await _body()
        body = RestartSession()
        if data.strip() and data.strip() != b"null":
            body = parse_body(data, RestartSession, name="RestartSession")
        env = _env_actions(body.env)
        validate_restart(body.working_directory, env)
        await session.restart(body.working_directory or None, env or None)
        return null_response()

    @app.post("/sessions/<session_id>/kill")
    async def kill_session(session_id: str) -> Response:
        await registry.kill(registry.get(session_id))
        return null_response()

    @app.post("/sessions/<session_id>/interrupt")
    async def interrupt_session(session_id: str) -> Response:
        await registry.get(session_id).interrupt()
        return null_response()

    @app.put("/sessions/<session_id>/adopt")
    async def adopt_session(session_id: str) -> Response:
        session = registry.get(session_id)
        body = parse_body(await _body(), ConnectionInfo, name="ConnectionInfo")
        try:
            info = wire_connection.ConnectionInfo.from_json_dict(unstructure(body))
        except ValueError as exc:
            raise BadRequestError(f"Invalid connection info: {exc}") from None
        return json_response(await session.adopt(info))

    @app.get("/sessions/<session_id>/connection_info")
    async def connection_info(session_id: str) -> Response:
        info = registry.get(session_id).get_connection_info()
        return json_response(info.to_json_dict())
