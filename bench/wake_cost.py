"""What one trio wake-up costs on this machine (a yardstick for the bridge).

A thread writes one byte into a socket pair every 250 us (the pace of
``print(i, flush=True)`` in ipykernel); a trio task receives each byte and
sends it on to a second socket pair, which another thread drains. Prints the
main thread's CPU time per relayed byte: the floor for any trio program that
wakes once per message. On the 2-core machine this bench was built on:
about 65 us (55 us user), i.e. each scheduler pass the server saves per
message is worth about as much as all of the server's own per-message work.

    bench/.venv/bin/python bench/wake_cost.py [count]
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time

import trio


def main(count: int) -> None:
    source_w, source_r = socket.socketpair()
    sink_w, sink_r = socket.socketpair()

    def feed() -> None:
        for _ in range(count):
            source_w.send(b"x")
            time.sleep(0.00025)

    def drain() -> None:
        seen = 0
        while seen < count:
            seen += len(sink_r.recv(65536))

    async def relay() -> None:
        receiver = trio.socket.from_stdlib_socket(source_r)
        sender = trio.socket.from_stdlib_socket(sink_w)
        relayed = 0
        while relayed < count:
            data = await receiver.recv(65536)
            relayed += len(data)
            await sender.send(data)

    threading.Thread(target=feed, daemon=True).start()
    threading.Thread(target=drain, daemon=True).start()
    before = resource.getrusage(resource.RUSAGE_THREAD)
    trio.run(relay)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    user = (after.ru_utime - before.ru_utime) / count * 1e6
    system = (after.ru_stime - before.ru_stime) / count * 1e6
    print(f"trio relay, CPU per wake-up: {user + system:.1f} us ({user:.1f} user, {system:.1f} system)")
    for sock in (source_w, source_r, sink_w, sink_r):
        sock.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
