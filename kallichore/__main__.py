"""``python -m kallichore``: ``serve`` runs the server (same flags as ``kcserver``)."""

from __future__ import annotations

from kallichore.cli import module_main

if __name__ == "__main__":
    module_main()
