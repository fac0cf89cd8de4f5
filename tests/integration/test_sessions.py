"""The session REST surface against the real server and real ipykernel kernels.

Each test talks HTTP to a real ``python -m kallichore serve`` process and, to
check what a kernel sees, Jupyter to the kernel itself (``BlockingKernelClient``
with the session's ``connection_info``). Scenarios follow
Kallichore's session endpoints and lifecycle, and the hard cases its users
have met (start failures, kills, restarts, adoption).

Most tests share one module-scoped server (distinct session ids); the tests
that shut a server down get their own. Every process started here carries a
marker in its environment; the module ends by proving none of them is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from tests.support.bodies import KERNEL_ARGV, session_body
from tests.support.kernel_server import (
    KernelServer,
    collect_execution,
    execute,
    kernel_client,
    kill_tree,
    marked_processes,
    running_server,
    start_external_kernel,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    # jupyter_client / jupyter_core emit deprecation noise we do not own.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MARKER = f"kc-sessions-{uuid.uuid4().hex}"
TOKEN = "integration-secret"

# ---------------------------------------------------------------- utilities


def parallel(*calls: Callable[[], Any], timeout: float = 90.0) -> list[Any]:
    """Run ``calls`` in threads; their results in order (first error re-raised)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(calls), 1)) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result(timeout=timeout) for f in futures]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def processes_with(text: str) -> list[int]:
    """Live marked processes whose command line contains ``text``."""
    found = []
    for proc in marked_processes(MARKER):
        with contextlib.suppress(psutil.Error):
            if text in " ".join(proc.cmdline()):
                found.append(proc.pid)
    return found


def run_json(server: KernelServer, session_id: str, expression: str) -> Any:
    """Evaluate ``expression`` in the session's kernel; its JSON-decoded value."""
    with kernel_client(server.connection_info(session_id)) as kc:
        result = execute(kc, f"import json as _j, os\nprint(_j.dumps({expression}))")
    assert result.status == "ok", result
    return json.loads(result.stdout.strip().splitlines()[-1])


def kernel_view(server: KernelServer, session_id: str, names: list[str]) -> dict[str, Any]:
    """The kernel's cwd and the values of environment variables ``names``."""
    view: dict[str, Any] = run_json(
        server,
        session_id,
        f"{{'cwd': os.getcwd(), 'env': {{n: os.environ.get(n) for n in {names!r}}}}}",
    )
    return view


def error_code(body: Any) -> str:
    """The ``code`` of an ``error`` or ``startupError`` body."""
    return str(body["error"]["code"] if "error" in body else body["code"])


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def leak_check() -> Iterator[None]:
    """After everything else: no process started by this module may remain."""
    yield
    try:
        wait_for(
            lambda: not marked_processes(MARKER),
            10,
            what="every process started by test_sessions to be gone",
        )
    except AssertionError:
        left = marked_processes(MARKER)
        described = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                described.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        kill_tree(left)
        pytest.fail("processes left behind by test_sessions:\n" + "\n".join(described))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.path.realpath(str(tmp_path_factory.mktemp("kc-sessions")))


@pytest.fixture(scope="module")
def server(leak_check: None, workdir: str) -> Iterator[KernelServer]:
    """The shared server (with a bearer token)."""
    with running_server(workdir, MARKER, token=TOKEN) as srv:
        yield srv


@pytest.fixture
def own_server(leak_check: None, workdir: str) -> Iterator[KernelServer]:
    """A private server for a test that shuts it down."""
    with running_server(workdir, MARKER) as srv:
        yield srv


@pytest.fixture
def external_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; killed (with their trees) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    kill_tree([psutil.Process(proc.pid)])
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


BASIC_ENV = [
    {"action": "replace", "name": "KC_TEST_REPLACE", "value": "replaced"},
    {"action": "append", "name": "KC_TEST_BASE_APPEND", "value": "_tail"},
    {"action": "prepend", "name": "KC_TEST_BASE_PREPEND", "value": "head_"},
    {"action": "append", "name": "KC_TEST_UNSET", "value": "solo"},
    {"action": "replace", "name": "KC_TEST_CHAIN", "value": "a"},
    {"action": "append", "name": "KC_TEST_CHAIN", "value": "b"},
    {"action": "prepend", "name": "KC_TEST_CHAIN", "value": "c"},
]
BASIC_EXPECTED_ENV = {
    "KC_TEST_REPLACE": "replaced",
    "KC_TEST_BASE_APPEND": "base_tail",
    "KC_TEST_BASE_PREPEND": "head_base",
    "KC_TEST_UNSET": "solo",
    "KC_TEST_CHAIN": "cab",
}


