"""A trio application that embeds a kallichore server and runs code in a kernel.

Run it from a checkout (or with kallichore installed)::

    python examples/embedded_app.py

What it shows:

* ``kallichore.serve`` running as one task of a bigger program, beside a
  periodic status printer that polls the server's own REST API
  (``GET /status``), the way any other client would;
* the same server's sessions driven in process through
  :meth:`kallichore.embed.Supervisor.of_server`: create an ipykernel
  session, start it, attach, send an ``execute_request`` for ``print(6*7)``
  and read the output from the frames a WebSocket client would receive;
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
from kallichore.api.envelope import client_message, execute_content
from kallichore.embed import SessionChannel, Supervisor

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


async def execute(channel: SessionChannel, code: str) -> str:
    """Run ``code`` in the kernel; return what it printed to stdout."""
    request = client_message("execute_request", execute_content(code))
    msg_id = request["header"]["msg_id"]
    await channel.send(request)
    output: list[str] = []
    async for frame in channel:
        if frame["kind"] != "jupyter" or (frame["parent_header"] or {}).get("msg_id") != msg_id:
            continue
        msg_type, content = frame["header"]["msg_type"], frame["content"]
        if msg_type == "stream" and content["name"] == "stdout":
            output.append(content["text"])
        elif msg_type == "error":
            raise RuntimeError(f"{content['ename']}: {content['evalue']}")
        elif msg_type == "status" and content["execution_state"] == "idle":
            return "".join(output)
    raise RuntimeError("the channel was taken over by another client")


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
            async with session.attach() as channel:
                output = await execute(channel, "print(6*7)")
            print(f"[app] result: {output.strip()}", flush=True)

        # One cancellation stops the status printer and the server; the
        # server stops its kernel (bounded) before serve() returns.
        nursery.cancel_scope.cancel(reason="demonstration finished")

    print(f"[app] shut down; kernel {kernel_pid} status: {session.status.value}", flush=True)
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("ipykernel") is None:
        print("this example needs ipykernel: pip install ipykernel", file=sys.stderr)
        sys.exit(1)
    sys.exit(trio.run(main))
