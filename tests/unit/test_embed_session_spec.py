"""``kallichore.embed`` refuses the session specs the REST API refuses, before anything runs.

No kernel is started here: every refusal happens in ``create_session`` (or
``restart``) before the registry sees the session.
"""

from __future__ import annotations

import sys

import pytest

from kallichore.embed import InterruptMode, SessionMode, open_supervisor
from kallichore.errors import ErrorCode, SessionSpecError

ARGV = [sys.executable, "-c", "pass", "{connection_file}"]


@pytest.mark.parametrize(
    ("session_id", "message"),
    [
        ("../x", "session_id must not contain '/', '\\' or control characters"),
        ("", "session_id must not be empty"),
        ("a\nb", "session_id must not contain '/', '\\' or control characters"),
        ("x" * 201, "session_id is longer than 200 characters"),
    ],
)
async def test_a_bad_session_id_is_refused(session_id: str, message: str) -> None:
    async with open_supervisor() as sup:
        with pytest.raises(SessionSpecError) as info:
            sup.create_session(argv=ARGV, session_id=session_id)
        assert info.value.message == message
        # An invalid argument to a caller in process, as before.
        assert isinstance(info.value, ValueError)
        assert sup.sessions == []


async def test_what_rest_refuses_embed_refuses() -> None:
    async with open_supervisor() as sup:
        with pytest.raises(SessionSpecError) as info:
            sup.create_session(argv=["definitely-not-a-binary", "{connection_file}"])
        assert info.value.code is ErrorCode.KERNEL_PATH_NOT_FOUND
        with pytest.raises(SessionSpecError, match="argv must not be empty"):
            sup.create_session(argv=[])
        with pytest.raises(SessionSpecError, match=r"argv\[1\] must not contain NUL"):
            sup.create_session(argv=[sys.executable, "a\x00b"])
        with pytest.raises(SessionSpecError, match=r"env\[0\]\.name"):
            sup.create_session(argv=ARGV, env={"A=B": "x"})
        with pytest.raises(SessionSpecError, match=r"env\[0\]\.action"):
            sup.create_session(argv=ARGV, env=[("set", "A", "x")])  # type: ignore[list-item]
        with pytest.raises(SessionSpecError, match="connection_timeout must be between"):
            sup.create_session(argv=ARGV, connection_timeout=0.5)
        with pytest.raises(SessionSpecError, match="interrupt_mode must be one of"):
            sup.create_session(argv=ARGV, interrupt_mode="sigint")  # type: ignore[arg-type]
        assert sup.sessions == []


async def test_enums_in_the_spec_wire_strings_in_to_json() -> None:
    async with open_supervisor() as sup:
        session = sup.create_session(
            argv=ARGV, session_id="enums", interrupt_mode="signal", session_mode="notebook"
        )
        assert session.spec.interrupt_mode is InterruptMode.SIGNAL
        assert session.spec.session_mode is SessionMode.NOTEBOOK
        body = session.to_json()
        assert (body["interrupt_mode"], body["session_mode"]) == ("signal", "notebook")
        same = sup.create_session(
            argv=ARGV, session_id="members", interrupt_mode=InterruptMode.SIGNAL
        )
        assert same.spec.interrupt_mode is InterruptMode.SIGNAL


async def test_restart_settings_are_checked_before_anything_stops() -> None:
    async with open_supervisor() as sup:
        session = sup.create_session(argv=ARGV, session_id="restart-check")
        with pytest.raises(SessionSpecError, match=r"env\[0\]\.name"):
            await session.restart(env={"": "x"})
        with pytest.raises(SessionSpecError, match="working_directory must not contain NUL"):
            await session.restart(working_directory="/tmp\x00")
