"""SessionRegistry on its own: registering, finding, forgetting and counting sessions.

No kernel is started here (a registered session has no kernel until it is
started), so these tests need no process and no ZeroMQ. Starting and stopping kernels is
tested in test_session.py (fake kernels) and the integration tests.
"""

from __future__ import annotations

import pytest
import trio

from kallichore.errors import ErrorCode, SessionNotFoundError, SessionStateError
from kallichore.supervisor.policy import KernelPolicy
from kallichore.supervisor.registry import RegistryStatistics, SessionRegistry
from tests.support.bodies import session_spec as spec


@pytest.fixture
async def registry(nursery: trio.Nursery) -> SessionRegistry:
    # outlive_server: no lifeline watchdog, so no process at all
    reg = SessionRegistry(kernel_policy=KernelPolicy(outlive_server=True))
    await nursery.start(reg.run)
    return reg


async def test_sessions_are_listed_in_creation_order(registry: SessionRegistry) -> None:
    created = [registry.create(spec(sid)) for sid in ("b", "a", "c")]
    assert registry.list() == created
    assert len(registry) == 3
    assert registry.get("a") is created[1]


async def test_a_taken_id_is_refused_with_ks0(registry: SessionRegistry) -> None:
    first = registry.create(spec("s"))
    with pytest.raises(SessionStateError) as info:
        registry.create(spec("s"))
    assert info.value.code == ErrorCode.SESSION_EXISTS
    assert info.value.http_status == 400
    assert registry.list() == [first]


async def test_unknown_ids_are_not_found(registry: SessionRegistry) -> None:
    with pytest.raises(SessionNotFoundError):
        registry.get("nope")
    with pytest.raises(SessionNotFoundError):
        registry.delete("nope")


async def test_delete_forgets_a_session_that_has_no_kernel(registry: SessionRegistry) -> None:
    registry.create(spec("s"))
    registry.create(spec("t"))
    registry.delete("s")
    assert [s.spec.session_id for s in registry.list()] == ["t"]
    with pytest.raises(SessionNotFoundError):
        registry.get("s")
    registry.create(spec("s"))  # the id is free again


async def test_statistics_of_sessions_that_never_started(registry: SessionRegistry) -> None:
    assert registry.statistics() == RegistryStatistics(0, 0, False, None, None)
    registry.create(spec("s"))
    # not exited (it never ran), not busy, and never went idle
    assert registry.statistics() == RegistryStatistics(1, 1, False, None, None)
    assert not registry.is_active()


async def test_activity_is_reported_through_on_activity() -> None:
    seen: list[str] = []
    reg = SessionRegistry(
        kernel_policy=KernelPolicy(outlive_server=True), on_activity=lambda: seen.append("x")
    )
    reg._activity()  # what a session calls on a request or output
    assert seen == ["x"]


def test_create_needs_a_running_registry() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        SessionRegistry().create(spec("s"))


async def test_shutdown_all_with_nothing_running_returns_at_once(
    registry: SessionRegistry,
) -> None:
    registry.create(spec("s"))
    with trio.fail_after(1):
        await registry.shutdown_all()
    assert len(registry) == 1
