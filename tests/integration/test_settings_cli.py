"""Settings from the environment and a config file, as real processes see them.

The server and the client run as subprocesses (``python -m kallichore serve``
/ ``client``) with ``KALLICHORE_*`` variables and a TOML file instead of
flags; the server is checked over real HTTP. The layering rules themselves
are unit-tested in tests/unit/test_settings.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.server_process import (
    Endpoint,
    ServerFactory,
    run_cli,
)

pytestmark = pytest.mark.integration

TOKEN = "from_a_standing_token_file"


def run_client(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, subcommand="client")


def test_server_and_client_configured_without_flags(factory: ServerFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "kallichore.toml"
    config.write_text(
        "idle_shutdown_hours = 5\n"
        "resource_sample_interval = 250\n"
        f"token = {json.dumps(str(token_file))}\n"
        "[client]\n"
        "json = true\n"
    )
    connection_file = tmp_path / "connection.json"
    env: dict[str, str | None] = {
        "KALLICHORE_CONFIG": str(config),
        "KALLICHORE_TRANSPORT": "tcp",
        "KALLICHORE_CONNECTION_FILE": str(connection_file),
    }
    server = factory.start(env=env)
    details = server.read_connection_file(connection_file)
    endpoint = Endpoint.from_details(details)
    assert details["transport"] == "tcp"
    assert details["bearer_token"] == TOKEN
    # A token file named by standing configuration is kept for the next start.
    assert token_file.read_text() == TOKEN + "\n"
    reply = endpoint.request("GET", "/server_configuration")
    assert reply.json() == {"idle_shutdown_hours": 5, "resource_sample_interval_ms": 250}

    # The client finds the same connection file through the shared variable,
    # and takes --json from the [client] table.
    listed = run_client("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    url_env = {
        **env,
        "KALLICHORE_CLIENT_URL": details["base_path"],
        "KALLICHORE_CLIENT_TOKEN": TOKEN,
    }
    status = run_client("status", env=url_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["server_id"] == details["server_id"]


def test_show_config_masks_the_token(tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        "KALLICHORE_TOKEN": str(tmp_path / "secret-token-path"),
        "KALLICHORE_IDLE_SHUTDOWN_HOURS": "2",
    }
    result = run_cli("--show-config", "--port", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert "secret-token-path" not in result.stdout
    assert "idle_shutdown_hours = 2  # environment variable KALLICHORE_IDLE_SHUTDOWN_HOURS" in (
        result.stdout
    )
    assert "port = 0  # flag --port" in result.stdout
    assert "Listening" not in result.stdout  # it printed and exited, serving nothing
    client = run_client("--show-config", env={"KALLICHORE_CLIENT_TOKEN": "abc123secret"})
    assert client.returncode == 0, client.stderr
    assert "abc123secret" not in client.stdout
    assert "[client]" in client.stdout


@pytest.mark.parametrize(
    ("env", "config", "fragment"),
    [
        ({"KALLICHORE_PORT": "eighty"}, None, "environment variable KALLICHORE_PORT='eighty'"),
        ({"KALLICHORE_LOG_LEVEL": "loud"}, None, "KALLICHORE_LOG_LEVEL"),
        ({}, "idle_shutdown_hour = 1\n", "did you mean 'idle_shutdown_hours'?"),
        ({}, "port = 'x'\n", 'port = "x": bad value for --port'),
    ],
)
def test_bad_settings_exit_2_naming_the_source(
    env: dict[str, str | None], config: str | None, fragment: str, tmp_path: Path
) -> None:
    if config is not None:
        path = tmp_path / "kallichore.toml"
        path.write_text(config)
        env = {**env, "KALLICHORE_CONFIG": str(path)}
    result = run_cli(env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_semantic_error_says_where_the_value_came_from() -> None:
    result = run_cli("--transport", "socket", env={"KALLICHORE_PORT": "8"})
    assert result.returncode == 1
    assert "--port came from environment variable KALLICHORE_PORT" in result.stderr
