"""An ipykernel whose shell port is taken by someone else before it binds it.

Run as ``python -m tests.support.port_taken_kernel COUNT_FILE TIMES -f
{connection_file}``. The first ``TIMES`` runs (counted in ``COUNT_FILE``)
bind and listen on the shell port named in the connection file themselves
-- as another program would that took the port between the supervisor's
choice and the kernel's bind -- and then start ipykernel in the same
process, which fails the way a kernel that lost that race fails: "Address
already in use", exit status 1. Later runs start ipykernel normally.
"""

from __future__ import annotations

import json
import socket
import sys

from ipykernel.kernelapp import IPKernelApp


def _count_run(path: str) -> int:
    """This run's number (1, 2, ...), recorded in ``path``."""
    try:
        with open(path) as f:
            runs = int(f.read() or 0)
    except FileNotFoundError:
        runs = 0
    with open(path, "w") as f:
        f.write(str(runs + 1))
    return runs + 1


def main() -> None:
    count_file, times = sys.argv[1], int(sys.argv[2])
    del sys.argv[1:3]  # the rest is ipykernel's
    connection_file = sys.argv[sys.argv.index("-f") + 1]
    squatter = None
    if _count_run(count_file) <= times:
        with open(connection_file) as f:
            port = json.load(f)["shell_port"]
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
    try:
        IPKernelApp.launch_instance()
    finally:
        if squatter is not None:
            squatter.close()


if __name__ == "__main__":
    main()
