"""Bytes one rank sends to other ranks, per sampling step and once per video, for a parallel layout.

Counted as :class:`~mochi_core.parallel.comm.Comm` counts them (the payload that must leave the rank, whatever
algorithm the backend uses). Per DiT call, for the rank with the most tokens (n = ceil(N / sp), N visual tokens,
B samples per call on this rank, h = heads / sp, D = head width, a = bytes of the compute dtype, L = valid text
tokens of the call, P = patch² · channels, depth blocks):

- q, k, v to the head owners:      depth · 3 · B · n · h · D · (sp − 1) · a
- attention output back:           depth · B · h · D · (N − n) · a
- text output of this rank's heads: depth · B · L · h · D · (sp − 1) · a
- predictions after the final layer: B · n · P · 4 · (sp − 1)        (float32; uneven slices padded to n)
- CFG-parallel, the other half's prediction: B · C · T · H · W · 4   (float32 latent-sized)

B is 1 on each CFG rank, 2 without CFG-parallel (cond and uncond batched, the single-GPU default). Once per video:
the T5 features (prompt and negative, 256 x 4096 float32 each, plus masks) from rank 0 to every other rank, and
each tile a rank decodes for rank 0 (float32, its share of the video with the tile overlaps).
"""

from __future__ import annotations

from typing import Any

from .layout import ParallelLayout

__all__ = ["step_bytes"]


def step_bytes(
    layout: ParallelLayout,
    *,
    dit_config: Any,
    latent: tuple[int, int, int],
    text_tokens: int,
    compute_bytes: int = 2,
    batch_cfg: bool = True,
) -> dict[str, int]:
    """Bytes sent per sampling step by the busiest rank (sequence index 0), by part, and their "total".

    ``latent`` (T, H, W) latent size; ``text_tokens`` valid text tokens of the longest call (at most 256);
    ``compute_bytes`` 2 for bf16, 4 for fp32; ``batch_cfg``: cond and uncond in one call when not CFG-parallel.
    """
    cfg = dit_config
    t, h, w = latent
    p = cfg.patch_size
    n_all = t * (h // p) * (w // p)
    sp = layout.sp
    n = -(-n_all // sp)
    heads = cfg.num_heads // sp
    d = cfg.head_dim
    b = 1 if layout.cfg_parallel or not batch_cfg else 2
    calls = 1 if layout.cfg_parallel or batch_cfg else 2
    a = compute_bytes
    parts = {
        "qkv_all_to_all": cfg.depth * 3 * b * n * heads * d * (sp - 1) * a,
        "output_all_to_all": cfg.depth * b * heads * d * (n_all - n) * a,
        "text_all_gather": cfg.depth * b * text_tokens * heads * d * (sp - 1) * a,
        "prediction_all_gather": b * n * cfg.patch_out * 4 * (sp - 1),
    }
    parts = {k: v * calls for k, v in parts.items()}
    parts["cfg_all_gather"] = b * cfg.in_channels * t * h * w * 4 if layout.cfg_parallel else 0
    parts["total"] = sum(parts.values())
    return parts
