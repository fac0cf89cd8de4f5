"""The client library stays a client (``kallichore/client/``): importing it loads no server.

From the rest of the package the client imports only the pure layers
(``protocol/``, ``session/``, ``wire/``), ``transport/`` and the base modules,
so ``import kallichore.client`` loads neither the web stack nor ZeroMQ. What
the source imports, and that the client's modules form no cycle, is checked
with every other layer in tests/unit/test_layering.py; this checks what a
fresh interpreter actually loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.layers import client_may_import


def test_importing_the_client_loads_no_server_side_code() -> None:
    probe = (
        "import json, sys\n"
        "import kallichore.client, kallichore.client.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    )
    ours = [name for name in loaded if name.split(".")[0] == "kallichore"]
    assert [name for name in ours if not client_may_import(name)] == []
    assert not {"quart", "quart_trio", "hypercorn", "zmq"} & set(loaded)
