"""Finding NaN / inf weights once, cheaply, with the file and tensor named.

A damaged or badly converted checkpoint can hold NaN or infinite values; computing with them turns every output
into NaN far from the cause. Weights are checked where their values pass through memory anyway:

- small tensors (norms, biases, embeddings, scales) and whole small files (the VAE) when the loader materialises
  them;
- cast-on-use weights (the bulk of the DiT and T5, which may stay memory-mapped) at their first use, on the cast
  slice the layer has just made (``mochi_core.ops.CastWeights``), so a memory-mapped file is never read a second
  time for the check.

The test is one float32 sum per tensor (NaN and inf propagate through it; finite weights cannot overflow it); only
a non-finite sum triggers the exact count that goes into the message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import NonFiniteWeightError

__all__ = ["weight_origin", "check_finite", "is_finite"]

_FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def weight_origin(file: str | os.PathLike[str], *keys: str) -> str:
    """``"<file name>, tensor <key>"``: how messages name a weight (the file name only, never a server path)."""
    return f"{Path(file).name}, tensor {' + '.join(keys)}"


def is_finite(t: torch.Tensor) -> bool:
    """True when every value of a floating tensor is finite (non-float tensors: True). One reduction; syncs."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if t.dtype in _FLOAT8:
        t = t.to(torch.float16 if t.dtype == torch.float8_e4m3fn else torch.float32)
    return bool(torch.isfinite(t.sum(dtype=torch.float32)))


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
