"""``kallichore.json``, the copy the package ships and serves, and the app's routes agree."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from kallichore.api.app import create_app
from kallichore.api.auth import UNAUTHENTICATED
from kallichore.api.routes import openapi_document
from kallichore.config import ServerConfig
from kallichore.server import Server

ROOT_DOCUMENT = Path(__file__).parents[2] / "kallichore.json"
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
    app = create_app(Server(ServerConfig(token=None)))
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
    client = create_app(Server(ServerConfig(token="s3cret-token"))).test_client()
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(await response.get_data()) == SPEC
