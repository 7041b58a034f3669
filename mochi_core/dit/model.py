"""The AsymmDiT (Mochi 1 DiT): patch embedding, conditioning, 48 joint blocks, final layer, unpatchify.

Semantics of Genmo's ``AsymmDiTJoint`` (with its ``FinalLayer`` and ``PatchEmbed``). Call: ``model(x, sigma, t5_feat, t5_mask)`` returns the official
prediction x0 − ε in float32.

Speed notes: the valid text tokens are gathered once per forward (the text stream runs only on them; padded
tokens never reach any visual output in the official model either), RoPE rotations are computed once per
forward, and neighbouring samples with equal valid-token counts share one attention call.

Memory: sequences longer than ``token_chunk`` visual tokens run the per-token parts of every block in chunks of
that many tokens (``mochi_core/dit/block.py``); the planner models the same constant.

Sampling helpers (used by ``mochi_core.sampling``; the plain call is unchanged):
- ``skip_blocks``: blocks passed through unchanged (spatiotemporal skip guidance's perturbed pass);
- ``cache`` (:class:`StreamCache`): TeaCache for one stream. ``action`` "probe" returns block 0's modulated input
  (B, N, Dx) without running the blocks; "compute" runs the forward and keeps the residual
  r = (input of ``final_layer.linear``) − (``x_embedder`` output); "reuse" skips every block and the final norm
  and returns ``final_layer.linear(x_embedder output + r)`` unpatchified. A computed call is the plain forward
  (same functions in the same order), so its output equals the uncached one bit for bit.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import InvalidInputError
from ..finite import verify_weights
from .attention import TokenCounts, check_backend
from .block import DEFAULT_TOKEN_CHUNK, AsymmetricJointBlock
from .config import DiTConfig
from .embeddings import AttentionPool, TimestepEmbedder
from .rope import rope_frequencies

__all__ = ["AsymmDiT", "PatchEmbed", "FinalLayer", "StreamCache", "DEFAULT_TOKEN_CHUNK"]

FINAL_NORM_EPS = 1e-6
CACHE_ACTIONS = ("probe", "compute", "reuse")


@dataclass
class StreamCache:
    """TeaCache state of one stream of DiT calls (cond, uncond or perturbed; or one CFG batch).

    ``action``: what the next call does ("probe", "compute", "reuse"; see the module docstring); ``residual``:
    (B, N, Dx) in the compute dtype, set by the last computed call.
    """

    action: str = "compute"
    residual: torch.Tensor | None = None


class PatchEmbed(nn.Module):
    """Per-frame Conv2d (kernel = stride = patch). (B, C, T, H, W) -> (B, T·H/p·W/p, D), T slowest."""

    def __init__(self, in_channels: int, dim: int, patch: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.proj = ops.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(frames)  # (B·T, D, h/p, w/p)
        return out.flatten(2).transpose(1, 2).reshape(b, -1, out.shape[1])


class FinalLayer(nn.Module):
    """LayerNorm (no affine, eps 1e-6) · (1 + scale) + shift, then Linear to patch²·C. mod -> [shift | scale]."""

    def __init__(self, dim: int, out: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.mod = ops.Linear(dim, 2 * dim, device=device)
        self.linear = ops.Linear(dim, out, device=device)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D), c: (B, D) = SiLU(conditioning) -> (B, N, out)."""
        return self.linear(self.normalize(x, c))

    def normalize(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The input of ``linear``: LayerNorm(x)·(1 + scale) + shift in float32, cast to x's dtype. (B, N, D)."""
        shift, scale = self.mod(c.to(x.dtype)).to(torch.float32).unsqueeze(1).chunk(2, dim=-1)
        h = F.layer_norm(x.to(torch.float32), (x.shape[-1],), eps=FINAL_NORM_EPS)
        return (h * (1.0 + scale) + shift).to(x.dtype)


class AsymmDiT(nn.Module):
    """Mochi's asymmetric joint DiT. Build with :func:`mochi_core.load_dit`; parameters use the official names.

    Attributes: ``config`` (:class:`DiTConfig`), ``compute_dtype``, ``attention`` (backend name),
    ``blocks`` (nn.ModuleList, one entry per block, looped over in forward).
    """

    def __init__(
        self,
        config: DiTConfig,
        *,
        device: torch.device | str | None = None,
        compute_dtype: torch.dtype = torch.float32,
        attention: str = "sdpa",
    ):
        super().__init__()
        config.validate()
        self.config = config
        self.compute_dtype = compute_dtype
        self.attention = check_backend(attention)
        self.token_chunk: int | None = DEFAULT_TOKEN_CHUNK
        dx, dy = config.hidden_size_x, config.hidden_size_y
        self.pos_frequencies = nn.Parameter(
            torch.empty(3, config.num_heads, config.head_dim // 2, device=device), requires_grad=False
        )
        self.x_embedder = PatchEmbed(config.in_channels, dx, config.patch_size, device=device)
        self.t_embedder = TimestepEmbedder(dx, config.frequency_embedding_size, config.timestep_scale, device=device)
        self.t5_y_embedder = AttentionPool(config.t5_feat_dim, config.pooler_heads, dx, device=device)
        self.t5_yproj = ops.Linear(config.t5_feat_dim, dy, device=device)
        self.blocks = nn.ModuleList(
            AsymmetricJointBlock(
                dx,
                dy,
                config.num_heads,
                config.mlp_hidden_x,
                config.mlp_hidden_y,
                update_y=i < config.depth - 1,
                device=device,
            )
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(dx, config.patch_out, device=device)
        #: set by mochi_core.parallel.sequence.SequenceParallel.install: this rank computes a slice of the tokens
        self.sequence_parallel: Any = None

    # ------------------------------------------------------------------ input invariants
    def _inputs(
        self, x: torch.Tensor, sigma: torch.Tensor | float, t5_feat: torch.Tensor, t5_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (B,) float32, mask (B, L) bool) on x's device. Only cheap asserts of the invariants here (shapes
        and dtypes, no host sync): user inputs are checked where they enter the pack (``sample``, the nodes)."""
        cfg, p = self.config, self.config.patch_size
        assert x.dim() == 5 and x.shape[1] == cfg.in_channels and x.is_floating_point(), (
            f"x must be a floating (B, {cfg.in_channels}, T, H, W) latent; got {tuple(x.shape)} {x.dtype}"
        )
        b, _, t, h, w = x.shape
        assert min(b, t, h, w) > 0 and h % p == 0 and w % p == 0, (
            f"x needs B, T >= 1 and H, W non-zero multiples of {p} (pixel sizes multiples of {8 * p}); got "
            f"{tuple(x.shape)}"
        )
        feat_ok = t5_feat.dim() == 3 and t5_feat.shape[0] == b and t5_feat.shape[2] == cfg.t5_feat_dim
        assert feat_ok and t5_feat.is_floating_point(), (
            f"t5_feat must be floating ({b}, L, {cfg.t5_feat_dim}); got {tuple(t5_feat.shape)} {t5_feat.dtype}"
        )
        assert t5_mask.shape == t5_feat.shape[:2] and not t5_mask.is_floating_point(), (
            f"t5_mask must be bool ({b}, {t5_feat.shape[1]}) like t5_feat; got {tuple(t5_mask.shape)} {t5_mask.dtype}"
        )
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        assert sigma.numel() in (1, b), f"sigma must be a number or a (B,) = ({b},) tensor; got {sigma.numel()} values"
        if self.attention != "sdpa" and (
            x.device.type != "cuda" or self.compute_dtype not in (torch.bfloat16, torch.float16)
        ):
            raise InvalidInputError(
                f"attention={self.attention!r} runs only on CUDA with a bf16/fp16 compute dtype; got x on "
                f"{x.device.type} with compute dtype {self.compute_dtype}; use attention='sdpa'"
            )
        return sigma.expand(b), t5_mask.to(device=x.device, dtype=torch.bool)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        t5_feat: torch.Tensor,
        t5_mask: torch.Tensor,
        *,
        skip_blocks: Collection[int] = (),
        cache: StreamCache | None = None,
    ) -> torch.Tensor:
        """x: (B, C, T, H, W) DiT-space latent, sigma: (B,) in [0, 1] (1 = noise), t5_feat: (B, L, D_t5),
        t5_mask: (B, L) bool -> (B, C, T, H, W) float32 prediction of x0 − ε.

        ``skip_blocks`` / ``cache``: see the module docstring (a "probe" returns (B, N, Dx) instead)."""
        sigma, mask = self._inputs(x, sigma, t5_feat, t5_mask)
        action = "compute" if cache is None else cache.action
        assert action in CACHE_ACTIONS, f"cache.action={action!r} is not allowed; use one of {', '.join(CACHE_ACTIONS)}"
        assert action != "reuse" or cache is None or cache.residual is not None, (
            "cache.action='reuse' needs a residual from an earlier computed call"
        )
        cfg, dtype = self.config, self.compute_dtype
        b, _, t, h, w = x.shape
        p = cfg.patch_size
        ph, pw = h // p, w // p
        t5_feat = t5_feat.to(device=x.device)

        # conditioning vector c = t_embed(1 - sigma) + pool(T5); every modulation uses SiLU(c). The caption mean is
        # taken in float32 from the features as given (the T5 output is float32), as the official code does.
        c = self.t_embedder(1.0 - sigma, dtype) + self.t5_y_embedder(t5_feat, mask, dtype)
        c = F.silu(c)
        xt = self.x_embedder(x.to(dtype))  # (B, N, Dx)
        if action == "probe":
            return self.blocks[0](xt, xt, c, xt, (), mode="probe")[0]
        if action == "reuse":
            assert cache is not None and cache.residual is not None
            sp = self.sequence_parallel
            if sp is not None:  # the residual holds this rank's tokens
                sp.bind(xt.shape[1])
                xt = xt[:, sp.start : sp.end]
            out = self.final_layer.linear(xt + cache.residual)
            return self._unpatchify(out if sp is None else sp.gather(out), b, t, h, w)

        # text stream on the valid tokens only (gathered once, order kept; official packed-path semantics)
        t5_feat = t5_feat.to(dtype)
        counts = TokenCounts(int(n) for n in mask.sum(dim=1).tolist())  # one host read per forward
        max_len = max(counts)
        prefix = torch.arange(mask.shape[1], device=mask.device)[None] < mask.sum(dim=1, keepdim=True)
        if bool((prefix == mask).all()):
            y_feat = t5_feat[:, :max_len]
        else:
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :max_len]
            y_feat = t5_feat.gather(1, order[..., None].expand(-1, -1, t5_feat.shape[-1]))
        y = self.t5_yproj(y_feat)  # (B, L_max, Dy)

        rot = rope_frequencies(self.pos_frequencies.to(x.device), t, ph, pw)  # (N, H, hd/2) complex64
        if self.attention == "flash":  # its cumulative lengths go to the device once, before the blocks
            counts.cu_seqlens(xt.shape[1], x.device)  # all visual tokens (sequence parallelism attends over all)
        attention, sp = self.attention, self.sequence_parallel
        hidden = xt
        del xt
        if sp is not None:  # this rank's slice of the visual tokens (mochi_core.parallel.sequence)
            (hidden, rot), attention = sp.shard(hidden, rot), sp.attention(self.attention)
        embedded = hidden if cache is not None else None  # kept for the residual only: else freed after block 0
        for i, block in enumerate(self.blocks):
            mode = "skip" if i in skip_blocks else "full"
            hidden, y = block(hidden, y, c, rot, counts, attention, chunk=self.token_chunk, mode=mode)
        hidden = self.final_layer.normalize(hidden, c)  # (B, N, Dx) (this rank's tokens)
        if cache is not None:
            cache.residual = hidden - embedded
        out = self.final_layer.linear(hidden)  # (B, N, p·p·C)
        if sp is not None:
            out = sp.gather(out)
        return self._unpatchify(out, b, t, h, w)

    def _unpatchify(self, out: torch.Tensor, b: int, t: int, h: int, w: int) -> torch.Tensor:
        """(B, N, p·p·C) -> (B, C, T, H, W) float32."""
        p, co = self.config.patch_size, self.config.out_channels
        out = out.reshape(b, t, h // p, w // p, p, p, co).permute(0, 6, 1, 2, 4, 3, 5)
        verify_weights(self)  # first forward: NaN/inf weights named by file and tensor (one host sync)
        return out.reshape(b, co, t, h, w).to(torch.float32)

    def extra_repr(self) -> str:
        return f"compute_dtype={self.compute_dtype}, attention={self.attention!r}"
