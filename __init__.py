"""ComfyUI entry point of the Mochi node pack (classic V1 node API).

ComfyUI imports this folder as a package and reads ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``.
Nothing here imports ComfyUI at import time, so the pack also imports cleanly in plain Python (tests, tools).
"""

from __future__ import annotations

import logging

_log = logging.getLogger(__name__)

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as exc:  # imported as a top-level module (not as a package): expose nothing
    if __package__:
        raise
    _log.debug("Mochi nodes not loaded outside a package import: %s", exc)
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
