"""Flags from the command line, the environment and a TOML file (kallichore.settings).

Pure tests: the real ``kcserver`` and ``kcclient`` parsers, an environment
given as a dict, config files in ``tmp_path``. Process-level checks live in
tests/integration/test_settings_cli.py.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from kallichore.cli import CLIENT_SECTION, build_parser
from kallichore.client.cli import build_parser as client_parser
from kallichore.settings import LayeredArgs, parse_layered


def server(argv: list[str], env: dict[str, str] | None = None) -> LayeredArgs:
    """Parse like ``kcserver``, with no config file unless the test names one."""
    environ = {"JUPYTER_NO_CONFIG": "1", **(env or {})}
    return parse_layered(build_parser(), argv, reserved=(CLIENT_SECTION,), environ=environ)


def client(argv: list[str], env: dict[str, str] | None = None) -> LayeredArgs:
    environ = {"JUPYTER_NO_CONFIG": "1", **(env or {})}
    return parse_layered(client_parser("kcclient"), argv, section=("client",), environ=environ)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kallichore.toml"
    path.write_text(text)
    return str(path)


def error_of(capsys: pytest.CaptureFixture[str], call: object) -> str:
    """Run ``call`` (a thunk), expect exit 2, return the one stderr line."""
    assert callable(call)
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- precedence


def test_precedence_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    path = write(tmp_path, "idle_shutdown_hours = 3\nresource_sample_interval = 250\n")
    env = {"KALLICHORE_CONFIG": path, "KALLICHORE_IDLE_SHUTDOWN_HOURS": "2"}
    parsed = server(["--port", "0", "--api-version", "9.9.9"], env)
    args = parsed.namespace
    assert args.api_version == "9.9.9"  # flag
    assert args.idle_shutdown_hours == 2  # environment beats file
    assert args.resource_sample_interval == 250  # file beats default
    assert args.max_message_size == 64 * 1024 * 1024  # default
    assert str(parsed.source("api_version")) == "flag --api-version"
    assert str(parsed.source("idle_shutdown_hours")) == (
        "environment variable KALLICHORE_IDLE_SHUTDOWN_HOURS"
    )
    assert str(parsed.source("resource_sample_interval")) == f"config file {path}"
    assert parsed.source("max_message_size").kind == "default"
    assert parsed.config_file == path

    flag_wins = server(["--idle-shutdown-hours", "7"], env).namespace
    assert flag_wins.idle_shutdown_hours == 7


def test_values_are_converted_like_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = "8"\nclient_buffer_size = 65536\n')
    args = server([], {"KALLICHORE_CONFIG": path}).namespace
    assert args.port == 8
    assert args.client_buffer_size == 65536


def test_empty_environment_variable_counts_as_unset() -> None:
    assert server([], {"KALLICHORE_PORT": ""}).namespace.port == 0


def test_a_flag_added_the_usual_way_is_layered_without_more_code(tmp_path: Path) -> None:
    parser = build_parser()
    parser.add_argument("--some-format", choices=["text", "json"], default="text")
    parser.add_argument("--some-new-switch", action="store_true")
    parser.add_argument("--tag", action="append", default=[])
    path = write(tmp_path, 'tag = ["a", "b c"]\n')
    env = {
        "JUPYTER_NO_CONFIG": "1",
        "KALLICHORE_CONFIG": path,
        "KALLICHORE_SOME_FORMAT": "json",
        "KALLICHORE_SOME_NEW_SWITCH": "yes",
    }
    args = parse_layered(parser, [], environ=env).namespace
    assert args.some_format == "json"
    assert args.some_new_switch is True
    assert args.tag == ["a", "b c"]


def test_client_sections_and_subcommands(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "port = 5  # the server's, ignored by the client\n"
        '[client]\njson = true\n[client.start]\nkernel = "ir"\n',
    )
    env = {"KALLICHORE_CONFIG": path, "KALLICHORE_CLIENT_START_CWD": "/srv"}
    parsed = client(["--url", "http://127.0.0.1:1", "start"], env)
    args = parsed.namespace
    assert (args.json, args.kernel, args.cwd) == (True, "ir", "/srv")
    assert parsed.settings["kernel"].env == "KALLICHORE_CLIENT_START_KERNEL"
    # And the server ignores the client's table.
    assert server([], {"KALLICHORE_CONFIG": path}).namespace.port == 5


def test_required_option_may_come_from_the_environment() -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--name", required=True)
    env = {"JUPYTER_NO_CONFIG": "1", "KALLICHORE_NAME": "x"}
    assert parse_layered(parser, [], environ=env).namespace.name == "x"


def test_count_and_fixed_arity_options(capsys: pytest.CaptureFixture[str]) -> None:
    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="p")
        p.add_argument("-v", "--verbose", action="count", default=0)
        p.add_argument("--size", nargs=2, type=int)
        return p

    env = {"JUPYTER_NO_CONFIG": "1", "KALLICHORE_VERBOSE": "2", "KALLICHORE_SIZE": "3 4"}
    args = parse_layered(parser(), [], environ=env).namespace
    assert (args.verbose, args.size) == (2, [3, 4])
    env["KALLICHORE_SIZE"] = "3"
    err = error_of(capsys, lambda: parse_layered(parser(), [], environ=env))
    assert "expected 2 values, got 1" in err


# --------------------------------------------------------------------------- names


def test_environment_names_of_server_and_client_never_collide() -> None:
    """One variable must never mean two things (say, the server's token *file*
    and the client's token): the client lives under KALLICHORE_CLIENT_*."""
    names: dict[str, str] = {}
    for parsed, program in ((server([]), "kcserver"), (client(["list"]), "kcclient")):
        for setting in parsed.settings.values():
            owner = f"{program} {setting.flag}"
            assert names.setdefault(setting.env, owner) == owner, setting.env
    assert names["KALLICHORE_IDLE_SHUTDOWN_HOURS"] == "kcserver --idle-shutdown-hours"
    assert names["KALLICHORE_TOKEN"] == "kcserver --token"
    assert names["KALLICHORE_CLIENT_TOKEN"] == "kcclient --token"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"KALLICHORE_PORT": "abc"}, ["KALLICHORE_PORT='abc'", "--port", "not a whole number"]),
        ({"KALLICHORE_PORT": "70000"}, ["KALLICHORE_PORT", "not in 0..=65535"]),
        ({"KALLICHORE_MAX_MESSAGE_SIZE": "1"}, ["KALLICHORE_MAX_MESSAGE_SIZE", "bytes"]),
    ],
)
def test_bad_environment_value_names_the_variable(
    env: dict[str, str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = error_of(capsys, lambda: server([], env))
    assert err.startswith("kcserver: error: environment variable ")
    for fragment in fragments:
        assert fragment in err


def test_bad_switch_value(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(capsys, lambda: client(["list"], {"KALLICHORE_CLIENT_JSON": "maybe"}))
    assert "KALLICHORE_CLIENT_JSON='maybe'" in err
    assert "expected true or false" in err


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("port = -1\n", ["port = -1", "--port", "not in 0..=65535"]),
        ("port = true\n", ["port = true", "not a boolean"]),
        ("port = [1]\n", ["not an array"]),
        ("prot = 1\n", ["unknown key 'prot'", "did you mean 'port'?"]),
        ("[client]\nurll = 'x'\n", []),  # the server does not judge the client's table
        ("port = \n", ["is not valid TOML"]),
    ],
)
def test_bad_file_names_the_file(
    text: str, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    if not fragments:
        server([], {"KALLICHORE_CONFIG": path})
        return
    err = error_of(capsys, lambda: server([], {"KALLICHORE_CONFIG": path}))
    assert f"config file {path}" in err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[client]\nurll = 'x'\n", "unknown key 'urll' in [client]; did you mean 'url'?"),
        ("[client.start]\nkernal = 'x'\n", "unknown key 'kernal' in [client.start]"),
        ("[client.nope]\nx = 1\n", "unknown key 'nope' in [client]"),
        ("client = 3\n", "[client] must be a table"),
    ],
)
def test_client_checks_its_own_table(
    text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    err = error_of(capsys, lambda: client(["list"], {"KALLICHORE_CONFIG": path}))
    assert fragment in err


def test_missing_named_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.toml")
    err = error_of(capsys, lambda: server(["--config", missing]))
    assert f"config file {missing} does not exist" in err
    err = error_of(capsys, lambda: server([], {"KALLICHORE_CONFIG": missing}))
    assert "does not exist" in err


def test_default_file_in_the_jupyter_config_dir(tmp_path: Path) -> None:
    (tmp_path / "kallichore.toml").write_text("idle_shutdown_hours = 4\n")
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path)}
    parsed = parse_layered(build_parser(), [], reserved=(CLIENT_SECTION,), environ=env)
    assert parsed.namespace.idle_shutdown_hours == 4
    assert parsed.config_file == str(tmp_path / "kallichore.toml")
    # --config none and JUPYTER_NO_CONFIG both turn it off; a missing default is fine.
    none = parse_layered(build_parser(), ["--config", "none"], environ=env)
    assert none.namespace.idle_shutdown_hours is None
    env["JUPYTER_NO_CONFIG"] = "1"
    assert parse_layered(build_parser(), [], environ=env).config_file is None
    empty = {"JUPYTER_CONFIG_DIR": str(tmp_path / "empty")}
    assert parse_layered(build_parser(), [], environ=empty).config_file is None


