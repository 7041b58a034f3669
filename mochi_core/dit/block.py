"""One AsymmetricJointBlock: modulated RMSNorm sandwich, joint attention, SwiGLU MLPs, tanh-gated residuals.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/asymm_models_joint.py``
(AsymmetricJointBlock, AsymmetricAttention), ``mod_rmsnorm.py``, ``residual_tanh_gated_rmsnorm.py`` and
``layers.py`` (FeedForward: SiLU on the first half); docs/numerics.md §2.3 "Block i".

Precision (mochi_core.precision): Linear matmuls in the dtype of the input (the compute dtype); RMSNorms,
modulation, q/k norms, RoPE and the gated residual in float32, cast back to the compute dtype.
No device is hard-coded: every op follows its input, so block-streaming hooks can move blocks.

Token chunks (``chunk``): every visual-stream operation except the attention kernel acts on each token alone
(modulated RMSNorm, the qkv / output projections, q/k norms, RoPE, the gated residuals, the SwiGLU MLP), so the
block can run them ``chunk`` tokens at a time, writing q/k/v straight into the joint attention buffers and the
block output into one new tensor. Activations then grow as 5·B·N·D_x (block input, q, k, v, kernel output; then
block input, kernel output, block output) plus chunk-sized temporaries, instead of ~15·B·N·D_x plus the 2·F_x-wide
MLP hidden of the whole sequence. The attention itself runs once on the whole sequence through the backend's
memory-efficient kernel. Mathematically the result is the unchunked one; numerically only the summation order
inside a matrix product may change with its row count (see ``tests/unit/test_dit_chunked.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .attention import _runs, dense_kernel, joint_attention
from .rope import apply_rope

__all__ = ["DEFAULT_TOKEN_CHUNK", "HeadRMSNorm", "FeedForward", "AsymmetricAttention", "AsymmetricJointBlock", "rms"]

NORM_EPS = 1e-6
QK_NORM_EPS = 1e-5
#: visual tokens per chunk of long sequences (``AsymmDiT.token_chunk``; 848x480x163 has 44,520 tokens, sequences
#: up to 8,192 tokens, e.g. 848x480x25, run whole); the planner models the same value
DEFAULT_TOKEN_CHUNK = 8192


def _inv_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(..., D) float32 -> (..., 1) float32 = 1 / sqrt(mean(x², -1) + eps) (one fused reduction pass)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return (n.square_().div_(x.shape[-1]).add_(eps)).rsqrt_()


def rms(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x / sqrt(mean(x², -1) + eps) in float32 (no learned weight). (..., D) -> (..., D) float32."""
    x32 = x.to(torch.float32)
    return x32 * _inv_rms(x32, eps)


