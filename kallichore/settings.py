"""Every flag of any argparse parser, also from the environment and a TOML file.

One mechanism for ``kcserver`` and ``kcclient`` alike, and for any flag
added to either the usual argparse way: nothing here names a flag. The
parser is walked (subcommands included) and each option gets two more
spellings:

=========================  ================================  =====================
flag                       environment variable              TOML key
=========================  ================================  =====================
``--idle-shutdown-hours``  ``KALLICHORE_IDLE_SHUTDOWN_HOURS``  ``idle_shutdown_hours``
``kcclient --url``         ``KALLICHORE_CLIENT_URL``           ``url`` in ``[client]``
``kcclient start --cwd``   ``KALLICHORE_CLIENT_START_CWD``     ``cwd`` in ``[client.start]``
=========================  ================================  =====================

The name is the option's first long spelling with dashes turned into
underscores; the environment variable is ``KALLICHORE_`` followed by the
program's section path, the subcommand path and that name, upper-cased. The
server's section is the file's top level; the client's is ``[client]``, so
one file can configure both.

Precedence, per setting: the command line, then the environment, then the
file, then the parser's default. Values are converted and checked exactly as
argparse would convert the flag (its ``type`` and ``choices``); a bad value
names its source. Switches (``store_true`` and friends) take ``true``/``false``
(TOML booleans; ``1/0``, ``true/false``, ``yes/no``, ``on/off`` in the
environment); list-valued options take a TOML array or a shell-quoted string.
An empty environment variable counts as unset.

Which file (:func:`config_file_path`): ``--config FILE``, else
``$KALLICHORE_CONFIG``, else ``kallichore.toml`` in jupyter_core's config
directory (``~/.jupyter`` or ``$JUPYTER_CONFIG_DIR``) if it exists.
``--config none`` reads no file. A named file that is missing is an error; a
key the program does not know is an error (with a suggestion).

Mutually exclusive options (argparse's ``add_mutually_exclusive_group``)
stay exclusive across layers: a flag given on the command line hides the
other members' values from lower layers, and a higher layer hides a lower
one's; two members set in the same layer are an error.

``--show-config`` prints the effective settings as TOML, each with where it
came from (secrets masked), and exits.

This module is pure: no trio, no sockets.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import attrs

from kallichore.flag_values import convert

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "LayeredArgs",
    "Setting",
    "SettingsError",
    "Source",
    "config_file_path",
    "parse_layered",
]

#: Prefix of every environment variable this module reads.
ENV_PREFIX = "KALLICHORE"
#: Names the config file when ``--config`` is not given.
CONFIG_ENV = "KALLICHORE_CONFIG"
#: The file looked for in jupyter_core's config directory.
CONFIG_FILE_NAME = "kallichore.toml"
#: ``--config none``: read no file at all.
NO_CONFIG = "none"
#: What ``--show-config`` prints instead of a secret.
MASK = "********"
_SECRET_WORDS = ("token", "password", "secret")
# Layer ranks: a higher rank wins.
# _LEGACY: an older variable a program keeps honouring below the file.
_DEFAULT, _LEGACY, _FILE, _ENV, _FLAG = range(5)


class SettingsError(Exception):
    """A setting from the environment or the config file that cannot be used.

    The message names the source; the CLI prints it and exits with status 2.
    """


@attrs.frozen
class Source:
    """Where a setting's value came from.

    Attributes:
        kind: ``"flag"``, ``"environment"``, ``"file"`` or ``"default"``.
        where: the flag, the variable name or the file path; ``None`` for
            the default.
    """

    kind: str
    where: str | None = None

    def __str__(self) -> str:
        if self.where is None:
            return self.kind
        noun = {"environment": "environment variable", "file": "config file"}
        return f"{noun.get(self.kind, self.kind)} {self.where}"


DEFAULT_SOURCE = Source("default")


@attrs.frozen
class Setting:
    """One option's effective value.

    Attributes:
        section: the table path (``()`` for the top level, ``("client",
            "start")`` for ``[client.start]``).
        key: the TOML key (and the variable name's tail).
        flag: the option's spelling on the command line.
        env: its environment variable.
        dest: the attribute on the parsed namespace.
        value: the effective value.
        source: where it came from.
    """

    section: tuple[str, ...]
    key: str
    flag: str
    env: str
    dest: str
    value: Any
    source: Source

    @property
    def secret(self) -> bool:
        """Whether ``--show-config`` masks the value (a token, say)."""
        return any(word in self.key for word in _SECRET_WORDS)


@attrs.frozen
class LayeredArgs:
    """What :func:`parse_layered` returns.

    Attributes:
        namespace: the parsed arguments, every layer applied.
        settings: every option's effective value and source, by ``dest``
            (for a dest shared by several subcommands, the last one walked).
        config_file: the file that was read, or ``None``.
    """

    namespace: argparse.Namespace
    settings: dict[str, Setting]
    config_file: str | None

    def source(self, dest: str) -> Source:
        """Where ``dest`` came from (the default for an unknown dest)."""
        setting = self.settings.get(dest)
        return setting.source if setting is not None else DEFAULT_SOURCE


@attrs.frozen
class _Option:
    """One layered option of one (sub)parser."""

    action: argparse.Action
    section: tuple[str, ...]
    key: str
    env: str

    @property
    def flag(self) -> str:
        return _long_name(self.action)


def _long_name(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or list(action.option_strings))[0]


def _is_layered(action: argparse.Action) -> bool:
    if not action.option_strings or action.dest in ("config", "show_config"):
        return False
    if isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return False
    # A custom action that takes no value cannot be given a default sensibly.
    return action.nargs != 0 or isinstance(
        action,
        argparse._StoreConstAction | argparse.BooleanOptionalAction | argparse._CountAction,
    )


def _env_name(section: Sequence[str], key: str) -> str:
    return "_".join([ENV_PREFIX, *section, key]).replace("-", "_").upper()


def _walk(parser: argparse.ArgumentParser, section: tuple[str, ...]) -> Iterator[_Option]:
    """Every layered option of ``parser`` and its subcommands, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    yield from _walk(sub, (*section, name))
        elif _is_layered(action):
            key = _long_name(action).lstrip("-").replace("-", "_")
            yield _Option(action, section, key, _env_name(section, key))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


# --------------------------------------------------------------------------- the file


def config_file_path(
    flag: str | None, environ: Mapping[str, str]
) -> tuple[str | None, Source, bool]:
    """Which config file to read: ``(path or None, why, must exist)``."""
    if flag is not None:
        return (None if flag == NO_CONFIG else flag), Source("flag", "--config"), True
    named = environ.get(CONFIG_ENV)
    if named:
        return (None if named == NO_CONFIG else named), Source("environment", CONFIG_ENV), True
    if environ.get("JUPYTER_NO_CONFIG"):
        return None, DEFAULT_SOURCE, False
    directory = environ.get("JUPYTER_CONFIG_DIR")
    if not directory:
        # jupyter_core's rules (~/.jupyter, or the platform directory under
        # JUPYTER_PLATFORM_DIRS); imported here, as only this case needs it.
        from jupyter_core.paths import jupyter_config_dir

        directory = jupyter_config_dir()
    return os.path.join(directory, CONFIG_FILE_NAME), DEFAULT_SOURCE, False


def _load_file(path: str, must_exist: bool) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if must_exist:
            raise SettingsError(f"config file {path} does not exist") from None
        return None
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _table_name(section: Sequence[str]) -> str:
    return f"[{'.'.join(section)}]" if section else "the top level"


def _section_table(document: Mapping[str, Any], section: Sequence[str], path: str) -> Any:
    table: Any = document
    for i, name in enumerate(section):
        table = table.get(name, {})
        if not isinstance(table, dict):
            where = _table_name(section[: i + 1])
            raise SettingsError(f"config file {path}: {where} must be a table")
    return table


def _check_keys(
    table: Mapping[str, Any],
    parser: argparse.ArgumentParser,
    section: tuple[str, ...],
    options: Sequence[_Option],
    *,
    path: str,
    reserved: Collection[str] = (),
) -> None:
    """Refuse keys no option or subcommand of ``parser`` owns, recursively."""
    keys = {o.key for o in options if o.section == section}
    subcommands = _subcommands(parser)
    for key, value in table.items():
        if key in keys or key in reserved:
            continue
        if key in subcommands and isinstance(value, dict):
            _check_keys(value, subcommands[key], (*section, key), options, path=path)
            continue
        known = sorted(keys | set(subcommands))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SettingsError(
            f"config file {path}: unknown key {key!r} in {_table_name(section)}{hint}"
        )


def _file_value(document: Mapping[str, Any], option: _Option) -> Any:
    table: Any = document
    for name in option.section:
        table = table.get(name) if isinstance(table, dict) else None
    return table.get(option.key) if isinstance(table, dict) else None


# --------------------------------------------------------------------------- layering


@attrs.define
class _Layered:
    value: Any
    source: Source
    rank: int


def _raw_value(
    option: _Option,
    environ: Mapping[str, str],
    document: Mapping[str, Any] | None,
    path: str | None,
    legacy: Mapping[str, str],
) -> tuple[Any, Source, int] | None:
    """The highest layer's raw value for ``option``, if any layer has one."""
    text = environ.get(option.env)
    if text:
        return text, Source("environment", option.env), _ENV
    raw = _file_value(document, option) if document is not None else None
    if raw is not None:
        return raw, Source("file", path), _FILE
    old_name = legacy.get(option.action.dest)
    if old_name and environ.get(old_name):
        return environ[old_name], Source("environment", old_name), _LEGACY
    return None


def _layer(
    options: Sequence[_Option],
    environ: Mapping[str, str],
    document: Mapping[str, Any] | None,
    path: str | None,
    legacy: Mapping[str, str],
) -> dict[int, _Layered]:
    """The environment or file value of each option that has one, by ``id(action)``."""
    found: dict[int, _Layered] = {}
    for option in options:
        layer = _raw_value(option, environ, document, path, legacy)
        if layer is None:
            continue
        raw, source, rank = layer
        from_env = source.kind == "environment"
        try:
            value = convert(option.action, raw, from_env)
        except ValueError as exc:
            if from_env:
                where = f"environment variable {source.where}={raw!r}"
            else:
                key = ".".join([*option.section, option.key])
                where = f"config file {path}: {key} = {_toml_value(raw)}"
            raise SettingsError(f"{where}: bad value for {option.flag}: {exc}") from None
        found[id(option.action)] = _Layered(value, source, rank)
    return found


def _read_file(
    parser: argparse.ArgumentParser,
    section: tuple[str, ...],
    reserved: Collection[str],
    options: Sequence[_Option],
    config_flag: str | None,
    environ: Mapping[str, str],
) -> tuple[str | None, dict[str, Any] | None]:
    """The config file's path and checked contents (``None`` when there is none)."""
    path, _, must_exist = config_file_path(config_flag, environ)
    document = _load_file(path, must_exist) if path is not None else None
    if document is not None and path is not None:
        table = _section_table(document, section, path)
        _check_keys(table, parser, section, options, path=path, reserved=reserved)
    return path, document


def _effective(
    options: Sequence[_Option],
    namespace: argparse.Namespace,
    given: Collection[str],
    layered: Mapping[int, _Layered],
    originals: Mapping[int, Any],
) -> dict[str, Setting]:
    """Each option's value and source, after parsing."""
    settings: dict[str, Setting] = {}
    for option in options:
        action = option.action
        found = layered.get(id(action))
        if action.dest in given:
            value, source = getattr(namespace, action.dest), Source("flag", option.flag)
        elif found is not None:
            value, source = found.value, found.source
        else:
            value, source = originals[id(action)], DEFAULT_SOURCE
        settings[action.dest] = Setting(
            option.section, option.key, option.flag, option.env, action.dest, value, source
        )
    return settings


def _warn_misspelt_variables(
    options: Sequence[_Option],
    environ: Mapping[str, str],
    section: tuple[str, ...],
    reserved: Collection[str],
    prog: str,
) -> None:
    """A warning for a variable that looks like a misspelt setting.

    Only near misses are reported: other ``KALLICHORE_*`` variables may
    belong to other programs, and the other programs' sections are skipped.
    """
    known = [o.env for o in options]
    prefix = _env_name(section, "")
    foreign = tuple(_env_name((*section, name), "") for name in reserved)
    for name in environ:
        if not name.startswith(prefix) or name.startswith(foreign) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            print(
                f"{prog}: warning: ignoring {name}, which is not a setting; "
                f"did you mean {close[0]}?",
                file=sys.stderr,
            )


def _exclusive_groups(parser: argparse.ArgumentParser) -> Iterator[list[argparse.Action]]:
    for group in parser._mutually_exclusive_groups:
        yield list(group._group_actions)
    for sub in {id(p): p for p in _subcommands(parser).values()}.values():
        yield from _exclusive_groups(sub)


def _keep_exclusive(
    parser: argparse.ArgumentParser,
    layered: dict[int, _Layered],
    given: Collection[str],
) -> None:
    """Drop lower-layer values that a higher layer's exclusive sibling overrides.

    Raises:
        SettingsError: two members of one group set in the same layer.
    """
    for members in _exclusive_groups(parser):
        ranks = {
            id(a): (_FLAG if a.dest in given else layered[id(a)].rank)
            for a in members
            if a.dest in given or id(a) in layered
        }
        if not ranks:
            continue
        best = max(ranks.values())
        winners = [a for a in members if ranks.get(id(a)) == best]
        if best != _FLAG and len(winners) > 1:
            names = " and ".join(str(layered[id(a)].source) for a in winners)
            raise SettingsError(f"{names} cannot both be set (the options exclude each other)")
        for action in members:
            if ranks.get(id(action), best) < best:
                del layered[id(action)]


def _given_on_command_line(
    parser: argparse.ArgumentParser, options: Sequence[_Option], argv: Sequence[str]
) -> set[str]:
    """The dests the command line itself set (a second parse, defaults hidden)."""
    saved = [(o.action, o.action.default) for o in options]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(namespace))


