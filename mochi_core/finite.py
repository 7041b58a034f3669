"""Finding NaN / inf weights once, cheaply, with the file and tensor named.

A damaged or badly converted checkpoint can hold NaN or infinite values; computing with them turns every output
into NaN far from the cause. Weights are checked where their values pass through memory anyway:

- small tensors (norms, biases, embeddings, scales) and whole small files (the VAE) when the loader materialises
  them;
- cast-on-use weights (the bulk of the DiT and T5, which may stay memory-mapped) at their first use, on the cast
  slice the layer has just made (``mochi_core.ops.CastWeights``), so a memory-mapped file is never read a second
  time for the check. Each layer keeps its result on the compute device; :func:`verify_weights`, called by the
  model after its first forward, reads them all with one host sync and raises for the first bad weight.

The test is one float32 sum per tensor (NaN and inf propagate through it; finite weights cannot overflow it); only
a non-finite sum triggers the exact count that goes into the message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import NonFiniteWeightError

__all__ = ["weight_origin", "check_finite", "is_finite", "finite_flag", "verify_weights"]

_FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def weight_origin(file: str | os.PathLike[str], *keys: str) -> str:
    """``"<file name>, tensor <key>"``: how messages name a weight (the file name only, never a server path)."""
    return f"{Path(file).name}, tensor {' + '.join(keys)}"


def finite_flag(t: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on ``t``'s device: True when the float32 sum of ``t`` is finite (no host sync)."""
    if not t.is_floating_point() or t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    if t.dtype in _FLOAT8:
        t = t.to(torch.float16 if t.dtype == torch.float8_e4m3fn else torch.float32)
    return torch.isfinite(t.sum(dtype=torch.float32))


def is_finite(t: torch.Tensor) -> bool:
    """True when every value of a floating tensor is finite (non-float tensors: True). One reduction; syncs."""
    return bool(finite_flag(t))


def verify_weights(model: nn.Module) -> None:
    """Read the pending first-use flags of ``model``'s cast-on-use layers (one host sync) and raise
    :class:`NonFiniteWeightError` naming the first weight that holds NaN/inf. Cheap once nothing is pending."""
    pending = [m for m in model.modules() if getattr(m, "weight_finite", None) is not None]
    if not pending:
        return
    flags = [m.weight_finite for m in pending]
    devices = {f.device for f in flags}
    ok = all(bool(torch.stack([f for f in flags if f.device == d]).all()) for d in devices)
    bad = [] if ok else [m for m in pending if not bool(m.weight_finite)]
    for m in pending:
        m.weight_finite = None
    if bad:
        m = bad[0]
        where = f"{m.weight_origin}" + (f" (and {len(bad) - 1} more weights)" if len(bad) > 1 else "")
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and not weight.is_meta:  # resident: count the values for the message
            check_finite(m._cast(torch.float32, weight.device, None), where)  # type: ignore[attr-defined]
        raise NonFiniteWeightError(
            f"{where} holds NaN or infinite values: the file is damaged or was written from a diverged model; "
            "download it again or choose another file"
        )


def check_finite(t: torch.Tensor, origin: str) -> None:
    """Raise :class:`NonFiniteWeightError` naming ``origin`` when ``t`` holds NaN or inf."""
    if is_finite(t):
        return
    v = t.to(torch.float32) if t.dtype in _FLOAT8 else t
    nan = int(torch.isnan(v).sum())
    inf = int(torch.isinf(v).sum())
    if nan == 0 and inf == 0:  # a finite tensor whose float32 sum overflowed (values near the float32 limit)
        return
    raise NonFiniteWeightError(
        f"{origin} holds {nan} NaN and {inf} infinite values (of {t.numel()}): the file is damaged or was written "
        "from a diverged model; download it again or choose another file"
    )
