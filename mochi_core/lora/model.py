"""What a LoRA file holds once read: low-rank parts, each aimed at one Linear of the official DiT.

A part adds ``scale · strength · (up @ down)`` to the weight of one official Linear (``blocks.3.attn.qkv_x``), or to
a third of its output rows (a diffusers q, k or v projection of a fused qkv weight). ``scale`` comes from the file
(alpha / rank); ``strength`` is the user's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["LoRAPart", "LoRA"]

_BLOCK = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True, eq=False)
class LoRAPart:
    """One low-rank update. ``down``: (r, in), ``up``: (rows, r), as stored in the file (any float dtype; a diffusers
    SwiGLU / final-modulation ``up`` already has its halves in official order).

    ``layer``: official module name; ``key``: the file key of ``down`` (for messages); ``third``: None (``up``
    covers every output row) or 0 / 1 / 2 (``up`` covers the q / k / v third of a fused qkv weight);
    ``scale``: the file's alpha / rank (1.0 when the file gives no alpha).
    """

    layer: str
    key: str
    down: torch.Tensor
    up: torch.Tensor
    third: int | None
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_rows(self) -> int:
        """Output rows of the whole target weight this part implies (3 x ``up`` rows for a q/k/v third)."""
        rows = int(self.up.shape[0])
        return rows if self.third is None else 3 * rows

    @property
    def block(self) -> int | None:
        """Index of the transformer block of the target layer, or None outside the blocks."""
        m = _BLOCK.match(self.layer)
        return int(m.group(1)) if m else None


@dataclass(frozen=True, eq=False)
class LoRA:
    """A LoRA read by :func:`mochi_core.load_lora`. Apply it with :func:`mochi_core.apply_loras`.

    ``name``: the file name (messages name it); ``path``; ``layout``: "genmo" (Genmo's fine-tuner) or "diffusers"
    (diffusers / peft trainers); ``parts``: the low-rank updates, in file order.
    """

    name: str
    path: str
    layout: str
    parts: tuple[LoRAPart, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """Official names of the Linear layers this LoRA changes, sorted."""
        return tuple(sorted({p.layer for p in self.parts}))

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({p.rank for p in self.parts}))

    def runtime_bytes(self, itemsize: int) -> dict[int | None, int]:
        """Bytes the run-time path holds for this LoRA with factors of ``itemsize`` bytes, per block index (None:
        layers outside the blocks). A q/k/v third's ``up`` is held at the full output height (zeros elsewhere)."""
        out: dict[int | None, int] = {}
        for p in self.parts:
            in_f = int(p.down.shape[1])
            out[p.block] = out.get(p.block, 0) + p.rank * (in_f + p.out_rows) * itemsize
        return out

    def __repr__(self) -> str:
        return f"LoRA({self.name!r}, layout={self.layout}, layers={len(self.layers)}, ranks={list(self.ranks)})"