# --------------------------------------------------------------------------- exclusive options


def test_a_flag_hides_an_exclusive_sibling_from_lower_layers() -> None:
    args = client(["--socket", "/s", "list"], {"KALLICHORE_CLIENT_URL": "http://h:1"}).namespace
    assert (args.socket, args.url) == ("/s", None)


def test_environment_hides_an_exclusive_sibling_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[client]\nconnection_file = '/c.json'\n")
    env = {"KALLICHORE_CONFIG": path, "KALLICHORE_CLIENT_URL": "http://h:1"}
    parsed = client(["list"], env)
    assert (parsed.namespace.url, parsed.namespace.connection_file) == ("http://h:1", None)
    assert parsed.source("connection_file").kind == "default"


def test_exclusive_siblings_in_one_layer_are_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"KALLICHORE_CLIENT_URL": "http://h:1", "KALLICHORE_CLIENT_SOCKET": "/s"}
    err = error_of(capsys, lambda: client(["list"], env))
    assert "KALLICHORE_CLIENT_URL and environment variable KALLICHORE_CLIENT_SOCKET" in err


# --------------------------------------------------------------------------- --show-config


def test_show_config_is_toml_with_sources_and_a_masked_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "idle_shutdown_hours = 3\n")
    env = {"KALLICHORE_CONFIG": path, "KALLICHORE_TOKEN": "/run/secret-token-file"}
    with pytest.raises(SystemExit) as exc:
        server(["--show-config", "--port", "0", "--transport", "tcp"], env)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "secret-token-file" not in out
    assert 'token = "********"  # environment variable KALLICHORE_TOKEN (masked)' in out
    assert "# environment variable KALLICHORE_TOKEN" in out
    assert f"idle_shutdown_hours = 3  # config file {path}" in out
    assert "port = 0  # flag --port" in out
    assert "# log_file is not set  # default" in out
    shown = tomllib.loads(out)  # pastes straight into a config file
    assert shown["idle_shutdown_hours"] == 3
    assert shown["transport"] == "tcp"


