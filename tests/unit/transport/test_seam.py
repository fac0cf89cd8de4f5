"""ZeroMQ stays behind the transport seam (checked on the source, never imported).

Only ``kallichore/transport/`` imports ``zmq`` -- plus the process-based fake
kernel, which *is* a kernel and binds its own ZeroMQ sockets -- and the seam
itself (``transport/base.py``) imports neither trio nor zmq, so both
implementations and everything above them can depend on it. Imports inside
functions and under ``if TYPE_CHECKING:`` count, as in tests/unit/test_layering.py.
"""

from __future__ import annotations

from tests.support.imports import SOURCE_ROOT, imports_of, package_files
from tests.support.layers import under

#: Modules outside transport/ allowed to import zmq, and why.
ZMQ_ALLOWED = {
    "kallichore.testing.fake_kernel": "a kernel of its own, run as a process",
}


def test_only_the_transport_package_imports_zmq() -> None:
    offenders = [
        str(imp)
        for path in package_files()
        for imp in imports_of(path)
        if under(imp.module, ("zmq",))
        and not under(imp.importer, ("kallichore.transport",))
        and imp.importer not in ZMQ_ALLOWED
    ]
    assert not offenders, "zmq imported outside kallichore/transport/:\n" + "\n".join(offenders)


def test_the_seam_imports_neither_trio_nor_zmq() -> None:
    seam = SOURCE_ROOT / "kallichore" / "transport" / "base.py"
    assert not [str(imp) for imp in imports_of(seam) if under(imp.module, ("trio", "zmq"))]
