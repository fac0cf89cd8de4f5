"""Where kernels come from: the seam between a session and processes plus transport.

A session starts a kernel in two steps that touch the outside world: it
spawns a process (:func:`~kallichore.supervisor.process.spawn_kernel_process`)
and it connects to the kernel's sockets (a
:class:`~kallichore.transport.base.KernelTransport`). A :class:`KernelBackend`
bundles both, so the registry can be built with another one: the default,
:class:`LocalKernelBackend`, runs real processes and speaks ZeroMQ; a test
backend can run fake kernels in trio tasks on an in-memory transport, where
restart ladders and timeouts take virtual time.

Everything else -- the JEP 66 handshake, the connection file, the shutdown
ladder (:func:`~kallichore.supervisor.process.terminate_process_group`, which
works on any :class:`~kallichore.supervisor.process.SupervisedProcess`) -- is
the session's, whichever backend it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from kallichore.supervisor.lifeline import Lifeline
from kallichore.supervisor.process import (
    KernelProcess,
    SupervisedProcess,
    spawn_kernel_process,
)
from kallichore.transport.base import KernelTransport
from kallichore.transport.zmq import ZmqTransport

__all__ = ["KernelBackend", "LocalKernelBackend"]


class KernelBackend(Protocol):
    """How a session spawns its kernels and reaches their sockets."""

    @property
    def transport(self) -> KernelTransport:
        """The factory for the kernels' sockets (and the JEP 66 registration socket)."""
        ...

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        lifeline: Lifeline | None,
    ) -> SupervisedProcess:
        """Start a kernel; the caller must end it with ``terminate_process_group``.

        Same contract as :func:`~kallichore.supervisor.process.spawn_kernel_process`
        (``OSError`` when the spawn fails).
        """
        ...


@attrs.frozen
class LocalKernelBackend:
    """Kernels as child processes of this server, reached over ZeroMQ (the default)."""

    transport: KernelTransport = attrs.field(factory=ZmqTransport)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        lifeline: Lifeline | None,
    ) -> KernelProcess:
        """See :func:`~kallichore.supervisor.process.spawn_kernel_process`."""
        return await spawn_kernel_process(argv, env=env, cwd=cwd, lifeline=lifeline)


if TYPE_CHECKING:

    def _satisfies_kernel_backend(backend: LocalKernelBackend) -> KernelBackend:
        return backend  # mypy checks LocalKernelBackend against the protocol here