@pytest.fixture(scope="module")
def basic(server: KernelServer, workdir: str) -> dict[str, Any]:
    """A started session ``basic`` with environment actions and its own cwd."""
    cwd = os.path.join(workdir, "basic-wd")
    os.makedirs(cwd, exist_ok=True)
    reply = server.create_and_start("basic", env=BASIC_ENV, working_directory=cwd)
    return {"id": "basic", "reply": reply, "cwd": cwd}


# -------------------------------------------------------- 1, 2: create/start


def test_create_then_start_reports_kernel_info(server: KernelServer, basic: dict[str, Any]) -> None:
    reply = basic["reply"]
    assert reply["status"] == "ok"
    assert reply["language_info"]["name"] == "python"
    assert reply["protocol_version"].startswith("5.")

    session = server.session("basic")
    assert session["session_id"] == "basic"
    assert session["status"] == "idle"
    assert session["kernel_info"]["language_info"]["name"] == "python"
    assert session["kernel_info"] == reply
    assert isinstance(session["process_id"], int)
    assert alive(session["process_id"])
    # The leak check at the end of the module relies on this marker.
    assert session["process_id"] in [p.pid for p in marked_processes(MARKER)]
    assert session["argv"] == KERNEL_ARGV  # the template, not the substituted path
    assert session["execution_queue"] == {"length": 0, "pending": []}
    assert session["session_mode"] == "console"
    assert session["connected"] is False
    for name, value in BASIC_EXPECTED_ENV.items():
        assert session["initial_env"].get(name) == value, name

    listing = server.get("/sessions").json()
    ids = [s["session_id"] for s in listing["sessions"]]
    assert "basic" in ids
    assert listing["total"] == len(listing["sessions"])

    status = server.get("/status").json()
    assert status["sessions"] == listing["total"]
    assert status["active"] == sum(1 for s in listing["sessions"] if s["status"] != "exited")
    assert status["active"] >= 1


def test_execute_sees_environment_and_working_directory(
    server: KernelServer, basic: dict[str, Any]
) -> None:
    with kernel_client(server.connection_info("basic")) as kc:
        result = execute(kc, "print('hello from', 'the kernel')")
        assert result.status == "ok", result
        assert result.stdout == "hello from the kernel\n"
    view = kernel_view(server, "basic", list(BASIC_EXPECTED_ENV))
    assert view["env"] == BASIC_EXPECTED_ENV
    assert os.path.realpath(view["cwd"]) == basic["cwd"]


def test_working_directory_follows_the_kernel(server: KernelServer, workdir: str) -> None:
    """After each execution the session reports the kernel's current directory."""
    first = os.path.realpath(os.path.join(workdir, "cwd-first"))
    second = os.path.realpath(os.path.join(workdir, "cwd-second"))
    os.makedirs(first, exist_ok=True)
    os.makedirs(second, exist_ok=True)
    server.create_and_start("cwd-follow")
    with kernel_client(server.connection_info("cwd-follow")) as kc:
        # The second change is read through the process handle the first made.
        for target in (first, second):
            result = execute(kc, f"import os; os.chdir({target!r})")
            assert result.status == "ok", result
            wait_for(
                lambda t=target: server.session("cwd-follow")["working_directory"] == t,
                10,
                what=f"working_directory == {target}",
            )
    assert server.post("/sessions/cwd-follow/kill").status == 200
    server.wait_status("cwd-follow", "exited", 10)


# ------------------------------------------------------------- 3: restart


