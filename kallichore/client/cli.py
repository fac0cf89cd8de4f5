"""``kcclient`` / ``python -m kallichore client``: drive a server from the shell.

Every failure is one line on stderr, ``kcclient: <message>``, and exit code
1 (an errored execution also exits 1, after printing its traceback); never a
Python traceback. ``--json`` prints one JSON document on stdout instead of
text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import trio
from jupyter_core.paths import jupyter_runtime_dir

from kallichore import version_line
from kallichore.client._errors import KallichoreClientError, unwrap_group
from kallichore.client._execute import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, execute_command
from kallichore.client._kernelspec import find_kernelspec, list_kernelspecs
from kallichore.client._output import OutputClosedError, silence_stdout
from kallichore.client._rest import KallichoreClient, open_client, read_connection_file
from kallichore.protocol.converter import unstructure
from kallichore.settings import parse_layered

__all__ = ["main"]

#: Environment variable naming a connection file when no address is given.
CONNECTION_FILE_ENV = "KALLICHORE_CONNECTION_FILE"
#: Spinner frames and period for the start progress indicator.
SPINNER = "|/-\\"
SPINNER_PERIOD = 0.1  # seconds
#: Bound on removing the session a failed or abandoned ``start`` created.
DISCARD_TIMEOUT = 10.0  # seconds


class _UsageError(Exception):
    pass


#: Subcommand -> help, for those that take one session id and nothing else.
_SESSION_COMMANDS = {
    "interrupt": "interrupt a kernel",
    "restart": "restart a kernel",
    "kill": "kill a kernel",
    "delete": "delete a session whose kernel has exited",
}


def build_parser(prog: str = "kcclient") -> argparse.ArgumentParser:
    """The client's argument parser: global options, then one subparser per command.

    ``--json`` is accepted before or after the command (``kcclient list
    --json``); a subparser's copy defaults to "not given" so it never undoes
    the global one.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Talk to a kallichore (Kallichore) server."
    )
    parser.add_argument("-V", "--version", action="version", version=version_line("kcclient"))
    where = parser.add_argument_group(
        "server (one of; default $" + CONNECTION_FILE_ENV + ")"
    ).add_mutually_exclusive_group()
    where.add_argument("--connection-file", metavar="PATH", help="the server's connection file")
    where.add_argument("--url", metavar="URL", help="http://HOST:PORT of a TCP server")
    where.add_argument("--socket", metavar="PATH", help="the server's Unix socket")
    parser.add_argument("--token", help="bearer token (default: from the connection file)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    command("list", "list sessions")
    command("status", "server status")
    command("kernelspecs", "list the installed kernelspecs (no server needed)")
    start = command("start", "create and start a kernel session")
    start.add_argument("--kernel", default="python3", help="kernelspec name (default python3)")
    start.add_argument("--id", dest="session_id", help="session id (default: generated)")
    start.add_argument("--cwd", help="working directory (default: the current one)")
    execute = command("execute", "run code and stream its output (Ctrl-C interrupts the kernel)")
    execute.add_argument("session_id", metavar="ID")
    execute.add_argument("code", metavar="CODE", help="code to run; - reads it from stdin")
    console = command("console", "an interactive prompt on a session (history, Ctrl-C, input())")
    console.add_argument("session_id", metavar="ID")
    conn = command(
        "connection-file", "write the kernel's connection file (for jupyter console --existing)"
    )
    conn.add_argument("session_id", metavar="ID")
    conn.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        help="where to write it (default: kernel-ID.json in Jupyter's runtime directory)",
    )
    for name, text in _SESSION_COMMANDS.items():
        command(name, text).add_argument("session_id", metavar="ID")
    command("shutdown", "shut the server down (kills every kernel)")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "kcclient") -> int:
    """Run the client CLI; returns the exit code.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
        prog: the program name in usage and error lines.
    """
    parser = build_parser(prog)
    legacy = {"connection_file": CONNECTION_FILE_ENV}
    args = parse_layered(parser, argv, section=("client",), legacy=legacy).namespace
    name = prog.split()[0] if prog.startswith("kcclient") else "kcclient"
    try:
        if args.command == "console":
            from kallichore.client._console import run_console

            return run_console(_server_options(args), args.session_id)
        code: int = trio.run(_run, args)
        if code == EXIT_PIPE_CLOSED:
            silence_stdout()  # what is still buffered must not be reported at exit
        return code
    except KallichoreClientError as exc:
        _fail(name, _explain(exc, args))
    except _UsageError as exc:
        _fail(name, str(exc))
    except (BrokenPipeError, OutputClosedError):
        silence_stdout()  # the reader went away: end quietly, as `cat` would
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        _fail(name, "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one-line promise covers our bugs too
        _fail(name, f"{type(exc).__name__}: {exc}")
    return 1


def _fail(name: str, message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    with contextlib.suppress(OSError, ValueError):
        print(f"{name}: {first}", file=sys.stderr)


def _explain(exc: KallichoreClientError, args: argparse.Namespace) -> str:
    """The error line: a 401 says which token was sent and where it came from."""
    if exc.status != 401:
        return str(exc)
    options = _server_options(args)
    path = options.get("connection_file")
    if args.token is not None:
        source = "sent the token given with --token"
    elif path and _token_in(path):
        source = f"sent the token from {path}"
    elif path:
        source = f"sent no token: {path} has no bearer_token"
    else:
        source = "sent no token: no --token and no connection file"
    return (
        f"unauthorized (HTTP 401): the bearer token is wrong or missing ({source}); "
        f"use --token TOKEN or the server's --connection-file"
    )


def _token_in(path: str) -> bool:
    try:
        return isinstance(read_connection_file(path).get("bearer_token"), str)
    except KallichoreClientError:
        return False


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_client`` keyword arguments from the global options (or the environment)."""
    connection_file = args.connection_file
    if connection_file is None and args.url is None and args.socket is None:
        connection_file = os.environ.get(CONNECTION_FILE_ENV)
        if not connection_file:
            raise _UsageError(
                f"no server given: use --connection-file, --url or --socket "
                f"(or set {CONNECTION_FILE_ENV})"
            )
    return {
        "connection_file": connection_file,
        "base_url": args.url,
        "socket_path": args.socket,
        "token": args.token,
    }


async def _run(args: argparse.Namespace) -> int:
    if args.command == "kernelspecs":
        return _kernelspecs(args.json)
    async with open_client(**_server_options(args)) as client:
        command = args.command
        if command == "list":
            return await _list(client, args.json)
        if command == "status":
            status = await client.server_status()
            _emit(args.json, unstructure(status), _lines(unstructure(status)))
            return 0
        if command == "start":
            return await _start(client, args)
        if command == "execute":
            code = args.code
            if code == "-":
                code = await trio.to_thread.run_sync(sys.stdin.read)
            interactive = sys.stdin.isatty() and args.code != "-"
            return await execute_command(
                client, args.session_id, code, as_json=args.json, interactive=interactive
            )
        if command == "connection-file":
            return await _connection_file(client, args)
        if command == "shutdown":
            await client.shutdown_server()
            _emit(args.json, {"ok": True}, "server shutting down")
            return 0
        session_id = args.session_id
        if command == "interrupt":
            await client.interrupt_session(session_id)
        elif command == "restart":
            await _with_progress(client.restart_session(session_id), f"restarting {session_id}")
        elif command == "kill":
            await client.kill_session(session_id)
        elif command == "delete":
            await client.delete_session(session_id)
        past = {"interrupt": "interrupted", "restart": "restarted", "kill": "killed"}
        _emit(
            args.json,
            {"ok": True, "session_id": session_id},
            f"{session_id}: {past.get(command, command + 'd')}",
        )
        return 0


def _emit(as_json: bool, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


def _lines(data: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in data.items())


async def _list(client: KallichoreClient, as_json: bool) -> int:
    sessions = await client.list_sessions()
    if as_json:
        print(json.dumps(unstructure(sessions)["sessions"], indent=2))
        return 0
    rows = [("ID", "STATUS", "LANGUAGE", "CONNECTED", "PID", "NAME")]
    for s in sessions.sessions:
        rows.append(
            (
                s.session_id,
                s.status.value,
                s.language,
                "yes" if s.connected else "no",
                str(s.process_id or "-"),
                s.display_name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _with_progress(job: Any, label: str) -> Any:
    """Await ``job``, showing a spinner on stderr if it is a terminal.

    Errors:
        Whatever ``job`` raises, as it raised it.
    """
    if not sys.stderr.isatty():
        return await job
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_spin, label)
            try:
                return await job
            finally:
                nursery.cancel_scope.cancel()


async def _spin(label: str) -> None:
    """Show ``label`` with a spinner and the elapsed time until cancelled, then clear the line."""
    i = 0
    start = trio.current_time()
    try:
        while True:
            elapsed = trio.current_time() - start
            sys.stderr.write(f"\r{SPINNER[i % len(SPINNER)]} {label} ({elapsed:.1f} s)")
            sys.stderr.flush()
            i += 1
            await trio.sleep(SPINNER_PERIOD)
    finally:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


async def _start(client: KallichoreClient, args: argparse.Namespace) -> int:
    spec = find_kernelspec(args.kernel)
    session_id = args.session_id or f"{args.kernel}-{uuid.uuid4().hex[:8]}"
    body = spec.new_session(session_id, working_directory=args.cwd)
    await client.new_session(body)
    try:
        info = await _with_progress(
            client.start_session(session_id), f"starting {spec.display_name}"
        )
    except BaseException as exc:
        # A session that never came up is of no use to anyone: remove it.
        with trio.CancelScope(shield=True):
            await _discard(client, session_id)
        if isinstance(exc, KallichoreClientError) and exc.output:
            sys.stderr.write(exc.output if exc.output.endswith("\n") else exc.output + "\n")
        raise
    if args.json:
        print(json.dumps({"session_id": session_id, "kernel_info": info}, indent=2))
    else:
        print(session_id)
    return 0


async def _discard(client: KallichoreClient, session_id: str) -> None:
    """Kill (if need be) and delete a session, within :data:`DISCARD_TIMEOUT`; never raises."""
    with trio.move_on_after(DISCARD_TIMEOUT):
        with contextlib.suppress(KallichoreClientError):
            await client.kill_session(session_id)
        while True:
            try:
                await client.delete_session(session_id)
                return
            except KallichoreClientError as exc:
                if exc.status != 400:  # only "still running" is worth waiting out
                    return
            await trio.sleep(0.1)


def _kernelspecs(as_json: bool) -> int:
    specs = list_kernelspecs()
    if as_json:
        document = {
            spec.name: {"resource_dir": spec.resource_dir, "spec": spec.as_json()} for spec in specs
        }
        print(json.dumps({"kernelspecs": document}, indent=2))
        return 0
    print("Available kernels:")
    width = max((len(spec.name) for spec in specs), default=0)
    for spec in specs:
        where = spec.resource_dir or f"(built in: {spec.argv[0]} -m ipykernel_launcher)"
        print(f"  {spec.name.ljust(width)}    {where}")
    return 0


async def _connection_file(client: KallichoreClient, args: argparse.Namespace) -> int:
    """Write the kernel's connection details where ``jupyter console --existing`` reads them."""
    info = unstructure(await client.connection_info(args.session_id))
    path = args.path or os.path.join(jupyter_runtime_dir(), f"kernel-{args.session_id}.json")
    await trio.to_thread.run_sync(_write_private_json, path, info)
    _emit(args.json, {"session_id": args.session_id, "path": path}, path)
    return 0


def _write_private_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path``, readable by the owner only (it holds the signing key)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise KallichoreClientError(f"cannot write {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
