"""The REST app in this process, through Quart-Trio's test client (no sockets)."""

from __future__ import annotations

from typing import Any

#: The token the test apps are configured with.
TOKEN = "0123456789abcdef"
#: Headers that carry :data:`TOKEN`.
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def request(
    client: Any,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One request through ``client`` (an app's ``test_client()``): status, body, headers."""
    response = await client.open(path, method=method, data=body, headers=headers or {})
    return response.status_code, await response.get_data(), dict(response.headers)
