"""``kallichore.json``, the copy the package ships and serves, and the app's routes agree."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kallichore.api.app import create_app
from kallichore.api.routes import openapi_document
from kallichore.config import ServerConfig
from kallichore.protocol.auth import UNAUTHENTICATED
from kallichore.server import Server

ROOT_DOCUMENT = Path(__file__).parents[3] / "kallichore.json"
SPEC = json.loads(ROOT_DOCUMENT.read_text())

# Operations in the document that the app does not serve through a Quart
# route yet (none: the channel upgrade is served since the WebSocket bridge).
NOT_YET_SERVED: set[tuple[str, str]] = set()


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    ops = {}
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                ops[(method.upper(), path)] = op
    return ops


async def served() -> dict[tuple[str, str], str]:
    """``(method, path) -> endpoint`` for every rule, HTTP and WebSocket alike."""
    app = create_app(Server(ServerConfig(token=None)).api)
    ops = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method in {"HEAD", "OPTIONS"}:
                continue
            ops[(method, path)] = rule.endpoint
    return ops


async def test_every_served_route_is_documented_with_its_operation_id() -> None:
    docs = documented()
    for key, endpoint in (await served()).items():
        assert key in docs, f"{key} is served but not in kallichore.json"
        operation_id = docs[key]["operationId"]
        assert operation_id == endpoint, f"{key}: handler {endpoint} != operationId {operation_id}"


async def test_every_documented_operation_is_served() -> None:
    missing = set(documented()) - set(await served()) - NOT_YET_SERVED
    assert not missing, f"documented but not served: {sorted(missing)}"


def test_the_shipped_document_is_the_repository_document() -> None:
    # kallichore/api/kallichore.json is a link to the root file; this fails if
    # it became a copy that drifted (or a checkout that does not make links).
    assert openapi_document() == ROOT_DOCUMENT.read_bytes()


def test_the_document_is_declared_package_data() -> None:
    # Without this, an editable install still finds the file but a wheel would not.
    pyproject = tomllib.loads((ROOT_DOCUMENT.parent / "pyproject.toml").read_text())
    assert "api/kallichore.json" in pyproject["tool"]["setuptools"]["package-data"]["kallichore"]


def test_open_operations_are_exactly_the_unauthenticated_ones() -> None:
    for (method, path), op in documented().items():
        open_route = (method, path) in UNAUTHENTICATED
        assert (op["security"] == []) == open_route, (method, path)
        if not open_route:
            assert op["responses"]["401"] == {"$ref": "#/components/responses/unauthorized"}


def test_error_responses_have_the_error_body() -> None:
    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    responses = SPEC["components"]["responses"]
    for name in ("unauthorized", "sessionNotFound", "notFound", "methodNotAllowed"):
        assert responses[name]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/error"
        }
    assert "Allow" in responses["methodNotAllowed"]["headers"]
    for (method, path), op in documented().items():
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert refs(response), f"{method} {path} {status} has no body schema"
    for ref in refs(SPEC):
        section, _, name = ref.removeprefix("#/components/").partition("/")
        assert name in SPEC["components"][section], f"dangling {ref}"


def test_document_basics() -> None:
    assert SPEC["openapi"].startswith("3.")
    assert SPEC["info"]["version"] == "0.1.64"
    status = SPEC["paths"]["/status"]["get"]
    assert status["security"] == [], "GET /status needs no token"
    assert "server_id" in SPEC["components"]["schemas"]["serverStatus"]["properties"]


async def test_openapi_json_is_served_without_a_token() -> None:
    client = create_app(Server(ServerConfig(token="s3cret-token")).api).test_client()
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(await response.get_data()) == SPEC


def test_declared_limits_are_the_ones_the_server_enforces() -> None:
    """Every bound in the document is the constant the validation code uses."""
    from kallichore.api.routes import MAX_PID
    from kallichore.config import MAX_IDLE_SHUTDOWN_HOURS, MAX_SAMPLE_INTERVAL_MS
    from kallichore.session.spec import MAX_CONNECTION_TIMEOUT, MAX_SESSION_ID_CHARS
    from kallichore.wire.connection_file import MAX_PORT, MIN_PORT

    schemas = SPEC["components"]["schemas"]
    process_id = schemas["clientHeartbeat"]["properties"]["process_id"]
    assert (process_id["minimum"], process_id["maximum"]) == (0, MAX_PID)
    config = schemas["serverConfiguration"]["properties"]
    assert config["idle_shutdown_hours"]["maximum"] == MAX_IDLE_SHUTDOWN_HOURS
    interval = config["resource_sample_interval_ms"]
    assert (interval["minimum"], interval["maximum"]) == (0, MAX_SAMPLE_INTERVAL_MS)
    new = schemas["newSession"]["properties"]
    assert (new["session_id"]["minLength"], new["session_id"]["maxLength"]) == (
        1,
        MAX_SESSION_ID_CHARS,
    )
    timeout = new["connection_timeout"]
    assert (timeout["minimum"], timeout["maximum"]) == (1, MAX_CONNECTION_TIMEOUT)
    for name, prop in schemas["connectionInfo"]["properties"].items():
        if name.endswith("_port"):
            assert (prop["minimum"], prop["maximum"]) == (MIN_PORT, MAX_PORT), name


def test_optional_request_fields_that_take_null_say_so() -> None:
    """The converter reads ``null`` as absent for optional fields; the document agrees."""
    schemas = SPEC["components"]["schemas"]
    for schema_name in ("serverConfiguration", "clientHeartbeat", "restartSession"):
        for name, prop in schemas[schema_name]["properties"].items():
            assert prop.get("nullable") is True, f"{schema_name}.{name}"
    log_level = schemas["serverConfiguration"]["properties"]["log_level"]
    assert None in log_level["enum"]
    new = schemas["newSession"]
    for name, prop in new["properties"].items():
        if name in new["required"] or name == "session_mode":
            assert not prop.get("nullable"), name
        else:
            assert prop.get("nullable") is True, name


def test_unbounded_integers_are_declared_64_bit() -> None:
    """The JSON parser reads integers outside 64 bits as floats, which are refused."""
    from kallichore.errors import BadRequestError
    from kallichore.protocol.converter import parse_body
    from kallichore.protocol.models import ServerConfiguration

    hours = SPEC["components"]["schemas"]["serverConfiguration"]["properties"][
        "idle_shutdown_hours"
    ]
    assert (hours["format"], hours["minimum"]) == ("int64", -(2**63))
    assert parse_body(b'{"idle_shutdown_hours": -9223372036854775808}', ServerConfiguration)
    with pytest.raises(BadRequestError, match="fits in 64 bits"):
        parse_body(b'{"idle_shutdown_hours": -9223372036854775809}', ServerConfiguration)
