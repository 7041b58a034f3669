"""Timestep embedding and caption attention pooling of the AsymmDiT.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/layers.py`` (TimestepEmbedder,
AttentionPool, ``timestep_embedding``); mochi-spec.md §2.3 "Timestep embedding" and "Caption pooling".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["timestep_sinusoid", "TimestepEmbedder", "AttentionPool"]


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


class AttentionPool(nn.Module):
    """Pool T5 tokens into one vector with a single query made from their masked mean.

    x: (B, L, D) features, mask: (B, L) bool -> (B, out). Keys/values come from [mean, tokens]; the mean slot is
    always attended, tokens only where ``mask`` is true (an all-False mask gives mean = 0 and attends only to it).
    """

    def __init__(self, dim: int, heads: int, out_dim: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.heads = heads
        self.to_kv = ops.Linear(dim, 2 * dim, device=device)
        self.to_q = ops.Linear(dim, dim, device=device)
        self.to_out = ops.Linear(dim, out_dim, device=device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        w = mask[:, :, None].to(x.dtype)
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = (x * w).sum(dim=1, keepdim=True)  # (B, 1, D)
        seq = torch.cat([pooled, x], dim=1)  # (B, 1 + L, D)
        hd = d // self.heads
        kv = self.to_kv(seq).unflatten(2, (2, self.heads, hd)).permute(2, 0, 3, 1, 4)  # (2, B, H, 1+L, hd)
        q = self.to_q(seq[:, 0]).reshape(b, self.heads, 1, hd)
        attn_mask = F.pad(mask.to(torch.bool), (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1+L)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)  # (B, H, 1, hd)
        return self.to_out(out.reshape(b, d))
