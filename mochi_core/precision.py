"""The one precision policy of the pack.

Rules:
- Matmuls (Linear, Conv) run in the *compute dtype*: float32 on CPU, bfloat16 on CUDA by default (float32 with a
  logged warning on a GPU without native bf16: Mochi is unstable in fp16). :func:`check_compute_dtype` is the one
  validation of a user's compute dtype for every model (DiT, VAE, T5); fp8 is a storage dtype, never a compute dtype.
- Norms (RMSNorm, LayerNorm, GroupNorm statistics), RoPE angles and rotation products, adaLN modulation,
  tanh gates, timestep sinusoids, the CFG combination and the Euler update run in float32.
- Weights are *stored* in a storage dtype (any of :data:`STORAGE_DTYPES`, or quantized) and cast on use,
  layer by layer (see :mod:`mochi_core.ops`).
- Layers matched by :data:`HIGH_PRECISION_PATTERNS` are never converted to a lower storage dtype by us
  (embedders, norms, final layer, ``pos_frequencies``); when a file already stores them low, we keep them as stored
  (fp8 is upgraded to float32).
- fp8 is only for matmul weights (``*.weight``), which carry a per-tensor scale. Biases and every other tensor are
  never held in fp8: an fp8 request stores them in :data:`FP8_FALLBACK_DTYPE` (bfloat16) or narrower as stored.
- Scales (scaled-fp8 ``scale_weight``, GGUF block scales) are applied in float32 and the product is rounded once to
  the compute dtype (:mod:`mochi_core.ops`).
- LoRA factors applied at run time are held in the model's compute dtype, their scale x strength folded into the up
  factor in float32 and rounded once (:func:`lora_factor_dtype`); a LoRA merge is computed in float32 and rounded
  once to the weight's storage dtype, which must be one of :func:`merge_storage_dtypes` (:mod:`mochi_core.lora`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from . import dtypes
from .dtypes import dtype_name
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "STORAGE_DTYPES",
    "HIGH_PRECISION_PATTERNS",
    "FLOAT8_DTYPES",
    "FP8_FALLBACK_DTYPE",
    "COMPUTE_DTYPES",
    "default_compute_dtype",
    "supports_bf16",
    "BF16_MIN_CAPABILITY",
    "check_compute_dtype",
    "parse_dtype",
    "keeps_high_precision",
    "storage_dtype_for",
    "holds_fp8",
    "dtype_name",
    "lora_factor_dtype",
    "merge_storage_dtypes",
]

#: Storage dtypes with a torch dtype, by name (the one table: :mod:`mochi_core.dtypes`).
STORAGE_DTYPES: dict[str, torch.dtype] = dtypes.TORCH_DTYPES

FLOAT8_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e4m3fn, torch.float8_e5m2)

#: Dtypes a model may *compute* in (matmul dtype), by name. fp8 is storage only.
COMPUTE_DTYPES: dict[str, torch.dtype] = dtypes.COMPUTE_DTYPES

#: Storage of a non-weight tensor (bias) when fp8 storage is requested: fp8 has no scale for it.
FP8_FALLBACK_DTYPE: torch.dtype = torch.bfloat16

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


#: first CUDA compute capability with native bf16 arithmetic (Ampere); older GPUs (T4, V100, RTX 20xx) only emulate
#: it, and cuDNN has no bf16 convolutions for them
BF16_MIN_CAPABILITY = (8, 0)


def supports_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 natively: on CUDA from compute capability 8.0 (Ampere) on, read from the
    device's capability (``torch.cuda.is_bf16_supported`` counts emulation as support on torch < 2.4); on ROCm as
    torch reports it; True for other devices, and for "cuda" on a machine without CUDA (planning for a GPU
    elsewhere; loaders refuse such a device before asking)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return True
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    return tuple(torch.cuda.get_device_capability(dev)) >= BF16_MIN_CAPABILITY  # index None: the current device


def default_compute_dtype(device: torch.device | str, *, warn: bool = True) -> torch.dtype:
    """float32 on CPU (no fast bf16 on AVX2 machines), bfloat16 on CUDA.

    A CUDA GPU without native bf16 (pre-Ampere) gets float32, with a logged warning unless ``warn`` is False
    (planning), not fp16: Mochi's activations overflow fp16. Loaders, the planner and the nodes all take their
    default from here, so a plan counts the activations of the dtype the models will really use.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return torch.float32
    if supports_bf16(dev):
        return torch.bfloat16
    if warn:
        logger.warning(
            "%s has no native bf16 support (pre-Ampere GPU); computing in fp32 instead (fp16 is unstable for "
            "Mochi). This is slower and needs twice the activation memory; pass compute_dtype='fp32' to silence this "
            "warning.",
            dev,
        )
    return torch.float32


