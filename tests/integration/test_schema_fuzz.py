"""The server agrees with ``kallichore.json``: schemathesis against a real server.

Every operation gets generated requests, valid and invalid, and every
response is checked against the document (status codes, content types,
bodies, headers), with no server errors allowed. A stateful run follows the
document's links (create -> start -> restart -> kill -> delete, and the
reads in between) on a real server with fake kernels.

``make test`` runs a few derandomized examples per operation (well under a
minute); ``make fuzz`` sets ``KC_SCHEMA_EXAMPLES`` and ``KC_SCHEMA_STEPS``
for a long run with fresh randomness (Hypothesis prints the seed of a
failing run, and ``--hypothesis-seed`` replays it).

What is adjusted, and why:

* A valid ``newSession`` gets a real kernel command line (the fake kernel),
  a working directory that exists, the plain startup environment and a
  30-second connection timeout, so that starting it tests the server and
  not the machine; environment variable names get a prefix so a generated
  name never replaces ``PATH``. Restart bodies get the same treatment.
* Schemathesis's ``positive_data_acceptance`` expects 2xx for valid data;
  Kallichore's interface answers 400 with a ``KS-n`` code for state
  conflicts (session exists, already running, not exited). Our own check
  allows those and fails a 400 whose code says the *data* was refused.
  ``GET /sessions/{id}/channels`` without ``Upgrade`` is the other
  documented 400: a WebSocket upgrade is not something the document's
  parameters can require.
* ``POST /shutdown`` ends the server, so it has a test of its own.
* ``idle_shutdown_hours`` is put back after every configuration change, or
  a generated ``0`` would stop the server half way through the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import CheckContext
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    positive_data_acceptance,
)

from kallichore.testing.fake_kernel import fake_kernel_argv
from tests.support.kernel_server import KernelServer, running_server, wait_for
from tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.integration]

#: Generated examples per operation (``make fuzz`` raises it).
EXAMPLES = int(os.environ.get("KC_SCHEMA_EXAMPLES", "6"))
#: Stateful scenarios (``make fuzz`` raises it).
SCENARIOS = int(os.environ.get("KC_SCHEMA_STEPS", "4"))
#: A long run draws fresh examples; the short one is the same every time.
DERANDOMIZE = "KC_SCHEMA_EXAMPLES" not in os.environ
TOKEN = "schema-fuzz-token"
#: Error codes that mean "this request is fine, the session's state is not".
STATE_CODES = {"KS-0", "KS-2", "KS-3", "KS-4", "KS-12"}
#: Bound on a killed kernel being reported exited.
EXIT_TIMEOUT = 20.0  # seconds

schema = schemathesis.openapi.from_path(os.path.join(REPO_ROOT, "kallichore.json"))


class Api:
    """Where the server under test is (set by the ``api`` fixture)."""

    server: KernelServer | None = None

    @classmethod
    def base_url(cls) -> str:
        assert cls.server is not None
        return f"http://127.0.0.1:{cls.server.port}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, marker: str) -> Iterator[KernelServer]:
    workdir = str(tmp_path_factory.mktemp("schema"))
    began = time.monotonic()
    with running_server(workdir, marker, token=TOKEN) as server:
        Api.server = server
        try:
            yield server
        finally:
            Api.server = None
            _forget_sessions(server)
            print(
                f"\nschemathesis: {sum(SENT.values())} requests in "
                f"{time.monotonic() - began:.0f} s; by status {dict(ANSWERED)}; "
                f"by operation {dict(SENT)}"
            )


def _forget_sessions(server: KernelServer) -> None:
    """Kill every session's kernel, wait for the exits, delete them all."""
    sessions = server.get("/sessions").json()["sessions"]
    for session in sessions:
        if session["status"] not in ("exited", "uninitialized"):
            server.post(f"/sessions/{_quote(session['session_id'])}/kill")
    for session in sessions:
        path = f"/sessions/{_quote(session['session_id'])}"
        wait_for(
            lambda path=path: server.get(path).json()["status"] in ("exited", "uninitialized"),
            EXIT_TIMEOUT,
            what=f"{path} to exit",
        )
        server.delete(path)


def _quote(session_id: str) -> str:
    from urllib.parse import quote

    return quote(session_id, safe="")


# ------------------------------------------------------------------ adjustments


def _operation_id(case: schemathesis.Case) -> str | None:
    op: str | None = case.operation.definition.raw.get("operationId")
    return op


def _is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def _safe_env(actions: Any) -> None:
    if isinstance(actions, list):
        for action in actions:
            if isinstance(action, dict) and isinstance(action.get("name"), str):
                action["name"] = "KC_FUZZ_" + action["name"]


def prepare(case: schemathesis.Case) -> None:
    """Make a valid body startable on this machine (see the module docstring)."""
    if not _is_positive(case) or not isinstance(case.body, dict):
        return
    body = case.body
    if _operation_id(case) == "new_session":
        body["argv"] = fake_kernel_argv()
        body["working_directory"] = REPO_ROOT
        body["startup_environment"] = "none"
        body["connection_timeout"] = 30
        body.pop("protocol_version", None)
        body.pop("run_in_shell", None)
        _safe_env(body.get("env"))
    elif _operation_id(case) == "restart_session":
        if "working_directory" in body:
            body["working_directory"] = REPO_ROOT
        _safe_env(body.get("env"))


