"""``create_app``: the Quart-Trio application for one server."""

from __future__ import annotations

# werkzeug's routing encodes the Host with the "idna" codec on every request,
# and Python imports a codec on its first use. Imported here, at start-up, so
# that a request served when the process has no descriptor left (the open-file
# limit) does not fail opening encodings/idna.py.
import encodings.idna  # noqa: F401

from quart import Response, request, websocket
from quart_trio import QuartTrio

from kallichore.api.access_log import AccessLogMiddleware, note_auth_failure
from kallichore.api.context import ApiContext
from kallichore.api.errors import register_error_handlers, response_for_error
from kallichore.api.last_resort import LastResortMiddleware
from kallichore.api.routes import register_routes
from kallichore.errors import AuthenticationError
from kallichore.protocol.auth import UNAUTHENTICATED, auth_failure

__all__ = ["create_app"]


def create_app(context: ApiContext) -> QuartTrio:
    """The REST (and WebSocket) application of one server, seeing it through ``context``.

    Routing is on the path only; query strings are ignored. Authentication
    runs before any handler (so 401 wins over 404 for an unknown session),
    but after routing, so an unknown path is a plain 404. Every request and
    WebSocket gets a line in the access log (:mod:`kallichore.api.access_log`).
    A request the app fails to answer still gets a JSON error
    (:mod:`kallichore.api.last_resort`).
    """
    app = QuartTrio("kallichore")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024  # bytes; same as WebSocket messages
    token = context.token

    @app.before_request
    async def require_token() -> Response | None:
        if request.routing_exception is not None or request.url_rule is None:
            return None
        if (request.method, request.url_rule.rule) in UNAUTHENTICATED:
            return None
        failure = auth_failure(request.headers.get("Authorization"), token)
        if failure is None:
            return None
        note_auth_failure(request.scope, failure)
        return response_for_error(AuthenticationError(failure))

    @app.before_websocket
    async def require_websocket_token() -> Response | None:
        # A Response returned before accept() is sent instead of the upgrade.
        if websocket.routing_exception is not None or websocket.url_rule is None:
            return None
        failure = auth_failure(websocket.headers.get("Authorization"), token)
        if failure is None:
            return None
        note_auth_failure(websocket.scope, failure)
        return response_for_error(AuthenticationError(failure))

    register_error_handlers(app)
    register_routes(app, context)
    app.asgi_app = AccessLogMiddleware(LastResortMiddleware(app.asgi_app))  # type: ignore[method-assign]
    return app
