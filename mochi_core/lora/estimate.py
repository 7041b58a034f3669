"""Device bytes the run-time LoRA paths add to a DiT, per block, from the LoRA files' headers (nothing else read).

Used by the memory planner: each block's bytes grow by its LoRA factors (they travel with the block when streamed).
Per changed layer the run-time path holds ``down`` (R, in) and ``up`` (out, R) in the compute dtype, R = the sum of
the stacked ranks. From the header alone a diffusers q/k/v triple cannot be known to share its ``lora_A`` (then it
is fused to rank r instead of 3r), so it is counted unfused: an upper bound, exact for every other layer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from ..formats.io import open_checkpoint
from .reader import _DIFFUSERS_PREFIXES, _GENMO_IGNORED, _detect

__all__ = ["lora_runtime_bytes"]

_BLOCK = re.compile(r"(?:^|\.)(?:blocks|transformer_blocks)\.(\d+)\.")
_QKV = re.compile(r"\.(?:to_[qkv]|add_[qkv]_proj)$")


def _file_bytes(path: str | os.PathLike[str], itemsize: int, depth: int) -> tuple[int, list[int]]:
    other, blocks = 0, [0] * depth
    with open_checkpoint(path) as ckpt:
        layout = _detect(os.path.basename(str(path)), ckpt.keys())
        suffix_a, suffix_b = (".lora_A", ".lora_B") if layout == "genmo" else (".lora_A.weight", ".lora_B.weight")
        for key, info in ckpt.infos.items():
            if not key.endswith(suffix_a) or key.endswith(_GENMO_IGNORED):
                continue
            module = key[: -len(suffix_a)]
            b_info = ckpt.infos.get(module + suffix_b)
            if b_info is None or len(info.shape) != 2 or len(b_info.shape) != 2:
                continue  # load_lora refuses such a file; nothing to count
            rank, in_f = info.shape
            out_rows = b_info.shape[0]
            inner = module
            if layout == "diffusers":
                prefix = next((p for p in _DIFFUSERS_PREFIXES if module.startswith(p)), "")
                inner = module[len(prefix) :]
                if _QKV.search(inner):
                    out_rows *= 3  # a q/k/v third is held at the fused weight's height
            nbytes = rank * (in_f + out_rows) * itemsize
            m = _BLOCK.search(inner)
            if m and int(m.group(1)) < depth:
                blocks[int(m.group(1))] += nbytes
            else:
                other += nbytes
    return other, blocks


def lora_runtime_bytes(paths: Sequence[str | os.PathLike[str]], *, depth: int, itemsize: int) -> tuple[int, list[int]]:
    """(bytes outside the blocks, [bytes of block i]) that the run-time paths of the LoRA files ``paths`` add to a DiT
    of ``depth`` blocks computing in a dtype of ``itemsize`` bytes. Raises as :func:`mochi_core.load_lora` for files
    that are no Mochi LoRA."""
    other, blocks = 0, [0] * depth
    for path in paths:
        o, b = _file_bytes(path, itemsize, depth)
        other += o
        blocks = [x + y for x, y in zip(blocks, b)]
    return other, blocks