def _add_config_arguments(parser: argparse.ArgumentParser, section: tuple[str, ...]) -> None:
    """Add ``--config`` and ``--show-config``, and say in ``--help`` how layering works."""
    table = f" in [{'.'.join(section)}]" if section else ""
    note = (
        f"Every option can also be set by an environment variable, {_env_name(section, '<NAME>')}, "
        f"or as <name> in the config file{table}, where <name> is the long option "
        "without '--' and with '_' for '-'. The command line wins, then the "
        "environment, then the file."
    )
    if _subcommands(parser):
        dotted = ".".join([*section, "<command>"])
        note += f" A command's options: {_env_name(section, '<COMMAND>_<NAME>')} and [{dotted}]."
    parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"read settings from this TOML file ('{NO_CONFIG}': none; default "
        f"${CONFIG_ENV}, else {CONFIG_FILE_NAME} in the Jupyter config directory)",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print the effective settings and where each came from, then exit",
    )


class _Malformed(Exception):
    pass


class _Scanner(argparse.ArgumentParser):
    """Finds two options in any command line, silently (the real parse reports)."""

    def error(self, message: str) -> NoReturn:
        raise _Malformed(message)


def _prescan(argv: Sequence[str]) -> tuple[str | None, bool, bool]:
    """``--config``, ``--show-config`` and whether help or version is asked for."""
    scanner = _Scanner(add_help=False)
    scanner.add_argument("--config")
    scanner.add_argument("--show-config", action="store_true")
    for flags in (("-h", "--help"), ("-V", "--version")):
        scanner.add_argument(*flags, action="store_true", dest="informational")
    try:
        known, _ = scanner.parse_known_args(argv)
    except _Malformed:
        return None, False, False
    return known.config, bool(known.show_config), bool(known.informational)


