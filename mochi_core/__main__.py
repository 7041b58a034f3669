"""``python -m mochi_core`` and the ``mochi`` console command: the headless command line (:mod:`mochi_core.cli`).

PyTorch is not a declared dependency (inside ComfyUI, ComfyUI owns it), so a Python without it gets one line that
says what to install instead of a traceback or an argparse error about a missing subcommand.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Exit status when PyTorch cannot be imported (the same status as any other input the user must fix).
NO_TORCH_STATUS = 2


def _torch_error() -> str | None:
    """None when torch imports; otherwise the one-line message for the user."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return (
            f"mochi: PyTorch is not installed in this Python ({sys.executable}): {exc}. Install it first, e.g. "
            "`pip install torch` (see https://pytorch.org for the build that matches your GPU), or run the "
            "command with ComfyUI's Python."
        )
    return None


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mochi`` / ``python -m mochi_core``; returns the exit status."""
    message = _torch_error()
    if message is not None:
        sys.stderr.write(message + "\n")
        return NO_TORCH_STATUS
    from .cli import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(run())
