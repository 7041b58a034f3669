"""The Mochi causal video decoder: (B, 12, T, H, W) VAE-space latent -> (B, 3, 6(T-1)+1, 8H, 8W) video in ~[-1, 1].

Semantics of genmoai/mochi ``src/genmo/mochi_preview/vae/models.py`` (Decoder, CausalUpsampleBlock,
DepthToSpaceTime); docs/numerics.md §4.3. Keys are the official ones (``blocks.0.0``, ``blocks.{b}.blocks.{i}``,
``blocks.{b}.proj``, ``blocks.{n}.{i}``, ``output_proj``).

Streaming (:meth:`Decoder.start_stream`): consecutive calls on consecutive temporal chunks of one latent decode
to the same frames as one whole call, because every temporal coupling is a causal conv whose context is carried
(``CausalConv3d.cache``) and the depth-to-space-time frame drop happens only in the first chunk. A decode of one
chunk per tile starts the stream with ``carry=False``: nothing follows, so no conv keeps a cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import InvalidInputError
from .config import DecoderConfig
from .layers import CausalConv3d, GroupNormPerFrame, NormContext, ResBlock, frame_chunk

__all__ = ["Decoder", "UpsampleBlock"]


class UpsampleBlock(nn.Module):
    """Res blocks, then Conv1x1 to C_out * t * s * s and depth-to-space-time; drops the first t - 1 frames
    (in streaming mode only on the first chunk). x: (B, C_in, T, H, W) -> (B, C_out, tT - (t-1), sH, sW)."""

    def __init__(self, c_in: int, c_out: int, num_res: int, t: int, s: int, scale: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(c_in, scale=scale) for _ in range(num_res)])
        self.proj = ops.Linear(c_in, c_out * t * s * s)
        self.t, self.s, self.c_out = t, s, c_out
        self.streaming = False
        self.first_done = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        b, _, t, h, w = x.shape
        st, s, co = self.t, self.s, self.c_out
        drop = 0 if (self.streaming and self.first_done) else st - 1
        self.first_done = True
        y = x.new_empty(b, co, t * st - drop, h * s, w * s)
        wgt = self.proj.compute_weight(x.dtype, x.device)
        bias = self.proj.compute_bias(x.dtype, x.device)
        step = frame_chunk(t)
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            n = t1 - t0
            p = F.linear(x[:, :, t0:t1].movedim(1, -1), wgt, bias)
            p = p.view(b, n, h, w, co, st, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, co, n * st, h * s, w * s)
            f0 = t0 * st - drop
            skip = max(0, -f0)
            y[:, :, f0 + skip : t1 * st - drop] = p[:, :, skip:]
        return y


class Decoder(nn.Module):
    """Official Mochi decoder with cast-on-use weights. See module docstring."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or DecoderConfig()
        self.config = cfg
        ch = cfg.channels
        n_up = len(ch) - 1
        first: list[nn.Module] = [ops.Conv3d(cfg.latent_dim, ch[-1], (1, 1, 1))]
        first += [ResBlock(ch[-1], scale=1) for _ in range(cfg.num_res_blocks[-1])]
        blocks: list[nn.Module] = [nn.ModuleList(first)]
        scale = 1
        for i in range(n_up):
            t, s = cfg.temporal_expansions[-i - 1], cfg.spatial_expansions[-i - 1]
            blocks.append(UpsampleBlock(ch[-i - 1], ch[-i - 2], cfg.num_res_blocks[-i - 2], t, s, scale))
            scale *= s
        blocks.append(nn.ModuleList([ResBlock(ch[0], scale=scale) for _ in range(cfg.num_res_blocks[0])]))
        self.blocks = nn.ModuleList(blocks)
        self.output_proj = ops.Linear(ch[0], cfg.out_channels)
        for i, m in enumerate(m for m in self.modules() if isinstance(m, GroupNormPerFrame)):
            m.layer_id = i

    # ------------------------------------------------------------------ streaming / tiling hooks
    def start_stream(self, norm_ctx: NormContext | None = None, *, carry: bool = True) -> None:
        """Begin a temporal stream: clear conv caches, first-chunk flags and frame counters.

        ``carry``: later calls continue the previous one (causal context cached by every conv). With
        ``carry=False`` (a single chunk) each call is a whole decode and no cache is kept; ``norm_ctx`` still applies.
        """
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.streaming, m.cache = carry, None
            elif isinstance(m, UpsampleBlock):
                m.streaming, m.first_done = carry, False
            elif isinstance(m, GroupNormPerFrame):
                m.ctx, m.frame_offset = norm_ctx, 0

    def end_stream(self) -> None:
        """Back to whole-call mode; frees the caches."""
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.streaming, m.cache = False, None
            elif isinstance(m, UpsampleBlock):
                m.streaming, m.first_done = False, False
            elif isinstance(m, GroupNormPerFrame):
                m.ctx, m.frame_offset = None, 0

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, latent_dim, T, H, W) in the compute dtype -> (B, out_channels, T_out, 8H, 8W) (T_out = 6(T-1)+1
        for a whole call; 6T - 5 for the first streamed chunk and 6T for later ones).

        ``out``: a tensor (or view) of that shape, any floating dtype, that receives the result directly (the caller's
        output accumulator), so the decoded frames are never held twice; it is returned.
        """
        x = z
        for i, stage in enumerate(self.blocks):
            if isinstance(stage, nn.ModuleList):
                for m in stage:
                    x = m(x)
            else:
                x = stage(x)
            if i == 0:
                del z
        b, c, t, h, w = x.shape
        shape = (b, self.config.out_channels, t, h, w)
        if out is None:
            out = x.new_empty(shape)
        elif tuple(out.shape) != shape:
            raise InvalidInputError(f"out must have shape {shape} (the decoded chunk); got {tuple(out.shape)}")
        wgt = self.output_proj.compute_weight(x.dtype, x.device)
        bias = self.output_proj.compute_bias(x.dtype, x.device)
        step = frame_chunk(t)
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            a = F.silu(x[:, :, t0:t1])
            out[:, :, t0:t1] = F.linear(a.movedim(1, -1), wgt, bias).movedim(-1, 1)
        return out
