"""Joint visual-text attention with named backends ("sdpa", "flash", "sage").

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/asymm_models_joint.py`` (``run_attention``,
``compute_packed_indices``, ``pad_and_split_xy``): each sample attends over [its N visual tokens, its valid text
tokens]; padded text tokens are neither queries nor keys; with zero valid tokens the attention is visual-only.
Non-causal, softmax scale 1/sqrt(head_dim). mochi-spec.md §2.3 step 4, §2.5.

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

__all__ = ["BACKENDS", "check_backend", "joint_attention"]

BACKENDS: dict[str, tuple[str | None, str | None]] = {
    # name -> (python module, pip package)
    "sdpa": (None, None),
    "flash": ("flash_attn", "flash-attn"),
    "sage": ("sageattention", "sageattention"),
}


def check_backend(name: str) -> str:
    """Validate a backend name and that its package is importable; returns the normalized name."""
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise InvalidInputError(f"attention={name!r} is not a known backend; allowed: {', '.join(BACKENDS)}")
    module, package = BACKENDS[key]
    if module is not None and importlib.util.find_spec(module) is None:
        raise MissingBackendError(
            f"attention backend {key!r} needs the optional package {package!r} (pip install {package}); "
            "use attention='sdpa' to run without it"
        )
    return key


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) x3 -> (B, S, H, D)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn  # optional dependency

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


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
    out_x = vx.new_empty(vx.shape) if len(set(counts)) > 1 else None
    out_y = vy.new_zeros(vy.shape)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        groups.setdefault(int(c), []).append(i)
    dtype = vx.dtype
    for c, idx in groups.items():
        if len(groups) == 1:
            sel = lambda t: t  # noqa: E731 - whole batch, no copy
        elif len(idx) == 1:
            sel = lambda t, i=idx[0]: t[i : i + 1]  # noqa: E731 - one sample (CFG cond / uncond): a view
        else:
            index = torch.tensor(idx, device=qx.device)
            sel = lambda t, index=index: t.index_select(0, index)  # noqa: E731
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
            ox = o[:, :n]
        else:
            out_x[idx] = o[:, :n]
        if c:
            out_y[idx, :c] = o[:, n:]
    if out_x is None:
        out_x = ox
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
    cu = torch.tensor([0] + lens, device=qx.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
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
    backend: str = "sdpa",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention of visual and valid text tokens, per sample.

    qx, kx, vx: (B, N, H, D) visual; qy, ky, vy: (B, Ly, H, D) text whose first ``counts[b]`` positions are the
    valid tokens of sample b (the rest are ignored). q and k may be float32 (normalized, rotated): they are cast to
    v's dtype (the compute dtype) while the joint sequence is assembled. Outputs are in v's dtype. Returns (B, N, H·D) and (B, Ly, H·D); text positions at or
    beyond ``counts[b]`` are zero. Samples with equal counts share one kernel call.
    """
    if backend == "flash":
        return _flash(qx, kx, vx, qy, ky, vy, counts)
    fn = _sage if backend == "sage" else _sdpa
    return _dense(fn, qx, kx, vx, qy, ky, vy, counts)
