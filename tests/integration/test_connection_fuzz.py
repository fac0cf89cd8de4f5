"""The connection-level protocol fuzzer against both listeners, with a real kernel.

Each listener (TCP, and the Unix main socket of ``--transport socket``) gets
a server with one real ipykernel running and a spare session without a
kernel; :mod:`tests.support.connection_fuzz` then drives random
connection sequences at it. Afterwards the kernel must have the same pid and
status as before, and the server must still answer.

``make test`` runs a short seeded run (:data:`SHORT_SECONDS` per listener,
seed :data:`DEFAULT_SEED`); ``make fuzz`` sets ``FUZZ_SECONDS``, the length
of the whole run, shared by the two listeners, and no seed, so each run
draws one. ``KC_FUZZ_SEED`` replays a seed; the seed is
in every failure message and in the printed summary.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.bodies import session_body
from tests.support.connection_fuzz import ConnectionFuzzer, FuzzTarget
from tests.support.kernel_server import MARKER_VAR
from tests.support.server_process import Endpoint, ServerFactory, short_tempdir

pytestmark = pytest.mark.integration

#: Seconds per listener in ``make test``.
SHORT_SECONDS = 12.0  # seconds
DEFAULT_SEED = 20261208
#: Bound on starting the real kernel (two cores, shared).
KERNEL_START_TIMEOUT = 90.0  # seconds
KERNEL = "fuzz-kernel"
SPARE = "fuzz-spare"


def _seconds() -> float:
    """Seconds for one listener: half of ``FUZZ_SECONDS`` (the whole run's length)."""
    if "FUZZ_SECONDS" in os.environ:
        return float(os.environ["FUZZ_SECONDS"]) / 2
    return SHORT_SECONDS


def _seed() -> int:
    if "KC_FUZZ_SEED" in os.environ:
        return int(os.environ["KC_FUZZ_SEED"])
    if "FUZZ_SECONDS" in os.environ:
        return random.SystemRandom().randrange(2**32)
    return DEFAULT_SEED


def _start_kernel(endpoint: Endpoint) -> None:
    conn = endpoint.connection(timeout=KERNEL_START_TIMEOUT)
    try:
        conn.request(
            "POST",
            f"/sessions/{KERNEL}/start",
            headers={"Authorization": f"Bearer {endpoint.token}", "Content-Length": "0"},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body


def _kernel_state(endpoint: Endpoint) -> tuple[Any, Any]:
    details = endpoint.request("GET", f"/sessions/{KERNEL}").json()
    return details.get("process_id"), details["status"]


@pytest.fixture(params=["tcp", "socket"])
def target(request: pytest.FixtureRequest, marker: str) -> Iterator[FuzzTarget]:
    with short_tempdir("kc-fz-") as workdir:
        servers = ServerFactory(Path(workdir))
        try:
            conn_file = Path(workdir) / "conn.json"
            server = servers.start(
                "--transport", request.param, "--connection-file", str(conn_file),
                env={MARKER_VAR: marker},
            )  # fmt: skip
            endpoint = Endpoint.from_details(server.read_connection_file(conn_file))
            for sid, overrides in ((KERNEL, {}), (SPARE, {"argv": []})):
                reply = endpoint.request("PUT", "/sessions", session_body(sid, **overrides))
                assert reply.status == 200, reply
            _start_kernel(endpoint)
            yield FuzzTarget(
                endpoint=endpoint,
                kernel_session=KERNEL,
                spare_session=SPARE,
                is_alive=lambda: server.returncode is None,
            )
            if server.returncode is not None:
                print(server.describe()[-4000:])
        finally:
            servers.close()


def test_connection_fuzz_leaves_the_server_and_the_kernel_alone(target: FuzzTarget) -> None:
    endpoint = target.endpoint
    before = _kernel_state(endpoint)
    assert before[0] is not None, before
    assert before[1] == "idle", before
    fuzzer = ConnectionFuzzer(target, _seed())
    stats = fuzzer.run(_seconds())
    print(f"\nconnection fuzz over {endpoint.transport}: {stats.summary()}")
    assert not stats.problems, "\n".join(stats.problems[:5])
    assert fuzzer.probe(), stats.problems
    after = _kernel_state(endpoint)
    assert after == before, f"seed {stats.seed}: the kernel changed: {before} -> {after}"
    assert psutil.pid_exists(before[0])
    figures = json.dumps({"transport": endpoint.transport, **vars(stats)}, default=str)
    if "KC_FUZZ_FIGURES" in os.environ:
        with open(os.environ["KC_FUZZ_FIGURES"], "a") as f:
            f.write(figures + "\n")
