"""Device memory: what a job will need, and how the models fit into less.

- :mod:`~mochi_core.memory.estimates`: bytes of weights and activations of every phase, derived from the
  models' own code (weights per storage format, the DiT block's and the decoder tile's working sets).
- :mod:`~mochi_core.memory.planning`: the planner. :func:`plan` adds the estimates up per phase and chooses
  storage, resident blocks, CFG batching and decode tiles for a budget; :func:`plan_for_files` plans for the
  files a user has (read from their headers); the result is a passive, typed :class:`Plan` that the pipeline and
  the nodes apply; ``python -m mochi_core plan`` prints it.
- :mod:`~mochi_core.memory.streaming`: block streaming (some transformer blocks resident, the others copied in
  just before use), page-locked host memory for the copies, pages given back to the OS on CPU-only machines, and
  moving whole models between devices.

Byte units (GB, GiB, :func:`parse_bytes`, :func:`format_bytes`) live in :mod:`mochi_core.units`; peak
measurements used by the tests and benchmarks in :mod:`mochi_core.testing.memory`.
"""

from __future__ import annotations

from ..units import format_bytes, parse_bytes
from .estimates import (
    T5Sizes,
    decode_working_set_bytes,
    decoder_weight_bytes,
    dit_activation_bytes,
    dit_weight_bytes,
    t5_weight_bytes,
)
from .planning.files import ModelFiles, inspect_model_files, plan_for_files
from .planning.phases import PhasePeak
from .planning.planner import Plan, plan, require_fit
from .streaming import (
    BlockStreamer,
    StreamingStats,
    apply_streaming,
    block_nbytes,
    enable_block_streaming,
    make_room,
    move_module,
)

__all__ = [
    "BlockStreamer",
    "ModelFiles",
    "PhasePeak",
    "Plan",
    "StreamingStats",
    "T5Sizes",
    "apply_streaming",
    "block_nbytes",
    "decode_working_set_bytes",
    "decoder_weight_bytes",
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
]
