"""Log formats, session lines and the access log (through Quart-Trio's test client)."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kallichore.api.access_log import masked_query
from kallichore.api.app import create_app
from kallichore.config import ServerConfig
from kallichore.logs import JsonFormatter, SessionLog, TextFormatter, configure_logging
from kallichore.server import Server

TOKEN = "fedcba9876543210"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def record(message: str, *args: object, **attributes: Any) -> logging.LogRecord:
    rec = logging.LogRecord("kallichore.test", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(attributes)
    return rec


def test_text_lines_have_a_dated_utc_timestamp() -> None:
    line = TextFormatter().format(record("hello %s", "world"))
    assert re.fullmatch(rf"{ISO} \[INFO\] kallichore\.test: hello world", line), line


def test_json_lines_carry_the_structured_fields() -> None:
    formatter = JsonFormatter()
    entry = json.loads(formatter.format(record("GET /x 200", session_id="s1", status=200)))
    assert re.fullmatch(ISO, entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "logger": "kallichore.test",
        "message": "GET /x 200",
        "session_id": "s1",
        "status": 200,
    }
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    entry = json.loads(formatter.format(failed))
    assert "ValueError: boom" in entry["exception"]
    assert "\n" not in formatter.format(failed), "one line per record"


def test_session_lines_start_with_the_id_and_set_session_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.test")
    log = SessionLog(logging.getLogger("kallichore.test"), "50%-done")
    log.info("client attached%s", " (took over)")
    log.warning("dropped %d frames", 3, extra={"status": 1})
    first, second = caplog.records
    assert first.getMessage() == "Session 50%-done: client attached (took over)"
    assert second.getMessage() == "Session 50%-done: dropped 3 frames"
    assert first.session_id == second.session_id == "50%-done"  # type: ignore[attr-defined]
    assert second.status == 1  # type: ignore[attr-defined]


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("hypercorn", "quart", "asyncio")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_json_writes_one_object_per_line(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    configure_logging("info", log_file=str(log_file), secrets=[TOKEN], log_format="json")
    log = SessionLog(logging.getLogger("kallichore.test"), "s1")
    log.info("token %s leaked?", TOKEN)
    logging.getLogger("kallichore.test").debug("below the level")
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["message"] == "Session s1: token [redacted] leaked?"
    assert entry["session_id"] == "s1"
    assert entry["level"] == "INFO"


def test_query_values_are_masked() -> None:
    assert masked_query(b"") == ""
    assert masked_query(b"token=abc&x=1") == "?token=***&x=***"
    assert masked_query(b"abc") == "?abc=***"
    assert masked_query(b"&&") == "?***"


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kallichore.access"]


async def test_one_access_line_per_request_and_failed_auth_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kallichore.access")
    client = create_app(Server(ServerConfig(token=TOKEN)).api).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await client.get("/status")
    await client.get("/sessions", headers=auth)
    await client.get("/sessions", headers={"Authorization": "Bearer not-it-0000"})
    await client.get("/sessions")
    await client.get("/nope?token=hunter2", headers=auth)
    await client.delete("/status")
    lines = [(r.levelno, r.getMessage()) for r in access_records(caplog)]
    assert len(lines) == 6, lines
    expected = [
        (logging.INFO, r"GET /status 200 \d+\.\d ms"),
        (logging.INFO, r"GET /sessions 200 \d+\.\d ms"),
        (logging.WARNING, r"GET /sessions 401 \d+\.\d ms \(Bearer token wrong: .*\)"),
        (logging.WARNING, r"GET /sessions 401 \d+\.\d ms \(Bearer token missing: .*\)"),
        (logging.INFO, r"GET /nope\?token=\*\*\* 404 \d+\.\d ms"),
        (logging.INFO, r"DELETE /status 405 \d+\.\d ms"),
    ]
    for (level, message), (want_level, pattern) in zip(lines, expected, strict=True):
        assert level == want_level, message
        assert re.fullmatch(pattern, message), message
    everything = " ".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN, "not-it-0000", "hunter2"):
        assert secret not in everything
    first = access_records(caplog)[0]
    assert (first.method, first.path, first.status) == ("GET", "/status", 200)  # type: ignore[attr-defined]
    assert first.websocket is False  # type: ignore[attr-defined]


async def test_refused_websocket_upgrade_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from quart.testing import WebsocketResponseError

    caplog.set_level(logging.INFO, logger="kallichore.access")
    client = create_app(Server(ServerConfig(token=TOKEN)).api).test_client()
    with pytest.RaisesGroup(WebsocketResponseError, flatten_subgroups=True):
        async with client.websocket("/sessions/s1/channels") as ws:
            await ws.receive()
    (line,) = access_records(caplog)
    assert line.levelno == logging.WARNING
    assert re.fullmatch(
        r"GET /sessions/s1/channels 401 \d+\.\d ms \(websocket\) \(Bearer token missing: .*\)",
        line.getMessage(),
    ), line.getMessage()
