"""The two kernel-policy flags reach ServerConfig and the registry (tier 1 and 2)."""

from __future__ import annotations

import pytest

from kallichore.cli import _config_from_args, build_parser
from kallichore.config import ServerConfig
from kallichore.server import Server
from kallichore.settings import parse_layered
from kallichore.supervisor.policy import KernelPolicy


@pytest.mark.parametrize(
    ("flags", "unsigned", "outlive"),
    [
        ([], False, False),
        (["--allow-unsigned-kernel-messages"], True, False),
        (["--kernels-outlive-server"], False, True),
        (["--allow-unsigned-kernel-messages", "--kernels-outlive-server"], True, True),
    ],
)
def test_flags_reach_the_config(flags: list[str], unsigned: bool, outlive: bool) -> None:
    parsed = parse_layered(build_parser(), ["--token", "none", *flags], environ={})
    config, _ = _config_from_args(parsed, None)
    assert config.allow_unsigned_kernel_messages is unsigned
    assert config.kernels_outlive_server is outlive


async def test_the_server_hands_the_policy_to_its_registry() -> None:
    server = Server(
        ServerConfig(token=None, allow_unsigned_kernel_messages=True, kernels_outlive_server=True)
    )
    assert server.registry.kernel_policy == KernelPolicy(
        allow_unsigned_messages=True, outlive_server=True
    )
    assert Server(ServerConfig(token=None)).registry.kernel_policy == KernelPolicy()