def test_restart_with_new_settings_and_concurrent_restart(
    server: KernelServer, workdir: str
) -> None:
    first_wd = os.path.join(workdir, "restart-one")
    second_wd = os.path.join(workdir, "restart-two")
    os.makedirs(first_wd, exist_ok=True)
    os.makedirs(second_wd, exist_ok=True)
    server.create_and_start(
        "restart",
        working_directory=first_wd,
        env=[{"action": "replace", "name": "KC_TEST_PHASE", "value": "one"}],
    )
    old_pid = server.session("restart")["process_id"]

    res = server.post(
        "/sessions/restart/restart",
        {
            "working_directory": second_wd,
            "env": [{"action": "replace", "name": "KC_TEST_PHASE", "value": "two"}],
        },
    )
    assert res.status == 200, res
    assert res.body == b"null"
    server.remember_children()
    session = server.session("restart")
    assert session["status"] == "idle"
    new_pid = session["process_id"]
    assert new_pid != old_pid
    assert not alive(old_pid)
    view = kernel_view(server, "restart", ["KC_TEST_PHASE"])
    assert view["env"] == {"KC_TEST_PHASE": "two"}
    assert os.path.realpath(view["cwd"]) == second_wd

    # Restart of an exited (killed) session just starts it.
    assert server.post("/sessions/restart/kill").status == 200
    server.wait_status("restart", "exited", 5)
    res = server.post("/sessions/restart/restart")
    assert res.status == 200, res
    server.remember_children()
    session = server.session("restart")
    assert session["status"] == "idle"
    assert session["process_id"] not in (old_pid, new_pid)

    # Two restarts at once: one is refused with KS-13.
    barrier = threading.Barrier(2)

    def restart() -> Any:
        barrier.wait(5)
        return server.post("/sessions/restart/restart")

    results = parallel(restart, restart)
    server.remember_children()
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 500], results
    refused = next(r for r in results if r.status == 500)
    assert error_code(refused.json()) == "KS-13", refused
    server.wait_status("restart", "idle", 10)
    assert server.post("/sessions/restart/kill").status == 200


# ---------------------------------------------------------------- 4: kill


def test_kill_and_errors_without_a_process(server: KernelServer) -> None:
    server.create_and_start("kill")
    pid = server.session("kill")["process_id"]
    assert group_members(pid), "the kernel should lead its own process group"

    res = server.post("/sessions/kill/kill")
    assert res.status == 200, res
    assert res.body == b"null"
    session = server.wait_status("kill", "exited", 5)
    assert "process_id" not in session
    wait_for(lambda: not alive(pid), 5, what=f"kernel {pid} to be gone")
    assert group_members(pid) == []

    res = server.post("/sessions/kill/kill")
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-3"

    server.create("never-started")
    res = server.post("/sessions/never-started/kill")
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-12"
    res = server.post("/sessions/never-started/interrupt")
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-10"


def test_kill_removes_the_kernels_children(server: KernelServer) -> None:
    server.create_and_start("tree")
    result_pid = run_json(
        server,
        "tree",
        "__import__('subprocess').Popen([__import__('sys').executable, '-c', "
        "'import time; time.sleep(600)']).pid",
    )
    server.remember_children()
    assert alive(result_pid)
    res = server.post("/sessions/tree/kill")
    assert res.status == 200, res
    wait_for(lambda: not alive(result_pid), 5, what=f"grandchild {result_pid} to be gone")


# ----------------------------------------------------------- 5: interrupt


@pytest.mark.parametrize("mode", ["message", "signal"])
def test_interrupt_while_busy(server: KernelServer, mode: str) -> None:
    sid = f"interrupt-{mode}"
    server.create_and_start(sid, interrupt_mode=mode)
    with kernel_client(server.connection_info(sid)) as kc:
        msg_id = kc.execute("import time; time.sleep(30)")
        server.wait_status(sid, "busy", 10)
        time.sleep(0.3)  # let the kernel get into the sleep
        began = time.monotonic()
        res = server.post(f"/sessions/{sid}/interrupt")
        assert res.status == 200, res
        assert res.body == b"null"
        result = collect_execution(kc, msg_id, timeout=5)
        assert time.monotonic() - began < 5
        assert result.status == "error", result
        assert result.reply["content"]["ename"] == "KeyboardInterrupt", result
    server.wait_status(sid, "idle", 5)
    assert server.post(f"/sessions/{sid}/kill").status == 200


# ----------------------------------------------------------- 6: self-exit


def test_kernel_exits_by_itself(server: KernelServer) -> None:
    server.create_and_start("self-exit")
    pid = server.session("self-exit")["process_id"]
    with kernel_client(server.connection_info("self-exit")) as kc:
        kc.execute("import os; os._exit(7)")
        session = server.wait_status("self-exit", "exited", 5)
    assert "process_id" not in session
    assert not alive(pid)


