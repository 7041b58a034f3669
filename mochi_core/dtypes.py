"""The one table of dtype names of the pack: every loader, the planner, the CLI and the nodes read names here.

A name is what a user types or picks (``bf16``, ``fp8_e4m3fn``, ``q8_0``); :data:`ALIASES` maps the other spellings
people use (``bfloat16``, ``half``, ``fp8``, ``torch.float16``) to it. Which names a given choice accepts (a DiT's
storage, a T5's compute dtype, ...) is said once, in :mod:`mochi_core.options`; this module only knows names,
their torch dtypes and their sizes.
"""

from __future__ import annotations

import torch

from .quants import QUANT_TYPES

__all__ = [
    "ALIASES",
    "AUTO",
    "BYTES",
    "COMPUTE_DTYPES",
    "GGUF_BLOCKS",
    "QUANTIZED",
    "TORCH_DTYPES",
    "canonical_name",
    "dtype_name",
]

#: Names with a torch dtype, in the order messages list them.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}

#: Dtypes a model may compute in (matmul dtype). fp8 is storage only.
COMPUTE_DTYPES: dict[str, torch.dtype] = {k: TORCH_DTYPES[k] for k in ("fp32", "bf16", "fp16")}

#: Block-quantized storage formats (GGUF layouts) a user may ask for: weights are quantized to them at load.
QUANTIZED: tuple[str, ...] = ("q8_0", "q4_0")

#: Every GGUF block format a file may hold (a ``.gguf`` keeps its own types; :mod:`mochi_core.quants` expands them
#: on use): q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k.
GGUF_BLOCKS: tuple[str, ...] = tuple(QUANT_TYPES)

#: Bytes per element of each name; ``scaled_fp8`` is fp8 with a per-tensor scale (a file's format, planner only);
#: a GGUF block format's bytes per value are its block bytes over its block values (the planner counts whole blocks).
BYTES: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8_e4m3fn": 1,
    "fp8_e5m2": 1,
    "scaled_fp8": 1,
    **{name: q.type_size / q.block_size for name, q in QUANT_TYPES.items()},
}

#: Other spellings of the names above (lower case; a ``torch.`` prefix is dropped first).
ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp8": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
}

#: Spellings meaning "no choice": the device's default compute dtype, or the file's own storage.
AUTO: tuple[str, ...] = ("", "auto", "default", "none")


def canonical_name(value: object) -> str | None:
    """``value`` (a name, an alias, a ``torch.dtype``, None) as a table name; None for the automatic choice.

    A spelling the table does not know is returned lower-cased as it is: the caller refuses it with its own
    allowed list (:func:`mochi_core.options.resolve_dtype`).
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    key = str(value).strip().lower().removeprefix("torch.")
    if key in AUTO:
        return None
    return ALIASES.get(key, key)


def dtype_name(dtype: torch.dtype) -> str:
    """The table name of a torch dtype (``torch.bfloat16`` -> ``bf16``); torch's own name for others."""
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).replace("torch.", "")