def test_show_config_needs_no_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client(["--show-config"], {"KALLICHORE_CLIENT_TOKEN": "s3cret"})
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "[client.start]" in out
    assert tomllib.loads(out)["client"]["start"]["kernel"] == "python3"


def test_token_none_is_not_masked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        server(["--show-config", "--token", "none"])
    assert 'token = "none"  # flag --token' in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_survive_bad_settings(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        server([flag], {"KALLICHORE_PORT": "not a port"})
    assert exc.value.code == 0
    assert "kcserver" in capsys.readouterr().out


def test_a_malformed_config_flag_is_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(capsys, lambda: server(["--config"]))
    assert err.count("error:") == 1
    assert "argument --config: expected one argument" in err


def test_a_misspelt_variable_is_pointed_out(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "KALLICHORE_IDLE_SHUTDOWN_HOUR": "1",  # near miss: warned
        "KALLICHORE_CLIENT_JSN": "1",  # the client's business, not the server's
        "KALLICHORE_SOMETHING_ELSE": "x",  # not close to anything: quiet
    }
    assert server([], env).namespace.idle_shutdown_hours is None
    err = capsys.readouterr().err
    assert err == (
        "kcserver: warning: ignoring KALLICHORE_IDLE_SHUTDOWN_HOUR, which is not a setting; "
        "did you mean KALLICHORE_IDLE_SHUTDOWN_HOURS?\n"
    )
    client(["list"], env)
    assert "KALLICHORE_CLIENT_JSN" in capsys.readouterr().err


def test_help_explains_the_layers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        client(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "KALLICHORE_CLIENT_<NAME>" in out
    assert "KALLICHORE_CLIENT_<COMMAND>_<NAME> and [client.<command>]" in out
    assert "--config FILE" in out


def test_a_legacy_variable_sits_below_the_file(tmp_path: Path) -> None:
    def parse(env: dict[str, str]) -> LayeredArgs:
        environ = {"JUPYTER_NO_CONFIG": "1", **env}
        return parse_layered(build_parser(), [], legacy={"log_level": "RUST_LOG"}, environ=environ)

    parsed = parse({"RUST_LOG": "debug"})
    assert parsed.namespace.log_level == "debug"
    assert str(parsed.source("log_level")) == "environment variable RUST_LOG"
    path = write(tmp_path, 'log_level = "warn"\n')
    assert parse({"RUST_LOG": "debug", "KALLICHORE_CONFIG": path}).namespace.log_level == "warn"
    both = {"RUST_LOG": "debug", "KALLICHORE_LOG_LEVEL": "error"}
    assert parse(both).namespace.log_level == "error"


def test_client_connection_file_variable_yields_to_an_explicit_address() -> None:
    def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
        environ = {"JUPYTER_NO_CONFIG": "1", **env}
        legacy = {"connection_file": "KALLICHORE_CONNECTION_FILE"}
        parser = client_parser("kcclient")
        return parse_layered(
            parser, argv, section=("client",), legacy=legacy, environ=environ
        ).namespace

    shared = {"KALLICHORE_CONNECTION_FILE": "/run/kc.json"}
    assert parse(["list"], shared).connection_file == "/run/kc.json"
    assert parse(["--url", "http://h:1", "list"], shared).connection_file is None
    with_url = {**shared, "KALLICHORE_CLIENT_URL": "http://h:1"}
    assert parse(["list"], with_url).connection_file is None