# ------------------------------------------------ 7, 8: startup failures


def test_startup_failure_reports_exit_code_and_output(server: KernelServer) -> None:
    argv = [
        sys.executable,
        "-c",
        "import sys; print('boom out'); print('boom err', file=sys.stderr); sys.exit(3)",
    ]
    server.create("boom", argv=argv)
    res = server.post("/sessions/boom/start")
    assert res.status == 500, res
    assert res.elapsed < 2, res
    body = res.json()
    assert body["exit_code"] == 3, body
    assert "boom out" in body["output"], body
    assert "boom err" in body["output"], body
    assert body["error"]["code"] == "KS-8", body
    server.wait_status("boom", "exited", 2)
    res = server.delete("/sessions/boom")
    assert res.status == 200, res
    res = server.get("/sessions/boom")
    assert res.status == 404
    assert res.json()["code"] == "KS-1"


def port_taken_argv(count_file: str, times: int) -> list[str]:
    """A kernel whose shell port is taken before it binds it, the first ``times`` runs."""
    module = "tests.support.port_taken_kernel"
    return [sys.executable, "-m", module, count_file, str(times), "-f", "{connection_file}"]


def test_a_kernel_that_lost_a_port_race_is_started_again(
    server: KernelServer, workdir: str
) -> None:
    count_file = os.path.join(workdir, f"runs-{uuid.uuid4().hex[:8]}")
    server.create("port-race", argv=port_taken_argv(count_file, times=1))
    res = server.post("/sessions/port-race/start")
    assert res.status == 200, res
    with open(count_file) as f:
        assert f.read() == "2", "one failed start, one good one"
    with kernel_client(server.connection_info("port-race")) as kc:
        assert execute(kc, "print(6 * 7)").stdout == "42\n"
    assert "taken before it could bind it" in server.log()
    server.post("/sessions/port-race/kill")


def test_a_port_race_lost_every_time_is_reported(server: KernelServer, workdir: str) -> None:
    count_file = os.path.join(workdir, f"runs-{uuid.uuid4().hex[:8]}")
    server.create("port-race-lost", argv=port_taken_argv(count_file, times=99))
    res = server.post("/sessions/port-race-lost/start")
    assert res.status == 500, res
    body = res.json()
    assert body["error"]["code"] == "KS-8", body
    assert body["exit_code"] == 1, body
    assert "Address already in use" in body["output"], body
    with open(count_file) as f:
        assert f.read() == "3", "bounded: three attempts"
    server.wait_status("port-race-lost", "exited", 5)


def test_connection_timeout_kills_the_process(server: KernelServer) -> None:
    tag = f"kc-timeout-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-c", f"import time; time.sleep(60)  # {tag}"]
    server.create("hang", argv=argv, connection_timeout=2)
    seen: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not seen:
            seen.extend(processes_with(tag))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    res = server.post("/sessions/hang/start")
    watcher.join(5)
    assert res.status == 500, res
    assert res.elapsed < 3.5, res
    assert error_code(res.json()) == "KS-7", res
    assert seen, "the sleeping process was never seen running"
    assert processes_with(tag) == [], "the process that never connected was not killed"
    assert not any(alive(pid) for pid in seen)


# --------------------------------------------------------- 9: validation


def test_create_rejects_a_missing_required_field(server: KernelServer) -> None:
    body = session_body("missing-field")
    del body["display_name"]
    res = server.put("/sessions", body)
    assert res.status == 400, res
    assert "display_name" in res.text
    assert server.get("/sessions/missing-field").status == 404


def test_create_rejects_an_unknown_kernel_binary(server: KernelServer) -> None:
    res = server.put(
        "/sessions", session_body("no-binary", argv=["definitely-not-a-binary", "-f", "x"])
    )
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-19"
    assert "definitely-not-a-binary" in res.json()["message"]


def test_create_rejects_a_duplicate_id(server: KernelServer) -> None:
    server.create("duplicate")
    res = server.put("/sessions", session_body("duplicate"))
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-0"


