"""Finding a kernelspec (``kernels/<name>/kernel.json``) on jupyter_core's data path.

jupyter_client is not a dependency; this reads the same directories its
``KernelSpecManager`` does (``jupyter_core.paths.jupyter_path("kernels")``,
first match wins) and builds a ``newSession`` body from the spec.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from typing import Any

import attrs
from jupyter_core.paths import jupyter_path

from kallichore.client._errors import KallichoreClientError
from kallichore.protocol.models import InterruptMode, NewSession, VarAction, VarActionType

__all__ = ["KernelSpec", "find_kernelspec", "list_kernelspecs"]


@attrs.frozen
class KernelSpec:
    """The parts of a ``kernel.json`` a session needs."""

    name: str
    resource_dir: str
    argv: list[str]
    display_name: str
    language: str
    interrupt_mode: InterruptMode
    env: dict[str, str]

    def new_session(
        self, session_id: str, *, working_directory: str | None = None, username: str | None = None
    ) -> NewSession:
        """A ``newSession`` body that starts this kernel."""
        argv = [a.replace("{resource_dir}", self.resource_dir) for a in self.argv]
        # As jupyter_client does: a bare "python" means this interpreter.
        major, minor = sys.version_info[:2]
        if argv and argv[0] in ("python", f"python{major}", f"python{major}.{minor}"):
            argv[0] = sys.executable
        return NewSession(
            session_id=session_id,
            display_name=self.display_name,
            language=self.language,
            username=username or getpass.getuser(),
            input_prompt="In [{}]: ",
            continuation_prompt="...: ",
            argv=argv,
            working_directory=working_directory or os.getcwd(),
            env=[VarAction(VarActionType.REPLACE, k, v) for k, v in sorted(self.env.items())],
            interrupt_mode=self.interrupt_mode,
        )

    def as_json(self) -> dict[str, Any]:
        """The ``kernel.json`` fields we read, as ``jupyter kernelspec list --json`` shows them."""
        return {
            "argv": list(self.argv),
            "display_name": self.display_name,
            "language": self.language,
            "interrupt_mode": self.interrupt_mode.value,
            "env": dict(self.env),
        }


def _native_python3() -> KernelSpec:
    # What ipykernel's own spec says, for when none is installed: this
    # interpreter with ipykernel_launcher (jupyter_client does the same).
    return KernelSpec(
        name="python3",
        resource_dir="",
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="Python 3 (ipykernel)",
        language="python",
        interrupt_mode=InterruptMode.SIGNAL,
        env={},
    )


def _read_spec(name: str, resource_dir: str) -> KernelSpec:
    path = os.path.join(resource_dir, "kernel.json")
    try:
        with open(path, encoding="utf-8") as f:
            spec: Any = json.load(f)
    except (OSError, ValueError) as exc:
        raise KallichoreClientError(f"cannot read kernelspec {path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("argv"), list):
        raise KallichoreClientError(f"kernelspec {path} has no argv")
    mode = spec.get("interrupt_mode", "signal")
    env = spec.get("env") or {}
    return KernelSpec(
        name=name,
        resource_dir=resource_dir,
        argv=[str(a) for a in spec["argv"]],
        display_name=str(spec.get("display_name", name)),
        language=str(spec.get("language", "")),
        interrupt_mode=InterruptMode.MESSAGE if mode == "message" else InterruptMode.SIGNAL,
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
    )


def find_kernelspec(name: str = "python3") -> KernelSpec:
    """Look ``name`` up in ``jupyter_path("kernels")``.

    ``python3`` falls back to this interpreter's ipykernel when no spec is
    installed.

    Raises:
        KallichoreClientError: not found, unreadable, or malformed.
    """
    for directory in jupyter_path("kernels"):
        resource_dir = os.path.join(directory, name)
        if os.path.isfile(os.path.join(resource_dir, "kernel.json")):
            return _read_spec(name, resource_dir)
    if name == "python3":
        return _native_python3()
    raise KallichoreClientError(
        f"no kernelspec named {name!r} in {', '.join(jupyter_path('kernels'))}"
    )


def list_kernelspecs() -> list[KernelSpec]:
    """Every kernelspec :func:`find_kernelspec` would find, sorted by name.

    The first directory holding a name wins, as for :func:`find_kernelspec`;
    unreadable specs are left out; ``python3`` is always there (built in
    when not installed, with an empty ``resource_dir``).
    """
    found: dict[str, KernelSpec] = {}
    for directory in jupyter_path("kernels"):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                resource_dir = os.path.join(directory, name)
                if name in found or not os.path.isfile(os.path.join(resource_dir, "kernel.json")):
                    continue
                with contextlib.suppress(KallichoreClientError):
                    found[name] = _read_spec(name, resource_dir)
    found.setdefault("python3", _native_python3())
    return [found[name] for name in sorted(found)]
