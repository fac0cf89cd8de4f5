"""The connection file's life: written at start, removed at exit, never another's.

Also ``server_path``: an executable even under ``python -m kallichore serve``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import trio

from kallichore.config import ServerConfig, default_server_path
from kallichore.server import Server, ServerAddress, serve
from kallichore.server.announce import remove_connection_file, write_connection_file


def details(server_id: str) -> dict[str, Any]:
    return {"port": 1, "bearer_token": "t", "server_id": server_id}


def test_removes_the_file_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "connection.json"
    written = write_connection_file(str(path), details("ours"))
    assert remove_connection_file(written)
    assert not path.exists()
    assert not remove_connection_file(written)  # already gone: nothing to do


def test_leaves_a_file_another_server_wrote_since(tmp_path: Path) -> None:
    path = tmp_path / "connection.json"
    ours = write_connection_file(str(path), details("ours"))
    write_connection_file(str(path), details("theirs"))  # a rename: new inode
    assert not remove_connection_file(ours)
    assert json.loads(path.read_text())["server_id"] == "theirs"


def test_leaves_a_file_rewritten_in_place_by_another_server(tmp_path: Path) -> None:
    path = tmp_path / "connection.json"
    ours = write_connection_file(str(path), details("ours"))
    with open(path, "w") as f:  # same inode, other contents
        json.dump(details("theirs"), f)
    assert not remove_connection_file(ours)
    assert path.exists()


def test_server_path_under_python_dash_m(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    main_py = str(tmp_path / "kallichore" / "__main__.py")
    # No kcserver script beside the interpreter: the interpreter itself.
    assert default_server_path(main_py, str(python)) == str(python)
    script = bin_dir / "kcserver"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert default_server_path(main_py, str(python)) == str(script)
    # Run as the console script: that script.
    assert default_server_path(str(script), str(python)) == str(script)
    assert os.stat(default_server_path()).st_mode & stat.S_IXUSR
    assert default_server_path("-c", sys.executable) in (
        sys.executable,
        os.path.join(os.path.dirname(sys.executable), "kcserver"),
    )


async def test_idle_shutdown_removes_the_connection_file(tmp_path: Path) -> None:
    path = tmp_path / "connection.json"
    config = ServerConfig(token=None, connection_file=str(path), resource_sample_interval_ms=0)
    server = Server(config)
    async with trio.open_nursery() as nursery:
        address: ServerAddress = await nursery.start(
            lambda task_status: serve(config, server=server, task_status=task_status)
        )
        assert json.loads(path.read_text())["server_id"] == address.server_id
        server.idle.set_period(0.05)  # the idle watcher's own path to shutdown
        with trio.fail_after(10):
            await server.shutdown_requested.wait()
    assert server.shutdown_reason == "idle timeout"
    assert not path.exists()
