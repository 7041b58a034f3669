"""Timestep embedding and caption attention pooling of the AsymmDiT.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/layers.py`` (TimestepEmbedder,
AttentionPool, ``timestep_embedding``); docs/numerics.md §2.3 "Timestep embedding" and "Caption pooling".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["timestep_sinusoid", "TimestepEmbedder", "masked_mean", "AttentionPool"]


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t: (B,) -> (B, dim) float32 = [cos(t f), sin(t f)] (cosine half first), f_k = exp(-ln(max_period) k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """(B,) timesteps (already ``(1 - sigma)``) -> (B, hidden) via sinusoid(t·scale) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, freq_dim: int, timestep_scale: float, *, device: torch.device | str | None = None):
        super().__init__()
        self.freq_dim = freq_dim
        self.timestep_scale = timestep_scale
        self.mlp = nn.Sequential(
            ops.Linear(freq_dim, hidden, device=device), nn.SiLU(), ops.Linear(hidden, hidden, device=device)
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = timestep_sinusoid(t.to(torch.float32) * self.timestep_scale, self.freq_dim)
        return self.mlp(emb.to(dtype))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) features, (B, L) bool mask -> (B, D) float32 mean over the valid tokens (0 when there are none).

    Computed in float32 whatever the input dtype; masked positions are selected away (``torch.where``), never
    multiplied by zero, so a NaN or inf in padding cannot reach the mean.
    """
    valid = mask.to(torch.bool)
    weights = valid.to(torch.float32)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)  # (B, L): 1/count on valid tokens
    terms = x.to(torch.float32) * weights[:, :, None]
    return torch.where(valid[:, :, None], terms, 0.0).sum(dim=1)


class AttentionPool(nn.Module):
    """Pool T5 tokens into one vector with a single query made from their masked mean.

    x: (B, L, D) features, mask: (B, L) bool -> (B, out). Keys/values come from [mean, tokens]; the mean slot is
    always attended, tokens only where ``mask`` is true (an all-False mask gives mean = 0 and attends only to it).
    The mean is taken in float32 from ``x`` as given (pass the T5 output before casting it to the compute dtype);
    the projections run in ``dtype`` (default: x's dtype). Padded tokens are zeroed before the key/value projection,
    so non-finite padding cannot leak through the masked attention either.
    """

    def __init__(self, dim: int, heads: int, out_dim: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.heads = heads
        self.to_kv = ops.Linear(dim, 2 * dim, device=device)
        self.to_q = ops.Linear(dim, dim, device=device)
        self.to_out = ops.Linear(dim, out_dim, device=device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        b, length, d = x.shape
        dtype = dtype or x.dtype
        mask = mask.to(torch.bool)
        pooled = masked_mean(x, mask)[:, None].to(dtype)  # (B, 1, D)
        tokens = torch.where(mask[:, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device)).to(dtype)
        seq = torch.cat([pooled, tokens], dim=1)  # (B, 1 + L, D)
        hd = d // self.heads
        kv = self.to_kv(seq).unflatten(2, (2, self.heads, hd)).permute(2, 0, 3, 1, 4)  # (2, B, H, 1+L, hd)
        q = self.to_q(seq[:, 0]).reshape(b, self.heads, 1, hd)
        attn_mask = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1+L)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)  # (B, H, 1, hd)
        return self.to_out(out.reshape(b, d))
