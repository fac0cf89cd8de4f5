"""``python -m kallichore``: the same entry point as the ``kcserver`` script."""

from __future__ import annotations

from kallichore.cli import main

if __name__ == "__main__":
    main()
