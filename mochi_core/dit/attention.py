"""Joint visual-text attention with named backends ("sdpa", "flash", "sage").

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/asymm_models_joint.py`` (``run_attention``,
``compute_packed_indices``, ``pad_and_split_xy``): each sample attends over [its N visual tokens, its valid text
tokens]; padded text tokens are neither queries nor keys; with zero valid tokens the attention is visual-only.
Non-causal, softmax scale 1/sqrt(head_dim). docs/numerics.md §2.3 step 4, §2.5.

Backends: ``sdpa`` (torch scaled_dot_product_attention, default, always available), ``flash`` (flash-attn varlen,
CUDA, fp16/bf16), ``sage`` (SageAttention, CUDA). Asking for one that is not installed raises
:class:`~mochi_core.errors.MissingBackendError` naming the package to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, MissingBackendError

__all__ = ["BACKENDS", "TokenCounts", "check_backend", "dense_kernel", "joint_attention"]

BACKENDS: dict[str, tuple[str | None, str | None]] = {
    # name -> (python module, pip package)
    "sdpa": (None, None),
    "flash": ("flash_attn", "flash-attn"),
    "sage": ("sageattention", "sageattention"),
}


def check_backend(name: str, *, what: str = "attention") -> str:
    """Validate a backend name and that its package is importable; returns the normalized name. ``what`` names
    the input in the message."""
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise InvalidInputError(f"{what}={name!r} is not a known backend; allowed: {', '.join(BACKENDS)}")
    module, package = BACKENDS[key]
    if module is not None and importlib.util.find_spec(module) is None:
        raise MissingBackendError(
            f"attention backend {key!r} needs the optional package {package!r} (pip install {package}); "
            "use attention='sdpa' to run without it"
        )
    return key


class TokenCounts(tuple):
    """Valid text tokens per sample (a tuple of ints), fixed for one DiT forward and shared by its blocks.

    Built once per forward from the text mask; the per-block attention then needs no tensor built from Python
    values (on CUDA each such tensor is a host-to-device copy that stalls the host): samples are grouped into
    contiguous runs of equal counts and addressed with slices, and flash-attention's cumulative sequence lengths
    are built on first use and reused by every later block (:meth:`cu_seqlens`).
    """

    def cu_seqlens(self, visual_tokens: int, device: torch.device) -> torch.Tensor:
        """(B + 1,) int32 on ``device``: 0 and the running sums of visual_tokens + counts[b], cached."""
        cache = self.__dict__.setdefault("_cu", {})
        key = (int(visual_tokens), str(device))
        if key not in cache:
            lens = [0] + [int(visual_tokens) + int(c) for c in self]
            cache[key] = torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
        return cache[key]


def _runs(counts: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal counts: [(count, first sample, end sample)] in batch order."""
    runs: list[tuple[int, int, int]] = []
    for i, c in enumerate(counts):
        c = int(c)
        if runs and runs[-1][0] == c:
            runs[-1] = (c, runs[-1][1], i + 1)
        else:
            runs.append((c, i, i + 1))
    return runs


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) x3 -> (B, S, H, D)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn  # optional dependency

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


def dense_kernel(backend: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The kernel of a dense backend ("sdpa", "sage"): (B, S, H, D) q, k, v -> (B, S, H, D)."""
    return _sage if backend == "sage" else _sdpa


def _dense(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    qx: torch.Tensor,
    kx: torch.Tensor,
    vx: torch.Tensor,
    qy: torch.Tensor,
    ky: torch.Tensor,
    vy: torch.Tensor,
    counts: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, h, d = qx.shape
    runs = _runs(counts)
    out_x = vx.new_empty(vx.shape) if len(runs) > 1 else None
    out_y = vy.new_zeros(vy.shape)
    dtype = vx.dtype
    for c, s0, s1 in runs:
        # slices, never index tensors: a sample range is a view and its write-back a plain copy (no host sync)
        sel = (lambda t: t) if len(runs) == 1 else (lambda t, s0=s0, s1=s1: t[s0:s1])
        if c == 0:
            o = fn(sel(qx).to(dtype), sel(kx).to(dtype), sel(vx))
        else:
            # one pass per tensor: place [visual | valid text] and cast to the compute dtype together
            joint = []
            for tx, ty in ((qx, qy), (kx, ky), (vx, vy)):
                tx = sel(tx)
                buf = torch.empty(tx.shape[0], n + c, h, d, dtype=dtype, device=tx.device)
                buf[:, :n].copy_(tx)
                buf[:, n:].copy_(sel(ty)[:, :c])
                joint.append(buf)
            o = fn(*joint)
        if out_x is None:
            out_x = o[:, :n]
        else:
            out_x[s0:s1] = o[:, :n]
        if c:
            out_y[s0:s1, :c] = o[:, n:]
    assert out_x is not None
    return out_x.reshape(b, n, h * d), out_y.reshape(b, qy.shape[1], h * d)


def _flash(
    qx: torch.Tensor,
    kx: torch.Tensor,
    vx: torch.Tensor,
    qy: torch.Tensor,
    ky: torch.Tensor,
    vy: torch.Tensor,
    counts: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn import flash_attn_varlen_func  # optional dependency

    b, n, h, d = qx.shape

    def pack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([t for i in range(b) for t in (x[i], y[i, : counts[i]])], dim=0)

    lens = [n + int(c) for c in counts]
    if not isinstance(counts, TokenCounts):
        counts = TokenCounts(int(c) for c in counts)
    cu = counts.cu_seqlens(n, qx.device)  # built once per forward when the model passes its TokenCounts
    dtype = vx.dtype
    q, k, v = (pack(a, b_).to(dtype) for a, b_ in ((qx, qy), (kx, ky), (vx, vy)))
    o = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens))
    out_x = o.new_empty(b, n, h, d)
    out_y = o.new_zeros(b, qy.shape[1], h, d)
    start = 0
    for i, c in enumerate(counts):
        out_x[i] = o[start : start + n]
        out_y[i, :c] = o[start + n : start + n + c]
        start += n + int(c)
    return out_x.reshape(b, n, h * d), out_y.reshape(b, qy.shape[1], h * d)


def joint_attention(
    qx: torch.Tensor,
    kx: torch.Tensor,
    vx: torch.Tensor,
    qy: torch.Tensor,
    ky: torch.Tensor,
    vy: torch.Tensor,
    counts: Sequence[int],
    backend: str | Callable[..., tuple[torch.Tensor, torch.Tensor]] = "sdpa",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention of visual and valid text tokens, per sample.

    qx, kx, vx: (B, N, H, D) visual; qy, ky, vy: (B, Ly, H, D) text whose first ``counts[b]`` positions are the
    valid tokens of sample b (the rest are ignored). q and k may be float32 (normalized, rotated): they are cast to
    v's dtype (the compute dtype) while the joint sequence is assembled. Outputs are in v's dtype. Returns (B, N, H·D) and (B, Ly, H·D); text positions at or
    beyond ``counts[b]`` are zero. Neighbouring samples with equal counts share one kernel call. ``counts`` may be a
    :class:`TokenCounts` (the model passes one per forward), so nothing is built per call from Python values.
    A callable ``backend`` is called with the other arguments instead (sequence parallelism:
    :mod:`mochi_core.parallel.sequence`).
    """
    if callable(backend):
        return backend(qx, kx, vx, qy, ky, vy, counts)
    if backend == "flash":
        return _flash(qx, kx, vx, qy, ky, vy, counts)
    fn = _sage if backend == "sage" else _sdpa
    return _dense(fn, qx, kx, vx, qy, ky, vy, counts)
