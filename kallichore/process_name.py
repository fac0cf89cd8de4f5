"""Naming the server process ``kcserver``.

Positron's liveness check reads ``/proc/<pid>/status`` and requires the
``Name:`` line to be exactly ``kcserver`` (issue #16167 in Positron). A Python
process is called ``python3`` there, so on Linux we rename the process with
``prctl(PR_SET_NAME)``, which changes exactly that field.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["set_process_name"]

logger = logging.getLogger(__name__)

_PR_SET_NAME = 15  # from <linux/prctl.h>


def set_process_name(name: str) -> bool:
    """Set the kernel-visible name of this process (Linux only).

    Returns:
        ``True`` if the name was set, ``False`` elsewhere or on failure.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        result = libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("prctl is not available; process name unchanged")
        return False
    return bool(result == 0)