def test_create_defaults_and_ignores_unknown_fields(server: KernelServer) -> None:
    body = session_body("defaults", bogus_field=1, another={"x": [1]})
    del body["session_mode"]
    del body["startup_environment"]
    res = server.put("/sessions", body)
    assert res.status == 200, res
    session = server.session("defaults")
    assert session["session_mode"] == "console"
    assert "bogus_field" not in session


def test_create_rejects_zero_connection_timeout(server: KernelServer) -> None:
    res = server.put("/sessions", session_body("zero-timeout", connection_timeout=0))
    assert res.status == 400, res
    assert server.get("/sessions/zero-timeout").status == 404


def test_create_requires_the_token(server: KernelServer) -> None:
    res = server.put(
        "/sessions", session_body("no-token"), headers={"Authorization": "Bearer wrong"}
    )
    assert res.status == 401, res
    assert server.get("/sessions/no-token").status == 404


def test_start_and_delete_of_a_running_session_are_refused(
    server: KernelServer, basic: dict[str, Any]
) -> None:
    pid = server.session("basic")["process_id"]
    res = server.post("/sessions/basic/start")
    assert res.status == 400, res
    res = server.delete("/sessions/basic")
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-2"
    server.remember_children()
    session = server.session("basic")
    assert session["process_id"] == pid
    assert session["status"] == "idle"
    assert processes_with("connection_basic.json") == [pid]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/sessions/nope", None),
        ("DELETE", "/sessions/nope", None),
        ("POST", "/sessions/nope/start", None),
        ("POST", "/sessions/nope/restart", None),
        ("POST", "/sessions/nope/kill", None),
        ("POST", "/sessions/nope/interrupt", None),
        ("GET", "/sessions/nope/connection_info", None),
        (
            "PUT",
            "/sessions/nope/adopt",
            {
                "control_port": 1,
                "shell_port": 2,
                "stdin_port": 3,
                "hb_port": 4,
                "iopub_port": 5,
                "signature_scheme": "hmac-sha256",
                "key": "k",
                "transport": "tcp",
                "ip": "127.0.0.1",
            },
        ),
    ],
)
def test_unknown_session_is_404_ks1(
    server: KernelServer, method: str, path: str, body: Any
) -> None:
    res = server.request(method, path, body)
    assert res.status == 404, res
    assert res.json()["code"] == "KS-1", res


def test_missing_working_directory_falls_back(server: KernelServer, workdir: str) -> None:
    missing = os.path.join(workdir, "does", "not", "exist")
    reply = server.create_and_start("no-wd", working_directory=missing)
    assert reply["status"] == "ok"
    pid = server.session("no-wd")["process_id"]
    assert os.path.realpath(psutil.Process(pid).cwd()) == workdir  # the server's cwd
    assert server.post("/sessions/no-wd/kill").status == 200


# ---------------------------------------------- 10: startup_environment


def test_startup_environments_shell_command_script(server: KernelServer, workdir: str) -> None:
    script = os.path.join(workdir, "startup-script.sh")
    with open(script, "w") as f:
        f.write("export KC_TEST_SCRIPT=from_script\n")
    server.create("env-shell", startup_environment="shell")
    server.create(
        "env-command",
        startup_environment="command",
        startup_environment_arg="export KC_TEST=from_command",
    )
    server.create("env-script", startup_environment="script", startup_environment_arg=script)
    ids = ("env-shell", "env-command", "env-script")
    results = parallel(*((lambda sid=sid: server.post(f"/sessions/{sid}/start")) for sid in ids))
    server.remember_children()
    for res in results:
        assert res.status == 200, f"{res}\n{server.log()[-3000:]}"
        assert res.json()["status"] == "ok"

    # The tracked pid is the kernel itself (the wrapping shell execs it).
    pid = server.session("env-shell")["process_id"]
    assert "ipykernel_launcher" in " ".join(psutil.Process(pid).cmdline())

    assert kernel_view(server, "env-command", ["KC_TEST"])["env"] == {"KC_TEST": "from_command"}
    assert kernel_view(server, "env-script", ["KC_TEST_SCRIPT"])["env"] == {
        "KC_TEST_SCRIPT": "from_script"
    }
    for sid in ids:
        assert server.post(f"/sessions/{sid}/kill").status == 200


def test_startup_script_missing(server: KernelServer, workdir: str) -> None:
    missing = os.path.join(workdir, "no-such-script.sh")
    server.create("env-missing", startup_environment="script", startup_environment_arg=missing)
    res = server.post("/sessions/env-missing/start")
    assert res.status == 500, res
    assert error_code(res.json()) == "KS-5", res
    assert missing in res.json()["error"]["message"], res


