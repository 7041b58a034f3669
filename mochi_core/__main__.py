"""``python -m mochi_core``: the headless command line (see :mod:`mochi_core.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
