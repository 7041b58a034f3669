"""Memory features: block streaming, phase moves, the memory planner and memory measurement.

See :mod:`mochi_core.memory.streaming` (issue 7 "Block streaming"), :mod:`mochi_core.memory.planner`
("Planner") and :mod:`mochi_core.memory.tracking` (measured peaks for the planner validation).
"""

from __future__ import annotations

from .files import ModelFiles, inspect_model_files, plan_for_files
from .planner import (
    PhasePeak,
    Plan,
    T5Sizes,
    decode_working_set_bytes,
    dit_activation_bytes,
    dit_weight_bytes,
    format_bytes,
    parse_bytes,
    plan,
    require_fit,
    t5_weight_bytes,
)
from .streaming import BlockStreamer, StreamingStats, block_nbytes, enable_block_streaming, make_room, move_module
from .tracking import MemoryReport, PeakMemoryTracker, track_memory

__all__ = [
    "BlockStreamer",
    "MemoryReport",
    "ModelFiles",
    "PeakMemoryTracker",
    "PhasePeak",
    "Plan",
    "StreamingStats",
    "T5Sizes",
    "block_nbytes",
    "decode_working_set_bytes",
    "dit_activation_bytes",
    "dit_weight_bytes",
    "enable_block_streaming",
    "format_bytes",
    "inspect_model_files",
    "make_room",
    "move_module",
    "parse_bytes",
    "plan_for_files",
    "plan",
    "require_fit",
    "t5_weight_bytes",
    "track_memory",
]