def test_startup_command_fails(server: KernelServer) -> None:
    server.create("env-false", startup_environment="command", startup_environment_arg="false")
    res = server.post("/sessions/env-false/start")
    assert res.status == 500, res
    error = res.json()["error"]
    assert error["code"] == "KS-8", res
    # The shell printed the begin marker, then the command failed: Kallichore's
    # details read "Startup command failed" (not "could not be executed").
    assert "Startup command: false" in error["details"], res
    assert error["details"].endswith("Startup command failed"), res
    server.wait_status("env-false", "exited", 2)


# ---------------------------------------------------------------- 11: adopt


def test_adopt_an_external_kernel(
    server: KernelServer, workdir: str, external_procs: list[subprocess.Popen[bytes]]
) -> None:
    server.create("adopted", argv=[])
    kernel, info = start_external_kernel(server, workdir, "adopted", external_procs)

    # Meanwhile: adopting a dead port set fails within the connection timeout.
    server.create("adopt-dead", argv=[], connection_timeout=2)
    dead_info = server.connection_info("adopt-dead")

    def adopt_dead() -> Any:
        return server.put("/sessions/adopt-dead/adopt", dead_info)

    def adopt_live() -> Any:
        return server.put("/sessions/adopted/adopt", info)

    live, dead = parallel(adopt_live, adopt_dead)

    assert dead.status == 500, dead
    assert dead.elapsed < 3.5, dead
    assert error_code(dead.json()) == "KS-7", dead

    assert live.status == 200, live
    assert live.json()["status"] == "ok"
    assert live.json()["language_info"]["name"] == "python"
    session = server.session("adopted")
    assert session["status"] == "idle"
    assert "process_id" not in session

    res = server.post("/sessions/adopted/kill")
    assert res.status == 400, res
    assert error_code(res.json()) == "KS-12"

    res = server.put("/sessions/adopted/adopt", info)
    assert res.status == 400, res

    kernel.kill()
    kernel.wait(5)
    server.wait_status("adopted", "exited", 10)


# ------------------------------------------------------ 12, 13: server exit


def test_twenty_concurrent_starts_then_shutdown(own_server: KernelServer) -> None:
    ids = [f"many-{i:02d}" for i in range(20)]
    for sid in ids:
        own_server.create(sid, connection_timeout=60)
    results = parallel(
        *((lambda sid=sid: own_server.post(f"/sessions/{sid}/start")) for sid in ids),
        timeout=70,
    )
    own_server.remember_children()
    assert [r.status for r in results] == [200] * 20, [r for r in results if r.status != 200]
    ports: list[int] = []
    pids = []
    for sid in ids:
        info = own_server.connection_info(sid)
        ports += [info[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")]
        session = own_server.session(sid)
        assert session["status"] == "idle", session
        pids.append(session["process_id"])
    assert len(set(ports)) == 100
    assert len(set(pids)) == 20

    res = own_server.post("/shutdown")
    assert res.status == 200, res
    assert own_server.wait_exit(15) == 0, own_server.log()[-3000:]
    wait_for(
        lambda: not [p for p in pids if alive(p)], 2, what="every kernel to be gone after shutdown"
    )


def test_sigterm_stops_every_kernel(own_server: KernelServer) -> None:
    ids = ["term-1", "term-2", "term-3"]
    for sid in ids:
        own_server.create(sid)
    parallel(*((lambda sid=sid: own_server.start_session(sid)) for sid in ids))
    pids = [own_server.session(sid)["process_id"] for sid in ids]
    assert all(alive(p) for p in pids)
    assert own_server.proc is not None
    own_server.proc.send_signal(signal.SIGTERM)
    assert own_server.wait_exit(20) == 0, own_server.log()[-3000:]
    wait_for(
        lambda: not [p for p in pids if alive(p)], 2, what="every kernel to be gone after SIGTERM"
    )


# ------------------------------------------------------- 14: paused kernel


def test_paused_kernel_goes_offline_and_comes_back(server: KernelServer) -> None:
    server.create_and_start("paused")
    pid = server.session("paused")["process_id"]
    seen: list[str] = []

    def status_is(wanted: str) -> bool:
        status = server.status_of("paused")
        seen.append(status)
        assert status != "exited", seen
        return status == wanted

    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: status_is("offline"), 8.5, interval=0.2, what="offline")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: status_is("idle"), 5, interval=0.2, what="idle after SIGCONT")
    assert server.session("paused")["process_id"] == pid
    assert server.post("/sessions/paused/kill").status == 200