def _exit(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def parse_layered(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    section: tuple[str, ...] = (),
    reserved: Collection[str] = (),
    legacy: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LayeredArgs:
    """Parse ``argv`` with defaults layered from the environment and a TOML file.

    Adds ``--config`` and ``--show-config`` to ``parser``. With
    ``--show-config`` the effective settings are printed and the process
    exits 0 (a required subcommand may then be left out).

    Args:
        parser: any parser; its options (and its subcommands') are layered.
        argv: the arguments (default ``sys.argv[1:]``).
        section: this program's table in the file and infix of its
            variables (``("client",)``: ``[client]``, ``KALLICHORE_CLIENT_*``).
        reserved: top-level tables other programs own, ignored here.
        legacy: older environment variables still honoured, by dest, below
            the file (``{"log_level": "RUST_LOG"}``).
        environ: the environment (default ``os.environ``).

    **Errors:** a bad value, an unknown key, or an unreadable or invalid
    file prints ``<prog>: error: <message naming the source>`` and exits 2,
    as a bad flag does; never a traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    legacy = legacy or {}
    _add_config_arguments(parser, section)
    config_flag, show, informational = _prescan(args)
    options = list(_walk(parser, section))
    try:
        path, document = _read_file(parser, section, reserved, options, config_flag, env)
        layered = _layer(options, env, document, path, legacy)
    except SettingsError as exc:
        if not informational:
            _exit(parser, str(exc))
        # --help and --version work whatever the settings say.
        path, document, layered = None, None, {}
    _warn_misspelt_variables(options, env, section, reserved, parser.prog)
    originals = {id(o.action): o.action.default for o in options}
    for option in options:
        found = layered.get(id(option.action))
        if found is not None:
            option.action.default = found.value
            option.action.required = False
    if show:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.required = False
    namespace = parser.parse_args(args)
    given = _given_on_command_line(parser, options, args)
    applied = set(layered)
    try:
        _keep_exclusive(parser, layered, given)
    except SettingsError as exc:
        _exit(parser, str(exc))
    for option in options:
        dropped = id(option.action) in applied and id(option.action) not in layered
        if dropped and option.action.dest not in given:  # for a higher-layer sibling
            setattr(namespace, option.action.dest, originals[id(option.action)])
    settings = _effective(options, namespace, given, layered, originals)
    loaded = path if document is not None else None
    if show:
        print(render_settings(parser.prog, list(settings.values()), loaded, config_flag, env))
        parser.exit(0)
    return LayeredArgs(namespace, settings, loaded)


# --------------------------------------------------------------------------- --show-config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_settings(
    prog: str,
    settings: Sequence[Setting],
    config_file: str | None,
    config_flag: str | None,
    environ: Mapping[str, str],
) -> str:
    """``--show-config``'s output: TOML, one line per setting with its source.

    Unset values are commented out; secrets are masked (except ``"none"``).
    """
    path, why, _ = config_file_path(config_flag, environ)
    if config_file is not None:
        file_line = f"# config file: {config_file} ({why})"
    elif path is not None:
        file_line = f"# config file: none ({path} does not exist)"
    else:
        file_line = f"# config file: none ({why})"
    lines = [
        f"# {prog}: effective settings (command line > environment > file > default)",
        file_line,
    ]
    current: tuple[str, ...] | None = None
    for setting in sorted(settings, key=lambda s: s.section):
        if setting.section != current:
            current = setting.section
            if current:
                lines += ["", f"[{'.'.join(current)}]"]
        value = setting.value
        comment = f"  # {setting.source}"
        if value is None:
            lines.append(f"# {setting.key} is not set{comment}")
        elif setting.secret and value != NO_CONFIG:
            lines.append(f"{setting.key} = {json.dumps(MASK)}{comment} (masked)")
        else:
            lines.append(f"{setting.key} = {_toml_value(value)}{comment}")
    return "\n".join(lines)
