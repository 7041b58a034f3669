"""Ulysses-style sequence parallelism of the DiT's visual tokens.

Each of the ``sp`` ranks of a group holds a consecutive slice of the N visual tokens (``N / sp``, the first
``N % sp`` ranks one more) through every per-token layer (modulated norms, projections, MLPs, gated residuals,
final layer). Attention needs the whole sequence, so around it

1. q, k, v of the local tokens, all heads, (3, B, n_r, H, D) in the compute dtype, go through one all-to-all that
   returns every token of ``H / sp`` heads, (3, B, N, H/sp, D);
2. the text stream, which every rank computes whole (it is at most 256 tokens), contributes the same ``H / sp``
   heads of its q, k, v; joint attention runs on those heads as in a single process;
3. a second all-to-all sends the visual output back as (B, n_r, H, D) per rank; the text output of the ``H / sp``
   heads is all-gathered so that every rank holds the same text stream;
4. after the final layer, the per-token predictions (B, n_r, p²·C) are all-gathered and unpatchified.

Heads and tokens are independent in attention, so the result equals the single-process forward up to the
floating-point order of the per-row matrix products (checked against it within 1e-5 on the tiny model).
:meth:`SequenceParallel.install` sets the model's ``sequence_parallel`` hook, read by
:meth:`mochi_core.dit.model.AsymmDiT.forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..dit.attention import joint_attention
from .comm import Comm
from .layout import token_splits

__all__ = ["SequenceParallel"]


class SequenceParallel:
    """The sequence-parallel hook of one model on one rank of an ``sp``-rank group (``comm``)."""

    def __init__(self, comm: Comm, heads: int) -> None:
        self.comm = comm
        self.sp = comm.size
        self.index = comm.rank
        self.heads = heads
        self.local_heads = heads // self.sp
        self.sizes: list[int] = []
        self.start = self.end = 0

    def install(self, model: Any) -> None:
        model.sequence_parallel = self

    @staticmethod
    def uninstall(model: Any) -> None:
        model.sequence_parallel = None

    # ------------------------------------------------------------------ tokens
    def bind(self, tokens: int) -> None:
        """Split ``tokens`` visual tokens over the group for this forward."""
        self.sizes = token_splits(tokens, self.sp)
        self.start = sum(self.sizes[: self.index])
        self.end = self.start + self.sizes[self.index]

    def shard(self, xt: torch.Tensor, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xt (B, N, Dx), rot (N, H, hd/2) -> this rank's tokens: (B, n_r, Dx), (n_r, H, hd/2) (copies, so the
        full tensors can be freed)."""
        self.bind(xt.shape[1])
        return xt[:, self.start : self.end].clone(), rot[self.start : self.end].clone()

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """(B, n_r, P) per rank -> (B, N, P) on every rank of the group."""
        return self.comm.all_gather_dim(out.contiguous(), self.sizes, dim=1)

    # ------------------------------------------------------------------ attention
    def attention(self, backend: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """A joint-attention function over the whole sequence for the local tokens (same signature and shapes as
        :func:`mochi_core.dit.attention.joint_attention` without ``backend``; visual inputs hold n_r tokens)."""

        def attend(
            qx: torch.Tensor,
            kx: torch.Tensor,
            vx: torch.Tensor,
            qy: torch.Tensor,
            ky: torch.Tensor,
            vy: torch.Tensor,
            counts: Sequence[int],
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return self._attend(qx, kx, vx, qy, ky, vy, counts, backend)

        return attend

    def _attend(
        self,
        qx: torch.Tensor,
        kx: torch.Tensor,
        vx: torch.Tensor,
        qy: torch.Tensor,
        ky: torch.Tensor,
        vy: torch.Tensor,
        counts: Sequence[int],
        backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, h, d = vx.shape
        hl, sp = self.local_heads, self.sp
        dtype = vx.dtype
        # (3, B, n_r, H, D) -> (sp, 3, B, n_r, H/sp, D): part i holds the heads of rank i (q, k cast as joining would)
        qkv = torch.stack([qx.to(dtype), kx.to(dtype), vx])
        send = qkv.view(3, b, n, sp, hl, d).permute(3, 0, 1, 2, 4, 5).contiguous()
        del qkv
        unit = 3 * b * hl * d
        matrix = [[unit * self.sizes[j]] * sp for j in range(sp)]
        parts = self.comm.all_to_all(send, matrix)
        del send
        full = torch.cat([p.view(3, b, self.sizes[j], hl, d) for j, p in enumerate(parts)], dim=2)
        del parts
        q, k, v = full.unbind(0)
        heads = slice(self.index * hl, (self.index + 1) * hl)
        out_x, out_y = joint_attention(q, k, v, qy[:, :, heads], ky[:, :, heads], vy[:, :, heads], counts, backend)
        del full, q, k, v
        # visual output back to the token owners: (B, N, H/sp, D) -> part i = tokens of rank i
        chunks = out_x.reshape(b, -1, hl, d).split(self.sizes, dim=1)
        send = torch.cat([c.reshape(-1) for c in chunks])
        del chunks, out_x
        matrix = [[b * hl * d * self.sizes[i] for i in range(sp)] for _ in range(sp)]
        parts = self.comm.all_to_all(send, matrix)
        out_x = torch.stack([p.view(b, n, hl, d) for p in parts], dim=2).reshape(b, n, h * d)
        # text output: every rank's heads, in head order
        ly = out_y.shape[1]
        ys = self.comm.all_gather(out_y.view(b, ly, hl * d))
        out_y = torch.stack(ys, dim=2).reshape(b, ly, h * d)
        return out_x, out_y
