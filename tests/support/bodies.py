"""Request bodies the tests send: a complete ``newSession`` for a real ipykernel."""

from __future__ import annotations

import os
import sys
from typing import Any

#: A real ipykernel (argv template; the server substitutes the connection file).
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def session_body(session_id: str, **overrides: Any) -> dict[str, Any]:
    """A complete ``newSession`` body for an ipykernel, with ``overrides`` applied."""
    body: dict[str, Any] = {
        "session_id": session_id,
        "display_name": f"Test {session_id}",
        "language": "python",
        "username": "tester",
        "input_prompt": ">>> ",
        "continuation_prompt": "... ",
        "argv": list(KERNEL_ARGV),
        "working_directory": os.getcwd(),
        "env": [],
        "interrupt_mode": "message",
        "session_mode": "console",
        "startup_environment": "none",
        "connection_timeout": 30,
    }
    body.update(overrides)
    return body