def _modulated(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """rms(x) · (1 + scale), cast back to x's dtype. x: (B, S, D), scale: (B, 1, D) float32."""
    return rms(x).mul_(1.0 + scale).to(x.dtype)


def _gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + tanh(gate) · rms(branch), computed in float32 and cast back to x's dtype. gate: (B, 1, D) float32.

    ``branch`` must be a fresh tensor (a layer output): it is normalized in place.
    """
    b32 = branch.to(torch.float32)
    b32 = b32.mul_(_inv_rms(b32, NORM_EPS))
    return torch.addcmul(x.to(torch.float32), b32, torch.tanh(gate)).to(x.dtype)


class HeadRMSNorm(nn.Module):
    """Per-head RMSNorm with a learned weight (eps 1e-5). (..., D) -> (..., D) float32."""

    def __init__(self, dim: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=x.device, dtype=torch.float32)
        x32 = x.to(torch.float32)
        return (x32 * _inv_rms(x32, QK_NORM_EPS)).mul_(w)


class FeedForward(nn.Module):
    """SwiGLU without biases: [a | b] = x W1ᵀ, out = (SiLU(a) · b) W2ᵀ. (B, S, D) -> (B, S, D)."""

    def __init__(self, dim: int, hidden: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.w1 = ops.Linear(dim, 2 * hidden, bias=False, device=device)
        self.w2 = ops.Linear(hidden, dim, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(a, inplace=True).mul_(b))  # in place on the fresh w1 output: no extra buffer


class AsymmetricAttention(nn.Module):
    """Joint attention of the visual stream (width Dx) and the text stream (width Dy), heads set by Dx."""

    def __init__(self, dim_x: int, dim_y: int, heads: int, update_y: bool, *, device: torch.device | str | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_x // heads
        self.update_y = update_y
        self.qkv_x = ops.Linear(dim_x, 3 * dim_x, bias=False, device=device)
        self.qkv_y = ops.Linear(dim_y, 3 * dim_x, bias=False, device=device)
        self.q_norm_x = HeadRMSNorm(self.head_dim, device=device)
        self.k_norm_x = HeadRMSNorm(self.head_dim, device=device)
        self.q_norm_y = HeadRMSNorm(self.head_dim, device=device)
        self.k_norm_y = HeadRMSNorm(self.head_dim, device=device)
        self.proj_x = ops.Linear(dim_x, dim_x, bias=True, device=device)
        self.proj_y = ops.Linear(dim_x, dim_y, bias=True, device=device) if update_y else nn.Identity()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, rot: torch.Tensor, counts: Sequence[int], backend: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, Dx) normalized visual, y: (B, Ly, Dy) normalized text, rot: (N, H, hd/2) complex.

        Returns proj_x output (B, N, Dx) and proj_y output (B, Ly, Dy) (None in the last block).
        """
        b, n, _ = x.shape
        qx, kx, vx = self.qkv_x(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        qx = apply_rope(self.q_norm_x(qx), rot)  # float32; cast while joining (attention.py)
        kx = apply_rope(self.k_norm_x(kx), rot)
        ly = y.shape[1]
        qy, ky, vy = self.qkv_y(y).view(b, ly, 3, self.heads, self.head_dim).unbind(2)
        qy = self.q_norm_y(qy)
        ky = self.k_norm_y(ky)
        out_x, out_y = joint_attention(qx, kx, vx, qy, ky, vy, counts, backend)
        return self.proj_x(out_x), (self.proj_y(out_y) if self.update_y else None)

    def forward_chunked(
        self,
        x: torch.Tensor,
        scale: torch.Tensor,
        gate: torch.Tensor,
        y: torch.Tensor,
        rot: torch.Tensor,
        counts: Sequence[int],
        backend: str,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention half of a block on ``chunk`` visual tokens at a time (see module docstring).

        x: (B, N, Dx) block input (not modified), scale / gate: (B, 1, Dx) float32 (scale_msa_x, gate_msa_x),
        y: (B, Ly, Dy) normalized text, rot: (N, H, hd/2) complex. Returns the new visual stream
        x + tanh(gate)·rms(proj_x(attention)) as a new (B, N, Dx) tensor, and proj_y's output (B, Ly, Dy)
        (None in the last block). Neighbouring samples with equal valid-text counts share one kernel call.
        """
        b, n, dx = x.shape
        hh, hd = self.heads, self.head_dim
        ly = y.shape[1]
        qy, ky, vy = self.qkv_y(y).view(b, ly, 3, hh, hd).unbind(2)
        qy = self.q_norm_y(qy)
        ky = self.k_norm_y(ky)
        fn = dense_kernel(backend)
        out: torch.Tensor | None = None  # allocated once the first group's q, k, v are freed
        out_y = vy.new_zeros(b, ly, hh, hd)
        runs = _runs(counts)
        for cnt, s0, s1 in runs:
            g = s1 - s0
            # slices, never index tensors: a run of samples is a view and its write-back a plain copy (no host sync)
            sel = (lambda t: t) if len(runs) == 1 else (lambda t, s0=s0, s1=s1: t[s0:s1])  # noqa: E731
            xs_all, sc, gt = sel(x), sel(scale), sel(gate)
            q = torch.empty(g, n + cnt, hh, hd, dtype=x.dtype, device=x.device)
            k = torch.empty_like(q)
            v = torch.empty_like(q)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                xs = xs_all[:, s:e]
                qc, kc, vc = self.qkv_x(_modulated(xs, sc)).view(g, e - s, 3, hh, hd).unbind(2)
                q[:, s:e] = apply_rope(self.q_norm_x(qc), rot[s:e])
                k[:, s:e] = apply_rope(self.k_norm_x(kc), rot[s:e])
                v[:, s:e] = vc
                del qc, kc, vc
            if cnt:
                for buf, t in ((q, qy), (k, ky), (v, vy)):
                    buf[:, n:] = sel(t)[:, :cnt]
            o = fn(q, k, v)  # (g, n + cnt, H, hd)
            del q, k, v
            if cnt:
                out_y[s0:s1, :cnt] = o[:, n:]
            if out is None:
                out = torch.empty_like(x)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                xs = xs_all[:, s:e]
                r = _gated_residual(xs, self.proj_x(o[:, s:e].reshape(g, e - s, hh * hd)), gt)
                out[s0:s1, s:e] = r
                del r
            del o
        assert out is not None
        return out, (self.proj_y(out_y.reshape(b, ly, hh * hd)) if self.update_y else None)


class AsymmetricJointBlock(nn.Module):
    """One DiT block. ``update_y=False`` (last block): the text stream only supplies keys/values."""

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        heads: int,
        mlp_hidden_x: int,
        mlp_hidden_y: int,
        update_y: bool,
        *,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.update_y = update_y
        self.mod_x = ops.Linear(dim_x, 4 * dim_x, device=device)
        self.mod_y = ops.Linear(dim_x, 4 * dim_y if update_y else dim_y, device=device)
        self.attn = AsymmetricAttention(dim_x, dim_y, heads, update_y, device=device)
        self.mlp_x = FeedForward(dim_x, mlp_hidden_x, device=device)
        if update_y:
            self.mlp_y = FeedForward(dim_y, mlp_hidden_y, device=device)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        c: torch.Tensor,
        rot: torch.Tensor,
        counts: Sequence[int],
        backend: str = "sdpa",
        *,
        chunk: int | None = None,
        mode: str = "full",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, Dx), y: (B, Ly, Dy), c: (B, Dx) = SiLU(conditioning), rot: (N, H, hd/2) complex64.

        Returns the updated (x, y); y is returned unchanged by the last block. ``chunk``: process the visual
        tokens this many at a time when N is larger (module docstring) and ``backend`` names a dense kernel (sdpa,
        sage; flash-attn and a sequence-parallel callable run the whole sequence); None = the whole sequence.
        ``mode`` "skip": return (x, y) unchanged (a skipped block: the call still goes through the module so
        block-streaming hooks keep their order); "probe": return (modulated input of the attention, None) =
        rms(x)·(1 + scale_msa_x) (B, N, Dx), the tensor TeaCache watches (y and rot unused).
        """
        if mode == "skip":
            return x, y
        mod_x = self.mod_x(c.to(x.dtype)).to(torch.float32).unsqueeze(1)
        scale_msa_x, gate_msa_x, scale_mlp_x, gate_mlp_x = mod_x.chunk(4, dim=-1)
        if mode == "probe":
            return _modulated(x, scale_msa_x), None  # type: ignore[return-value]
        mod_y = self.mod_y(c.to(y.dtype)).to(torch.float32).unsqueeze(1)
        if self.update_y:
            scale_msa_y, gate_msa_y, scale_mlp_y, gate_mlp_y = mod_y.chunk(4, dim=-1)
        else:
            scale_msa_y = mod_y

        n = x.shape[1]
        if chunk is not None and n > chunk and isinstance(backend, str) and backend != "flash":
            x, ay = self.attn.forward_chunked(
                x, scale_msa_x, gate_msa_x, _modulated(y, scale_msa_y), rot, counts, backend, chunk
            )
            for s in range(0, n, chunk):  # x is the block's own new tensor: updated in place, chunk by chunk
                xs = x[:, s : s + chunk]
                xs.copy_(_gated_residual(xs, self.mlp_x(_modulated(xs, scale_mlp_x)), gate_mlp_x))
        else:
            ax, ay = self.attn(_modulated(x, scale_msa_x), _modulated(y, scale_msa_y), rot, counts, backend)
            x = _gated_residual(x, ax, gate_msa_x)
            x = _gated_residual(x, self.mlp_x(_modulated(x, scale_mlp_x)), gate_mlp_x)
        if self.update_y:
            assert ay is not None
            y = _gated_residual(y, ay, gate_msa_y)
            y = _gated_residual(y, self.mlp_y(_modulated(y, scale_mlp_y)), gate_mlp_y)
        return x, y
