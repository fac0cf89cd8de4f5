"""What a test asks for a session with: a ``newSession`` body, or the spec it becomes."""

from __future__ import annotations

import os
import sys
from typing import Any

from kallichore.session.spec import SessionSpec

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


def session_spec(
    session_id: str, *, argv: tuple[str, ...] = (sys.executable, "-c", "pass")
) -> SessionSpec:
    """A valid spec whose kernel (by default) exits at once; for sessions never started."""
    return SessionSpec(
        session_id=session_id,
        argv=argv,
        display_name=session_id,
        language="python",
        username="tester",
        input_prompt=">>> ",
        continuation_prompt="... ",
        session_mode="console",
        working_directory="/",
        env=(),
        interrupt_mode="signal",
    )
