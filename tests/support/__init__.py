"""Support for this repository's own tests (what users get ships in ``kallichore.testing``
and ``kallichore.pytest_plugin`` instead).

* :mod:`.paths` -- the checkout's root, and ``PYTHONPATH`` for child processes;
* :mod:`.imports` -- what a module imports, read from its AST (the layering tests);
* :mod:`.raw_http` -- HTTP/1.1 written by hand (h11) to an in-process server;
* :mod:`.server_process` -- the server as a real subprocess (stdlib HTTP, both transports);
* :mod:`.kernel_server` -- a TCP server subprocess with real ipykernels, processes tagged
  for leak checks, and Jupyter clients to its kernels;
* :mod:`.channel_server` -- a server subprocess for the channel WebSocket tests;
* :mod:`.connection_fuzz` -- the connection-level protocol fuzzer;
* :mod:`.counting_kernel`, :mod:`.port_taken_kernel` -- ipykernels that misbehave on purpose,
  run as ``python -m tests.support.<name>``;
* :mod:`.memory_kernel` -- the fake kernel in trio tasks on the in-memory transport, and the
  kernel backend that spawns it (supervisor tests under the autojump clock);
* :mod:`.session_frames` -- what a session queues for its client, decoded, and predicates on it.
"""
