"""The Mochi video encoder: (B, 15, F, H, W) Fourier-featured video -> posterior mean and log-variance
(B, 12, (F-1)/6+1, H/8, W/8).

Semantics of genmoai/mochi ``src/genmo/mochi_preview/vae/models.py`` (Encoder, DownsampleBlock, AttentionBlock,
add_fourier_features) and ``latent_dist.py``; docs/numerics.md §4.2, §4.4. Keys are the official ones (``layers.*``,
``output_norm``, ``output_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .config import EncoderConfig
from .layers import CausalConv3d, Conv1x1, GroupNormPerFrame, ResBlock

__all__ = ["Encoder", "DownsampleBlock"]


class DownsampleBlock(nn.Module):
    """Causal strided conv (kernel = stride = (t, s, s), t - 1 replicated frames in front) then res blocks."""

    def __init__(self, c_in: int, c_out: int, num_res: int, t: int, s: int, attention: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv3d(c_in, c_out, (t, s, s), stride=(t, s, s))]
        layers += [ResBlock(c_out, attention=attention) for _ in range(num_res)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = m(x)
        return x


class Encoder(nn.Module):
    """Official Mochi encoder with cast-on-use weights."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or EncoderConfig()
        self.config = cfg
        ch = cfg.channels
        layers: list[nn.Module] = [Conv1x1(cfg.in_channels, ch[0])]
        layers += [ResBlock(ch[0], attention=cfg.has_attentions[0]) for _ in range(cfg.num_res_blocks[0])]
        for i in range(len(ch) - 1):
            layers.append(
                DownsampleBlock(
                    ch[i],
                    ch[i + 1],
                    cfg.num_res_blocks[i + 1],
                    cfg.temporal_reductions[i],
                    cfg.spatial_reductions[i],
                    cfg.has_attentions[i + 1],
                )
            )
        layers += [ResBlock(ch[-1], attention=cfg.has_attentions[-1]) for _ in range(cfg.num_res_blocks[-1])]
        self.layers = nn.ModuleList(layers)
        self.output_norm = GroupNormPerFrame(ch[-1])
        self.output_proj = ops.Linear(ch[-1], 2 * cfg.latent_dim, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in_channels, F, H, W) (video with Fourier features) -> (mean, logvar), each (B, 12, t, h, w)."""
        for m in self.layers:
            x = m(x)
        x = self.output_norm(x, act=True)
        x = F.linear(x.movedim(1, -1), self.output_proj.compute_weight(x.dtype, x.device)).movedim(-1, 1)
        mean, logvar = x.chunk(2, dim=1)
        return mean, logvar
