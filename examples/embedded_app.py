"""A trio application that embeds a kallichore server and runs code in a kernel.

Run it from a checkout (or with kallichore installed)::

    python examples/embedded_app.py

What it shows:

* ``kallichore.serve`` running as one task of a bigger program, beside a
  periodic status printer that polls the server's own REST API
  (``GET /status``), the way any other client would;
* the same server's sessions driven in process through
  :meth:`kallichore.embed.Supervisor.of_server`: create an ipykernel
  session, start it, and run ``print(6*7)`` with
  :meth:`kallichore.embed.Session.execute`, which goes through the session's
  execution queue like any client's request and returns the client
  library's ``ExecutionResult``; output is shown as it arrives
  (``on_output``);
* shutting everything down by cancelling the task group: the kernel is
  stopped (bounded) before ``serve`` returns, and nothing is left running.

Needs ipykernel (``pip install ipykernel``). Exits 0 on success, 1 on failure.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import sys
from functools import partial
from typing import Any

import trio

# Runnable from a checkout without installing: put the repository on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kallichore
from kallichore.client import Message
from kallichore.embed import Supervisor

#: Seconds between status lines.
STATUS_INTERVAL = 0.5  # seconds
#: Bound on the whole demonstration (kernel start included).
DEMO_TIMEOUT = 60.0  # seconds

KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def get_status(address: kallichore.ServerAddress) -> dict[str, Any]:
    """``GET /status`` over plain HTTP (blocking; run it in a thread)."""
    assert address.port is not None
    conn = http.client.HTTPConnection("127.0.0.1", address.port, timeout=10)
    try:
        conn.request("GET", "/status")
        status: dict[str, Any] = json.loads(conn.getresponse().read())
        return status
    finally:
        conn.close()


async def print_status(address: kallichore.ServerAddress) -> None:
    """Print a status line every :data:`STATUS_INTERVAL` seconds, forever."""
    while True:
        status = await trio.to_thread.run_sync(get_status, address)
        print(
            f"[status] sessions={status['sessions']} active={status['active']} "
            f"busy={status['busy']}",
            flush=True,
        )
        await trio.sleep(STATUS_INTERVAL)


def show_output(message: Message) -> None:
    """Print each output of the kernel as it arrives."""
    if message.msg_type == "stream":
        print(f"[kernel] {message.content['text']}", end="", flush=True)


async def main() -> int:
    config = kallichore.ServerConfig(transport=kallichore.Transport.TCP, token=None)
    server = kallichore.Server(config)
    supervisor = Supervisor.of_server(server)
    kernel_pid: int | None = None
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(kallichore.serve, config, server=server))
        print(f"[app] kallichore serving at {address.base_url}", flush=True)
        nursery.start_soon(print_status, address)

        with trio.fail_after(DEMO_TIMEOUT):
            session = supervisor.create_session(
                argv=KERNEL_ARGV, display_name="Python", language="python"
            )
            info = await session.start()
            kernel_pid = session.process_id
            print(
                f"[app] kernel {info.get('implementation')} started, pid {kernel_pid}",
                flush=True,
            )
            result = await session.execute("print(6*7)", on_output=show_output)
            if result.error is not None:
                print(f"[app] failed: {result.error.ename}: {result.error.evalue}", flush=True)
            else:
                print(f"[app] result: {result.stdout.strip()}", flush=True)

        # One cancellation stops the status printer and the server; the
        # server stops its kernel (bounded) before serve() returns.
        nursery.cancel_scope.cancel(reason="demonstration finished")

    print(f"[app] shut down; kernel {kernel_pid} status: {session.status.value}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    if importlib.util.find_spec("ipykernel") is None:
        print("this example needs ipykernel: pip install ipykernel", file=sys.stderr)
        sys.exit(1)
    sys.exit(trio.run(main))
