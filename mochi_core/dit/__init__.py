"""Mochi 1 AsymmDiT: configuration, model and a loader for every published checkpoint layout.

Public: :class:`DiTConfig`, :func:`load_dit`, :class:`AsymmDiT`. Semantics of genmoai/mochi
``src/genmo/mochi_preview/dit/joint_model/``; see docs/numerics.md §2 and docs/formats.md.
"""

from __future__ import annotations

from .config import DiTConfig
from .loader import load_dit
from .model import AsymmDiT

__all__ = ["DiTConfig", "load_dit", "AsymmDiT"]
