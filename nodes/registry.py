"""One source of truth for node ids, display names and categories."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ROOT_CATEGORY = "Mochi"
NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def register(node_id: str, display_name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: add a node under ``node_id`` (must start with ``Mochi``) with its display name."""
    if not node_id.startswith("Mochi"):
        raise ValueError(f"node id {node_id!r} must be prefixed 'Mochi'")

    def wrap(cls: type[T]) -> type[T]:
        if node_id in NODE_CLASS_MAPPINGS:
            raise ValueError(f"node id {node_id!r} registered twice")
        if not str(getattr(cls, "CATEGORY", "")).startswith(ROOT_CATEGORY + "/"):
            raise ValueError(f"{node_id}: CATEGORY must start with '{ROOT_CATEGORY}/'")
        NODE_CLASS_MAPPINGS[node_id] = cls
        NODE_DISPLAY_NAME_MAPPINGS[node_id] = display_name
        return cls

    return wrap
