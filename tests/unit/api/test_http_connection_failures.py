"""A failure while serving one connection ends that connection, not the server."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio

from kallichore.api.http import serve_http
from kallichore.config import ServerConfig
from kallichore.server.listener import bind_listener


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = bytearray()
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return bytes(answer)


async def test_an_error_in_one_connection_is_logged_and_the_server_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def take_connection(stream: trio.SocketStream) -> trio.abc.Stream | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one connection's handling")
        return stream

    listener = bind_listener(ServerConfig(token=None))
    assert listener.port is not None
    stop = trio.Event()
    with caplog.at_level(logging.ERROR, logger="kallichore.api.http"):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    serve_http,
                    hello,
                    listener,
                    shutdown_trigger=stop.wait,
                    take_connection=take_connection,
                )
            )
            assert await get(listener.port) == b""  # closed, with nothing said
            assert b"hello" in await get(listener.port)
            stop.set()
    listener.close()
    assert "A client connection failed" in caplog.text
    assert "a bug in one connection's handling" in caplog.text


async def wait_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = bytearray()
    while chunk := await stream.receive_some(65536):
        answer += chunk
    return bytes(answer)


async def test_a_connection_is_closed_as_soon_as_its_client_has_gone() -> None:
    """Not at the keep-alive timeout (5 s): the descriptor is needed sooner at the limit."""
    listener = bind_listener(ServerConfig(token=None))
    assert listener.port is not None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_http, hello, listener, shutdown_trigger=stop.wait))
        # A client that never sent a request, and one that did (kept alive).
        silent = await trio.open_tcp_stream("127.0.0.1", listener.port)
        served = await trio.open_tcp_stream("127.0.0.1", listener.port)
        await served.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b"0\r\n\r\n"):  # the last chunk
            response += await served.receive_some(65536)
        for stream in (silent, served):
            await stream.send_eof()
            with trio.fail_after(3):
                assert await wait_closed(stream) == b""
            await stream.aclose()
        stop.set()
    listener.close()