def check_compute_dtype(
    what: str,
    dtype: str | torch.dtype | None,
    *,
    device: torch.device | str = "cpu",
    allowed: Iterable[str] = tuple(COMPUTE_DTYPES),
) -> torch.dtype:
    """A compute dtype checked by the one rule (:func:`mochi_core.options.resolve_dtype`): a torch dtype, a name or
    alias, or None / "auto" for :func:`default_compute_dtype` of ``device`` (fp32 when ``allowed`` excludes that
    default). ``what`` names the argument in messages; ``allowed`` restricts the names (T5: ``("fp32", "bf16")``)."""
    from .options import DTypeChoice, resolve_dtype

    names = tuple(n for n in allowed if n in COMPUTE_DTYPES)
    if not names:  # a programming error of the caller, not a user input
        raise ValueError(f"allowed must name compute dtypes among {', '.join(COMPUTE_DTYPES)}; got {tuple(allowed)}")
    notes = {n: " (fp8 is a storage dtype: use it as storage_dtype)" for n in ("fp8_e4m3fn", "fp8_e5m2")}
    choice = DTypeChoice("compute", "model", names, notes)
    return resolve_dtype(dtype, what=what, choice=choice, device=device)  # type: ignore[return-value]


def parse_dtype(value: str | torch.dtype | None, *, what: str = "dtype") -> torch.dtype | None:
    """A torch dtype or a name / alias of :data:`STORAGE_DTYPES`; None for None / "auto" / "default"."""
    name = dtypes.canonical_name(value)
    if name is None:
        return None
    if name not in STORAGE_DTYPES:
        shown = value if isinstance(value, torch.dtype) else repr(value)
        raise InvalidInputError(f"{what}={shown} is not supported; allowed: {', '.join(STORAGE_DTYPES)} or 'auto'")
    return STORAGE_DTYPES[name]


def keeps_high_precision(key: str) -> bool:
    """True when the parameter named ``key`` (official naming) is on the high-precision skip list."""
    return any(p in key for p in HIGH_PRECISION_PATTERNS)


def holds_fp8(key: str) -> bool:
    """True when the tensor ``key`` may be held in fp8: a matmul weight (``*.weight``) off the skip list.

    Biases, norms and everything else never are: an fp8 value without a scale loses too much.
    """
    return key.endswith(".weight") and not keeps_high_precision(key)


def storage_dtype_for(key: str, stored: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """Storage dtype for one tensor: as stored unless a conversion was requested and the key is not skipped.

    Skipped (high-precision) keys keep their stored dtype, upgraded to float32 when stored in fp8. A tensor that
    may not hold fp8 (:func:`holds_fp8`: biases, ...) never gets it: stored or requested fp8 becomes
    :data:`FP8_FALLBACK_DTYPE`, and an fp8 request keeps a 16-bit stored tensor as it is.
    Non-floating tensors (quantized bytes, masks) always keep their dtype.
    """
    if not stored.is_floating_point:
        return stored
    if keeps_high_precision(key):
        return torch.float32 if stored in FLOAT8_DTYPES and requested is not None else stored
    want = stored if requested is None else requested
    if want in FLOAT8_DTYPES and not holds_fp8(key):
        if stored in FLOAT8_DTYPES or stored.itemsize > FP8_FALLBACK_DTYPE.itemsize:
            return FP8_FALLBACK_DTYPE
        return stored
    return want


def lora_factor_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """Dtype of run-time LoRA factors for a model computing in ``compute_dtype``: the compute dtype itself (the
    low-rank matmuls then run without a per-use cast)."""
    return compute_dtype


def merge_storage_dtypes() -> tuple[torch.dtype, ...]:
    """Weight storage dtypes a LoRA may be merged into (fp8 and GGUF storage would have to be re-quantized)."""
    return (torch.float32, torch.bfloat16, torch.float16)
