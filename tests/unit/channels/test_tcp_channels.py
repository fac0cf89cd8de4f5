"""TcpChannelUpgrades: which first requests it serves itself, and what it hands to hypercorn.

Each case writes a first request into one end of a socket pair and gives the
other end to the upgrade taker, as the TCP listener does. The server is real
(a registry running in the test's nursery) but starts no kernel.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import trio
import trio.testing

from kallichore.channels.tcp_channels import HEAD_TIMEOUT, TcpChannelUpgrades
from kallichore.config import ServerConfig
from kallichore.server import Server
from tests.support.app_client import TOKEN
from tests.support.bodies import session_spec

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(target: str = "/sessions/s1/channels", **headers: str) -> bytes:
    fields = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": KEY.decode(),
        "Authorization": f"Bearer {TOKEN}",
        **headers,
    }
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def upgrades(nursery: trio.Nursery) -> TcpChannelUpgrades:
    server = Server(ServerConfig(token=TOKEN, kernels_outlive_server=True))
    await nursery.start(server.registry.run)
    server.registry.create(session_spec("s1"))
    config = server.config
    return TcpChannelUpgrades(
        server.registry, token=config.token, max_message_bytes=config.max_message_bytes
    )


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    client, server = trio.socket.socketpair()
    return trio.SocketStream(client), trio.SocketStream(server)


async def handed_over(upgrades: TcpChannelUpgrades, request: bytes) -> None:
    """``request`` goes to hypercorn, which reads it back whole, then what follows."""
    client, server = socket_pair()
    async with client:
        await client.send_all(request)
        stream = await upgrades(server)
        assert stream is not None, "served as a channel"
        async with stream:
            assert stream.socket is server.socket  # type: ignore[attr-defined]
            replayed = b""
            while len(replayed) < len(request):
                replayed += await stream.receive_some(7)
            assert replayed == request
            await client.send_all(b"more")
            assert await stream.receive_some() == b"more"


async def test_other_requests_are_handed_over(upgrades: TcpChannelUpgrades) -> None:
    await handed_over(upgrades, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")


async def test_a_request_that_cannot_be_an_upgrade_is_handed_over_at_once(
    upgrades: TcpChannelUpgrades,
) -> None:
    with trio.fail_after(1):  # not HEAD_TIMEOUT: the first bytes rule it out
        await handed_over(upgrades, b"PUT /sessions HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "request_",
    [
        upgrade(Authorization=""),
        upgrade(Authorization="Bearer wrong"),
        upgrade("/sessions/nope/channels"),
        upgrade("/sessions/s1/channels/extra"),
        upgrade(**{"Sec-WebSocket-Version": "8"}),
        upgrade(**{"Sec-WebSocket-Key": ""}),
        upgrade(Connection="keep-alive"),
        upgrade(Upgrade="h2c"),
        b"GET /sessions/s1/channels HTTP/1.1\r\nbad header\r\n\r\n",
    ],
    ids=[
        "no-token",
        "wrong-token",
        "unknown-session",
        "other-path",
        "old-version",
        "no-key",
        "no-connection-upgrade",
        "not-websocket",
        "malformed",
    ],
)
async def test_upgrades_the_app_would_refuse_are_handed_over(
    upgrades: TcpChannelUpgrades, request_: bytes
) -> None:
    """The app gives the refusal (401, 400 KS-1, 404 ...), so it is the same on every path."""
    await handed_over(upgrades, request_)


async def test_a_first_head_that_never_ends_is_handed_over_after_the_bound(
    upgrades: TcpChannelUpgrades, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    client, server = socket_pair()
    async with client:
        await client.send_all(b"GET /sessions/s1/chan")
        stream = await upgrades(server)
        assert stream is not None
        assert trio.current_time() - start == pytest.approx(HEAD_TIMEOUT)
        assert await stream.receive_some() == b"GET /sessions/s1/chan"
        await stream.aclose()


@pytest.mark.parametrize("target", ["/sessions/s1/channels", "/sessions/s%31/channels?x=1"])
async def test_an_acceptable_upgrade_is_served_here(
    upgrades: TcpChannelUpgrades, target: str
) -> None:
    client, server = socket_pair()
    async with trio.open_nursery() as nursery:
        result: list[object] = []

        async def take() -> None:
            result.append(await upgrades(server))

        nursery.start_soon(take)
        await client.send_all(upgrade(target))
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await client.receive_some()
        accept = base64.b64encode(
            hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        assert reply.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: " + accept in reply
        await client.aclose()  # the channel ends with its client
    assert result == [None], "nothing is left for hypercorn"
