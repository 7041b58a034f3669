"""The ComfyUI layer of the pack: thin nodes over the public API of `mochi_core`.

Only ``nodes/host.py`` imports ComfyUI, and only inside functions, so importing this package never needs ComfyUI.

Inside ComfyUI the pack is imported as the package ``custom_nodes/<pack folder>``, so its sibling ``mochi_core``
is not a top-level module there; :func:`_make_core_importable` appends the pack root to ``sys.path`` (appended,
never prepended, so no ComfyUI module can be shadowed) when ``mochi_core`` cannot be imported otherwise. This is
the only import-time effect of the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _make_core_importable() -> None:
    if importlib.util.find_spec("mochi_core") is not None:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "mochi_core")) and root not in sys.path:
        sys.path.append(root)


_make_core_importable()

from . import conditioning, latent, loaders, lora, sampler, vae  # noqa: E402,F401  (register their nodes)
from .registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
