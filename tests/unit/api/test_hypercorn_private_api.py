"""The parts of hypercorn we replace or lean on are still the ones we read.

kallichore adjusts hypercorn in a few places (``api/http.py``,
``api/server_refusals.py``, ``api/hypercorn_ws.py``), each by replacing a
private method. A private method can change in any release, so the package
pins hypercorn to the range tested here, and this test fingerprints each
method we replace or whose behaviour our replacement assumes. When it fails
after a hypercorn upgrade: read the new code of the named method, check that
the replacement still fits, then update the fingerprint and the pin.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import pathlib

import pytest

#: (module, class, method) -> fingerprint of the method's syntax tree.
FINGERPRINTS = {
    ("hypercorn.protocol.h11", "H11Protocol", "_send_h11_event"): "a918056567aaa694",
    ("hypercorn.protocol.h11", "H11Protocol", "_send_error_response"): "e57d055022600cd6",
    ("hypercorn.protocol.h11", "H11Protocol", "_maybe_recycle"): "052aa0b55e5ae212",
    ("hypercorn.protocol.h11", "H11Protocol", "_create_stream"): "ed02f7db7e0b7e60",
    ("hypercorn.protocol.h11", "H11WSConnection", "send"): "075d71e9f0813dfe",
    ("hypercorn.protocol.ws_stream", "WSStream", "handle"): "c770a1fb26553706",
    ("hypercorn.protocol.ws_stream", "WSStream", "_handle_events"): "e275d3b6f3e34650",
    ("hypercorn.protocol.ws_stream", "WSStream", "_send_error_response"): "7a0127b13fab6649",
    ("hypercorn.protocol.ws_stream", "WSStream", "_send_rejection"): "92155f01c52dd59f",
    ("hypercorn.trio.tcp_server", "TCPServer", "_close"): "ef8887951c0534fc",
    ("hypercorn.trio.tcp_server", "TCPServer", "protocol_send"): "2747946c19b1b77e",
    # _read_data is wrapped to stop the keep-alive timer that run() starts.
    ("hypercorn.trio.tcp_server", "TCPServer", "_read_data"): "ec14b947bd041097",
    ("hypercorn.trio.tcp_server", "TCPServer", "run"): "657ae81fb9db1fdc",
}


def fingerprint(module: str, cls: str, method: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    assert spec.origin is not None, module
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == method:
                    dump = ast.dump(item, annotate_fields=False, include_attributes=False)
                    return hashlib.sha256(dump.encode()).hexdigest()[:16]
    raise AssertionError(f"{module}.{cls}.{method} is gone")


@pytest.mark.parametrize(("module", "cls", "method"), list(FINGERPRINTS))
def test_the_hypercorn_code_we_adjust_is_unchanged(module: str, cls: str, method: str) -> None:
    assert fingerprint(module, cls, method) == FINGERPRINTS[module, cls, method], (
        f"{module}.{cls}.{method} changed: re-check kallichore's adjustment of it "
        "(see this module's docstring)"
    )
