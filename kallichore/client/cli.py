"""``kcclient`` / ``python -m kallichore client``: drive a server from the shell.

Every failure is one line on stderr, ``kcclient: <message>``, and exit code
1 (an errored execution also exits 1, after printing its traceback); never a
Python traceback. ``--json`` prints one JSON document on stdout instead of
text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from kallichore.api.converter import unstructure
from kallichore.client._errors import KallichoreClientError
from kallichore.client._kernelspec import find_kernelspec
from kallichore.client._models import ExecutionResult, InputRequest, Message
from kallichore.client._rest import KallichoreClient, open_client
from kallichore.settings import parse_layered

__all__ = ["main"]

#: Environment variable naming a connection file when no address is given.
CONNECTION_FILE_ENV = "KALLICHORE_CONNECTION_FILE"
#: Spinner frames and period for the start progress indicator.
SPINNER = "|/-\\"
SPINNER_PERIOD = 0.1  # seconds


class _UsageError(Exception):
    pass


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Talk to a kallichore (Kallichore) server."
    )
    where = parser.add_argument_group(
        "server (one of; default $" + CONNECTION_FILE_ENV + ")"
    ).add_mutually_exclusive_group()
    where.add_argument("--connection-file", metavar="PATH", help="the server's connection file")
    where.add_argument("--url", metavar="URL", help="http://HOST:PORT of a TCP server")
    where.add_argument("--socket", metavar="PATH", help="the server's Unix socket")
    parser.add_argument("--token", help="bearer token (default: from the connection file)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list sessions")
    sub.add_parser("status", help="server status")
    start = sub.add_parser("start", help="create and start a kernel session")
    start.add_argument("--kernel", default="python3", help="kernelspec name (default python3)")
    start.add_argument("--id", dest="session_id", help="session id (default: generated)")
    start.add_argument("--cwd", help="working directory (default: the current one)")
    execute = sub.add_parser("execute", help="run code and stream its output")
    execute.add_argument("session_id", metavar="ID")
    execute.add_argument("code", metavar="CODE", help="code to run; - reads it from stdin")
    for name, text in [
        ("interrupt", "interrupt a kernel"),
        ("restart", "restart a kernel"),
        ("kill", "kill a kernel"),
        ("delete", "delete an exited session"),
    ]:
        sub.add_parser(name, help=text).add_argument("session_id", metavar="ID")
    sub.add_parser("shutdown", help="shut the server down (kills every kernel)")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "kcclient") -> int:
    """Run the client CLI; returns the exit code.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
        prog: the program name in usage and error lines.
    """
    parser = _parser(prog)
    legacy = {"connection_file": CONNECTION_FILE_ENV}
    args = parse_layered(parser, argv, section=("client",), legacy=legacy).namespace
    name = prog.split()[0] if prog.startswith("kcclient") else "kcclient"
    try:
        return trio.run(_run, args)
    except KallichoreClientError as exc:
        _fail(name, str(exc))
    except _UsageError as exc:
        _fail(name, str(exc))
    except KeyboardInterrupt:
        _fail(name, "interrupted")
        return 130
    except Exception as exc:  # the one-line promise covers our bugs too
        _fail(name, f"{type(exc).__name__}: {exc}")
    return 1


def _fail(name: str, message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{name}: {first}", file=sys.stderr)


async def _run(args: argparse.Namespace) -> int:
    connection_file = args.connection_file
    if connection_file is None and args.url is None and args.socket is None:
        connection_file = os.environ.get(CONNECTION_FILE_ENV)
        if not connection_file:
            raise _UsageError(
                f"no server given: use --connection-file, --url or --socket "
                f"(or set {CONNECTION_FILE_ENV})"
            )
    async with open_client(
        connection_file=connection_file,
        base_url=args.url,
        socket_path=args.socket,
        token=args.token,
    ) as client:
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
            return await _execute(client, args)
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
    """Await ``job``, showing a spinner on stderr if it is a terminal."""
    if not sys.stderr.isatty():
        return await job
    result: list[Any] = []

    async def run_job(cancel_scope: trio.CancelScope) -> None:
        result.append(await job)
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_job, nursery.cancel_scope)
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
    return result[0] if result else None


async def _start(client: KallichoreClient, args: argparse.Namespace) -> int:
    spec = find_kernelspec(args.kernel)
    session_id = args.session_id or f"{args.kernel}-{uuid.uuid4().hex[:8]}"
    body = spec.new_session(session_id, working_directory=args.cwd)
    await client.new_session(body)
    try:
        info = await _with_progress(
            client.start_session(session_id), f"starting {spec.display_name}"
        )
    except KallichoreClientError as exc:
        if exc.output:
            sys.stderr.write(exc.output if exc.output.endswith("\n") else exc.output + "\n")
        raise
    if args.json:
        print(json.dumps({"session_id": session_id, "kernel_info": info}, indent=2))
    else:
        print(session_id)
    return 0


def _text_of(msg: Message) -> tuple[TextIO, str] | None:
    content = msg.content
    if msg.msg_type == "stream":
        out = sys.stderr if content.get("name") == "stderr" else sys.stdout
        return out, str(content.get("text", ""))
    if msg.msg_type in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data") or {}
        text = data.get("text/plain")
        if text is None:
            kinds = ", ".join(sorted(data)) or "no data"
            text = f"<{msg.msg_type}: {kinds}>"
        return sys.stdout, str(text) + "\n"
    if msg.msg_type == "error":
        return sys.stderr, "\n".join(str(t) for t in content.get("traceback", [])) + "\n"
    return None


async def _execute(client: KallichoreClient, args: argparse.Namespace) -> int:
    code = args.code
    if code == "-":
        code = await trio.to_thread.run_sync(sys.stdin.read)
    as_json = args.json

    def on_output(msg: Message) -> None:
        if as_json:
            return
        shown = _text_of(msg)
        if shown is not None:
            out, text = shown
            out.write(text)
            out.flush()

    async def on_input(request: InputRequest) -> str:
        def ask() -> str:
            import getpass

            if request.password:
                return getpass.getpass(request.prompt)
            return input(request.prompt)

        try:
            return await trio.to_thread.run_sync(ask)
        except EOFError:
            return ""

    interactive = sys.stdin.isatty() and args.code != "-"
    async with client.open_channel(args.session_id) as channel:
        result: ExecutionResult = await channel.execute(
            code, on_output=on_output, on_input=on_input if interactive else None
        )
    if as_json:
        print(
            json.dumps(
                {
                    "status": result.status,
                    "execution_count": result.execution_count,
                    "outputs": [
                        {"msg_type": m.msg_type, "content": m.content} for m in result.outputs
                    ],
                    "error": unstructure(result.error) if result.error else None,
                },
                indent=2,
            )
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