# ------------------------------------------------------------ 15: busy


def test_busy_status_while_executing(server: KernelServer, basic: dict[str, Any]) -> None:
    with kernel_client(server.connection_info("basic")) as kc:
        msg_id = kc.execute("import time; time.sleep(3)")
        status = wait_for(
            lambda: (s := server.get("/status").json())["busy"] and s, 2, what="/status busy"
        )
        assert server.status_of("basic") == "busy"
        first = status["busy_seconds"]
        later = wait_for(
            lambda: (s := server.get("/status").json())["busy_seconds"] > first and s,
            2.5,
            what="busy_seconds to grow",
        )
        assert later["busy"] is True
        result = collect_execution(kc, msg_id, timeout=5)
        assert result.status == "ok", result
    server.wait_status("basic", "idle", 2)
    assert server.get("/status").json()["busy"] is False


# --------------------------------------------------------------------------
# Regressions found by fuzzing the API (schemathesis and by hand).


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"session_id": ""}, "session_id must not be empty"),
        ({"session_id": "a/b"}, "session_id must not contain"),
        ({"session_id": "a\u0001b"}, "session_id must not contain"),
        ({"session_id": "x" * 201}, "longer than 200 characters"),
        ({"argv": {"/bin/true": 1}}, "expected a JSON array @ $.argv"),
        ({"argv": "/bin/true"}, "expected a JSON array @ $.argv"),
        ({"argv": [sys.executable, "a\u0000b"]}, "argv[1] must not contain NUL"),
        ({"env": [{"action": "replace", "name": "A=B", "value": "x"}]}, "env[0].name"),
        ({"env": [{"action": "replace", "name": "", "value": "x"}]}, "env[0].name"),
        ({"env": [{"action": "replace", "name": "A", "value": "a\u0000"}]}, "env[0].value"),
        ({"env": {}}, "expected a JSON array @ $.env"),
    ],
)
def test_create_rejects_unusable_values(
    server: KernelServer, overrides: dict[str, Any], message: str
) -> None:
    body = session_body("fuzz-regression")
    body.update(overrides)
    res = server.put("/sessions", body)
    assert res.status == 400, res
    assert message in res.json()["message"]
    assert server.get("/sessions/fuzz-regression").status == 404


def test_restart_rejects_unusable_env(server: KernelServer) -> None:
    server.create("restart-env-check", argv=[])
    res = server.post(
        "/sessions/restart-env-check/restart",
        {"env": [{"action": "replace", "name": "A=B", "value": "x"}]},
    )
    assert res.status == 400, res
    assert "env[0].name" in res.json()["message"]


def test_a_client_that_gives_up_does_not_kill_a_starting_kernel(server: KernelServer) -> None:
    """The kernel belongs to the session, not to the HTTP request that started it."""
    server.create("impatient")
    with pytest.raises(TimeoutError):
        server.request("POST", "/sessions/impatient/start", timeout=0.05)
    session = server.wait_status("impatient", "idle", timeout=30)
    assert session.get("process_id")
    assert server.post("/sessions/impatient/kill").status == 200


def test_restart_while_starting_is_refused_and_the_start_completes(
    server: KernelServer,
) -> None:
    server.create("restart-during-start")
    results: dict[str, Any] = {}

    def start() -> None:
        results["start"] = server.post("/sessions/restart-during-start/start")

    thread = threading.Thread(target=start)
    thread.start()
    try:
        wait_for(
            lambda: server.status_of("restart-during-start") == "starting",
            timeout=10,
            what="the session to be starting",
        )
        res = server.post("/sessions/restart-during-start/restart")
        assert res.status == 400, res
        assert res.json()["code"] == "KS-13"
    finally:
        thread.join(timeout=40)
    assert results["start"].status == 200, results["start"]
    assert server.status_of("restart-during-start") == "idle"
    assert server.post("/sessions/restart-during-start/kill").status == 200