def valid_data_accepted(ctx: CheckContext, response: Any, case: schemathesis.Case) -> bool | None:
    """A valid request is not refused as bad data (state conflicts may be)."""
    if not _is_positive(case) or response.status_code != 400:
        return None
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        code = None
    if code in STATE_CODES:
        return None
    if _operation_id(case) == "channels_upgrade" and "upgrade" not in {
        k.lower() for k in response.request.headers
    }:
        return None  # the documented answer to a GET that is not a WebSocket upgrade
    raise RejectedPositiveData(
        operation=case.operation.label,
        message=f"Valid data was refused with 400 ({code}): {response.content[:300]!r}",
        status_code=400,
        allowed_statuses=["2xx", "400 with a state code"],
    )


#: Our replacement for a built-in check (see the module docstring).
EXCLUDED_CHECKS = [positive_data_acceptance]
ADDED_CHECKS = [valid_data_accepted]


def validate(case: schemathesis.Case, response: Any) -> None:
    case.validate_response(
        response, excluded_checks=EXCLUDED_CHECKS, additional_checks=ADDED_CHECKS
    )


def call(case: schemathesis.Case) -> Any:
    prepare(case)
    response = case.call(base_url=Api.base_url(), headers=_auth(case))
    _after(case, response)
    return response


def _auth(case: schemathesis.Case) -> dict[str, str]:
    """The real token, over any generated one (``ignored_auth`` tests without it)."""
    return {"Authorization": f"Bearer {TOKEN}"}


#: Requests sent per operation, and responses per status class, for the summary.
SENT: Counter[str] = Counter()
ANSWERED: Counter[str] = Counter()


def _after(case: schemathesis.Case, response: Any) -> None:
    op = _operation_id(case)
    SENT[str(op)] += 1
    ANSWERED[f"{response.status_code // 100}xx"] += 1
    if op == "set_server_configuration" and response.status_code == 200:
        assert Api.server is not None
        Api.server.post("/server_configuration", {"idle_shutdown_hours": -1})


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


# ------------------------------------------------------------------ stateless


@schema.exclude(operation_id="shutdown_server").parametrize()
@SETTINGS
def test_operation_agrees_with_the_document(case: schemathesis.Case, api: KernelServer) -> None:
    response = call(case)
    try:
        validate(case, response)
    finally:
        op = _operation_id(case)
        if op == "new_session" and response.status_code == 200:
            api.delete(f"/sessions/{_quote(response.json()['session_id'])}")


def test_shutdown_agrees_with_the_document(
    tmp_path_factory: pytest.TempPathFactory, marker: str
) -> None:
    """``POST /shutdown`` on a server of its own (it ends the server)."""
    workdir = str(tmp_path_factory.mktemp("shutdown"))
    previous = Api.server
    with running_server(workdir, marker, token=TOKEN) as server:
        Api.server = server
        try:
            operation = schema["/shutdown"]["POST"]
            case = operation.Case()
            response = call(case)
            # ignored_auth probes again without the token: the server is gone by then.
            case.validate_response(
                response,
                excluded_checks=[*EXCLUDED_CHECKS, ignored_auth],
                additional_checks=ADDED_CHECKS,
            )
            assert response.status_code == 200
            assert server.wait_exit(20) == 0
        finally:
            Api.server = previous


# ------------------------------------------------------------------ stateful


class Workflow(schema.as_state_machine()):  # type: ignore[misc]
    """Follows the document's links; every scenario cleans up after itself."""

    def setup(self) -> None:
        self.created: list[str] = []

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        return {"base_url": Api.base_url(), "headers": _auth(case)}

    def before_call(self, case: schemathesis.Case) -> None:
        prepare(case)

    def after_call(self, response: Any, case: schemathesis.Case) -> None:
        super().after_call(response, case)
        _after(case, response)
        op = _operation_id(case)
        if op == "new_session" and response.status_code == 200:
            self.created.append(response.json()["session_id"])

    def validate_response(
        self, response: Any, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        case.validate_response(
            response,
            excluded_checks=EXCLUDED_CHECKS,
            additional_checks=ADDED_CHECKS,
            transport_kwargs=kwargs or None,
            recorder=self.recorder,
        )

    def teardown(self) -> None:
        assert Api.server is not None
        with contextlib.suppress(Exception):
            _forget_sessions(Api.server)


def test_workflows_agree_with_the_document(api: KernelServer) -> None:
    started = time.monotonic()
    Workflow.run(
        settings=hypothesis.settings(
            SETTINGS,
            max_examples=SCENARIOS,
            stateful_step_count=8,
        )
    )
    assert api.get("/status").status == 200, f"after {time.monotonic() - started:.0f} s"
