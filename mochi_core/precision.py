"""The one precision policy of the pack.

Rules (mochi-spec.md §2.4, style.md "one precision policy"):
- Matmuls (Linear, Conv) run in the *compute dtype*: float32 on CPU, bfloat16 on CUDA by default.
- Norms (RMSNorm, LayerNorm, GroupNorm statistics), RoPE angles and rotation products, adaLN modulation,
  tanh gates, timestep sinusoids, the CFG combination and the Euler update run in float32.
- Weights are *stored* in a storage dtype (any of :data:`STORAGE_DTYPES`, or quantized) and cast on use,
  layer by layer (see :mod:`mochi_core.ops`).
- Layers matched by :data:`HIGH_PRECISION_PATTERNS` are never converted to a lower storage dtype by us
  (embedders, norms, final layer, ``pos_frequencies``); when a file already stores them low, we keep them as stored.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError

__all__ = [
    "STORAGE_DTYPES",
    "HIGH_PRECISION_PATTERNS",
    "FLOAT8_DTYPES",
    "default_compute_dtype",
    "parse_dtype",
    "keeps_high_precision",
    "storage_dtype_for",
    "dtype_name",
]

#: Storage dtypes a user may ask for, by the names used in the nodes, CLI and planner.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}

FLOAT8_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e4m3fn, torch.float8_e5m2)

_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8_e4m3fn": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
}

#: Substrings of official parameter names that stay in high precision when we convert storage.
HIGH_PRECISION_PATTERNS: tuple[str, ...] = (
    "x_embedder",
    "t_embedder",
    "t5_y_embedder",
    "t5_yproj",
    "norm",
    "final_layer",
    "pos_frequencies",
    "relative_attention_bias",
    "shared",
)


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """float32 on CPU (no fast bf16 on AVX2 machines), bfloat16 on CUDA."""
    dev = torch.device(device)
    return torch.bfloat16 if dev.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of :data:`STORAGE_DTYPES` for messages and plans; falls back to torch's name."""
    for name, value in STORAGE_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).replace("torch.", "")


def parse_dtype(value: str | torch.dtype | None, *, what: str = "dtype") -> torch.dtype | None:
    """Accept a torch dtype, one of the names in :data:`STORAGE_DTYPES` (or a torch name), or None."""
    if value is None or isinstance(value, torch.dtype):
        if isinstance(value, torch.dtype) and value not in STORAGE_DTYPES.values():
            raise InvalidInputError(f"{what}={value} is not supported; allowed: {', '.join(STORAGE_DTYPES)}")
        return value
    key = str(value).strip().lower().replace("torch.", "")
    if key in ("", "auto", "default", "none"):
        return None
    key = _ALIASES.get(key, key)
    if key not in STORAGE_DTYPES:
        raise InvalidInputError(f"{what}={value!r} is not supported; allowed: {', '.join(STORAGE_DTYPES)} or 'auto'")
    return STORAGE_DTYPES[key]


def keeps_high_precision(key: str) -> bool:
    """True when the parameter named ``key`` (official naming) is on the high-precision skip list."""
    return any(p in key for p in HIGH_PRECISION_PATTERNS)


def storage_dtype_for(key: str, stored: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """Storage dtype for one tensor: as stored unless a conversion was requested and the key is not skipped.

    Skipped (high-precision) keys keep their stored dtype, upgraded to float32 when stored in fp8.
    Non-floating tensors (quantized bytes, masks) always keep their dtype.
    """
    if not stored.is_floating_point:
        return stored
    if requested is None:
        return stored
    if keeps_high_precision(key):
        return torch.float32 if stored in FLOAT8_DTYPES else stored
    return requested
