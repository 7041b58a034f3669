"""Building blocks of the Mochi causal VAE.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/vae/models.py`` (GroupNormSpatial, ContextParallelConv3d
with ``causal=True``, Conv1x1, DepthToSpaceTime, ResBlock, Attention / AttentionBlock, add_fourier_features);
docs/numerics.md §4.2. Written from the spec; no upstream code.

Two additions that do not change the math of a whole decode:

- **streaming** (``CausalConv3d.streaming``): a causal conv keeps the last ``k_t - 1`` frames of its (padded)
  input as a cache, and the next call prepends them instead of replicating its first frame. Decoding temporal
  chunks one after another then gives exactly the frames of one whole decode (the decoder is causal and its
  GroupNorm is per frame, so nothing else couples frames).
- **shared GroupNorm statistics** (:class:`NormContext`): per-frame statistics can be *collected* over the part of
  the frame a spatial tile owns and later *applied* instead of the tile's own statistics, so every tile of a frame
  is normalised with (nearly) the statistics of the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = [
    "NormContext",
    "GroupNormPerFrame",
    "CausalConv3d",
    "Conv1x1",
    "ResBlock",
    "AttentionBlock",
    "add_fourier_features",
    "FRAME_CHUNK",
    "frame_chunk",
    "ATTENTION_MAX_ROWS",
    "row_chunks",
]

#: at most this many frames are normalised / projected per inner step (the official GroupNorm uses 8; no
#: numerical effect). :func:`frame_chunk` lowers it for short inputs so temporaries stay near 1/4 of a feature map.
FRAME_CHUNK = 8
GROUPS = 32


#: most (h, w) locations one temporal-attention call takes. Each location is one batch entry of
#: ``scaled_dot_product_attention``, and CUDA kernels put the batch on a grid axis limited to 65,535 blocks; the
#: first encoder attention at 848x480 has 424 * 240 = 101,760 locations. 2**15 keeps every call well under the
#: limit (Genmo's encoder splits at the same size).
ATTENTION_MAX_ROWS = 2**15


def frame_chunk(t: int) -> int:
    """Frames per inner step for a T-frame feature map: min(8, max(1, T // 4))."""
    return max(1, min(FRAME_CHUNK, t // 4))


def row_chunks(rows: int, limit: int | None = None) -> list[tuple[int, int]]:
    """[start, end) ranges of at most ``limit`` (default :data:`ATTENTION_MAX_ROWS`) covering ``rows``, evenly
    sized (so no call is much smaller than the others)."""
    limit = ATTENTION_MAX_ROWS if limit is None else limit
    n = max(1, -(-rows // limit))
    bounds = [rows * i // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


@dataclass
class NormContext:
    """Shared by every :class:`GroupNormPerFrame` of a model during a tiled decode.

    mode: ``"local"`` (each call normalises with its own statistics, the official behaviour), ``"collect"``
    (local, and also accumulate sums over ``owned`` into ``store``), ``"apply"`` (normalise with ``store``).
    ``owned``: (y0, y1, x0, x1) in latent pixels relative to the current tile input; scaled per layer by its
    ``scale`` (spatial size of its feature map over the latent size). ``store[layer_id]`` = (sum, sumsq, count)
    float64 tensors of shape (frames, B, groups).
    """

    mode: str = "local"
    owned: tuple[int, int, int, int] | None = None
    store: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class GroupNormPerFrame(nn.Module):
    """GroupNorm(32 groups, eps 1e-5) applied to each frame on its own, computed in float32.

    x: (B, C, T, H, W) -> (B, C, T, H, W) in x's dtype; optional fused SiLU (``act``); ``out`` may be ``x``.
    """

    def __init__(self, channels: int, *, affine: bool = True, eps: float = 1e-5, scale: int = 1) -> None:
        super().__init__()
        self.num_channels = channels
        self.eps = eps
        self.scale = scale
        self.layer_id = -1
        self.ctx: NormContext | None = None
        self.frame_offset = 0
        if affine:
            self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
            self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _region(self, h: int, w: int) -> tuple[int, int, int, int]:
        ctx = self.ctx
        if ctx is None or ctx.owned is None:
            return 0, h, 0, w
        y0, y1, x0, x1 = (v * self.scale for v in ctx.owned)
        return y0, min(y1, h), x0, min(x1, w)

    def forward(self, x: torch.Tensor, *, act: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = torch.empty_like(x) if out is None else out
        dev = x.device
        wt = ops.cast_to(self.weight, torch.float32, dev)
        bs = ops.cast_to(self.bias, torch.float32, dev)
        ctx = self.ctx
        mode = "local" if ctx is None else ctx.mode
        cg = c // GROUPS
        step = frame_chunk(t)
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            xm = x[:, :, t0:t1].movedim(2, 1).reshape(b * (t1 - t0), c, h, w).to(torch.float32)
            if mode == "apply":
                s1, s2, n = (v[self.frame_offset + t0 : self.frame_offset + t1] for v in ctx.store[self.layer_id])
                mean = (s1 / n).transpose(0, 1).reshape(b * (t1 - t0), GROUPS)
                var = (s2 / n).transpose(0, 1).reshape(b * (t1 - t0), GROUPS) - mean * mean
                rstd = torch.rsqrt(var.clamp_min(0) + self.eps)
                g = xm.view(b * (t1 - t0), GROUPS, cg, h, w)
                mean = mean.to(device=dev, dtype=torch.float32)[:, :, None, None, None]
                g = (g - mean) * rstd.to(device=dev, dtype=torch.float32)[:, :, None, None, None]
                yn = g.view(b * (t1 - t0), c, h, w)
                if wt is not None:
                    yn = yn * wt[None, :, None, None] + bs[None, :, None, None]
            else:
                yn = F.group_norm(xm, GROUPS, wt, bs, self.eps)
                if mode == "collect":
                    self._collect(xm, b, t0, t1)
            if act:
                yn = F.silu(yn, inplace=True)
            y[:, :, t0:t1] = yn.view(b, t1 - t0, c, h, w).movedim(1, 2)
        if ctx is not None:
            self.frame_offset += t
        return y

    def _collect(self, xm: torch.Tensor, b: int, t0: int, t1: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        n_t = t1 - t0
        _, c, h, w = xm.shape
        y0, y1, x0, x1 = self._region(h, w)
        reg = xm[:, :, y0:y1, x0:x1].reshape(b * n_t, GROUPS, -1)
        s1 = reg.sum(-1).to(torch.float64).view(b, n_t, GROUPS).transpose(0, 1)
        s2 = reg.square().sum(-1).to(torch.float64).view(b, n_t, GROUPS).transpose(0, 1)
        cnt = torch.full_like(s1, float(reg.shape[-1]))
        f0, f1 = self.frame_offset + t0, self.frame_offset + t1
        entry = ctx.store.get(self.layer_id)
        if entry is None or entry[0].shape[0] < f1:
            grow = [torch.zeros(f1, b, GROUPS, dtype=torch.float64) for _ in range(3)]
            if entry is not None:
                for g_new, g_old in zip(grow, entry):
                    g_new[: g_old.shape[0]] = g_old
            entry = grow
            ctx.store[self.layer_id] = entry
        entry[0][f0:f1] += s1.cpu()
        entry[1][f0:f1] += s2.cpu()
        entry[2][f0:f1] += cnt.cpu()


class CausalConv3d(ops.Conv3d):
    """Conv3d with causal temporal padding (k_t - 1 copies of the first frame in front) and replicate spatial padding
    ((k - 1) // 2 on H and W). Cast-on-use weights (``mochi_core.ops``).

    x: (B, C_in, T, H, W) -> (B, C_out, T', H', W') with T' = (T + k_t - 1 - k_t) // s_t + 1.
    With ``streaming`` on, the first call pads as above and every later call prepends the cached last k_t - 1
    input frames of the previous call (stride-1 convs only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)
        self.pad_h = (kernel_size[1] - 1) // 2
        self.pad_w = (kernel_size[2] - 1) // 2
        self.streaming = False
        self.cache: torch.Tensor | None = None

    def padded_buffer(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An uninitialised padded input buffer for an input shaped like ``like`` (B, C, T, H, W), and the view of
        its interior where the input goes (so a GroupNorm can write there directly, saving one feature map)."""
        b, c, t, h, w = like.shape
        ctx_t, ph, pw = self.kernel_size[0] - 1, self.pad_h, self.pad_w
        buf = like.new_empty(b, c, t + ctx_t, h + 2 * ph, w + 2 * pw)
        return buf, buf[:, :, ctx_t:, ph : ph + h, pw : pw + w]

    def conv_padded(self, buf: torch.Tensor) -> torch.Tensor:
        """Fill the causal frames (cache or replicated first frame) and the replicate borders of a buffer from
        :meth:`padded_buffer` whose interior holds the input, then convolve it (no further padding)."""
        ctx_t, ph, pw = self.kernel_size[0] - 1, self.pad_h, self.pad_w
        _, _, tp, hp, wp = buf.shape
        h, w = hp - 2 * ph, wp - 2 * pw
        if ctx_t:
            front = buf[:, :, :ctx_t, ph : ph + h, pw : pw + w]
            if self.streaming and self.cache is not None:
                front.copy_(self.cache)
            else:
                front.copy_(buf[:, :, ctx_t : ctx_t + 1, ph : ph + h, pw : pw + w].expand_as(front))
        if ph:
            buf[:, :, :, :ph, pw : pw + w] = buf[:, :, :, ph : ph + 1, pw : pw + w]
            buf[:, :, :, ph + h :, pw : pw + w] = buf[:, :, :, ph + h - 1 : ph + h, pw : pw + w]
        if pw:
            buf[:, :, :, :, :pw] = buf[:, :, :, :, pw : pw + 1]
            buf[:, :, :, :, pw + w :] = buf[:, :, :, :, pw + w - 1 : pw + w]
        if ctx_t and self.streaming:
            self.cache = buf[:, :, tp - ctx_t :, ph : ph + h, pw : pw + w].clone()
        return super().forward(buf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf, inner = self.padded_buffer(x)
        inner.copy_(x)
        return self.conv_padded(buf)


class Conv1x1(ops.Linear):
    """1x1 convolution as a linear layer over the channel axis: (B, C_in, ...) -> (B, C_out, ...)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock(nn.Module):
    """x + Conv(SiLU(GN(Conv(SiLU(GN(x)))))) with causal 3x3x3 convs; optional temporal attention after the sum.

    Keys: ``stack.0`` / ``stack.3`` GroupNorms, ``stack.2`` / ``stack.5`` convs (1 and 4 are the SiLUs),
    ``attn_block.*``. x: (B, C, T, H, W) -> same shape.
    """

    def __init__(
        self, channels: int, *, attention: bool = False, affine: bool = True, bias: bool = True, scale: int = 1
    ):
        super().__init__()
        self.stack = nn.ModuleList(
            [
                GroupNormPerFrame(channels, affine=affine, scale=scale),
                nn.SiLU(),
                CausalConv3d(channels, channels, (3, 3, 3), bias=bias),
                GroupNormPerFrame(channels, affine=affine, scale=scale),
                nn.SiLU(),
                CausalConv3d(channels, channels, (3, 3, 3), bias=bias),
            ]
        )
        self.attn_block = AttentionBlock(channels) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm1, _, conv1, norm2, _, conv2 = self.stack
        buf, inner = conv1.padded_buffer(x)
        norm1(x, act=True, out=inner)  # GroupNorm + SiLU written straight into the conv's padded input
        h = conv1.conv_padded(buf)
        del buf, inner  # free the first padded input before the second is allocated
        buf, inner = conv2.padded_buffer(h)
        norm2(h, act=True, out=inner)
        del h, inner
        h = conv2.conv_padded(buf)
        del buf
        h += x
        if self.attn_block is not None:
            h = self.attn_block(h)
        return h


class _Attention(nn.Module):
    """Causal temporal self-attention at every (h, w) location; q, k L2-normalised, scale 1/sqrt(head_dim)."""

    def __init__(self, dim: int, head_dim: int = 32) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = ops.Linear(dim, 3 * dim, bias=False)
        self.out = ops.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if t == 1:
            v = self.qkv(x.movedim(1, -1))[..., 2 * c :]
            return self.out(v).movedim(-1, 1)
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        # every location attends on its own, so the rows split into independent calls of bounded batch
        chunks = row_chunks(b * h * w)
        out = seq.new_empty(seq.shape) if len(chunks) > 1 else None
        for r0, r1 in chunks:
            o = self._rows(seq[r0:r1])
            if out is None:
                out = o
            else:
                out[r0:r1] = o
        return out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)

    def _rows(self, seq: torch.Tensor) -> torch.Tensor:
        """(R, T, C) sequences, one per location -> (R, T, C): causal attention over T for each row."""
        c = seq.shape[-1]
        qkv = self.qkv(seq).unflatten(2, (3, c // self.head_dim, self.head_dim))
        q, k, v = (u.transpose(1, 2) for u in qkv.unbind(2))
        q = F.normalize(q, p=2, dim=-1)
        k = F.normalize(k, p=2, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim**-0.5)
        return self.out(o.transpose(1, 2).flatten(2))


class AttentionBlock(nn.Module):
    """x + Attn(GN(x)) (encoder only). Keys ``norm.*``, ``attn.qkv.weight``, ``attn.out.*``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = GroupNormPerFrame(channels)
        self.attn = _Attention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def add_fourier_features(video: torch.Tensor, start: int = 6, stop: int = 8) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C * (1 + 2 * (stop - start)), T, H, W): [x, sin(x * w), cos(x * w)] with
    w = 2**k * 2*pi for k in [start, stop), channels interleaved as [c0 w6, c0 w7, c1 w6, ...]; float32."""
    x = video.to(torch.float32)
    freqs = torch.arange(start, stop, dtype=torch.float32, device=x.device)
    w = (torch.pow(2.0, freqs) * (2 * torch.pi)).repeat(x.shape[1])[None, :, None, None, None]
    hx = x.repeat_interleave(stop - start, dim=1) * w
    return torch.cat([x, torch.sin(hx), torch.cos(hx)], dim=1)
