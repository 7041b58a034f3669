"""``load_dit``: read any published Mochi DiT checkpoint into an :class:`AsymmDiT`, tensor by tensor.

The model is built on the ``meta`` device; each tensor is read from the memory-mapped file, converted to its
storage dtype (``mochi_core.precision.storage_dtype_for``) or kept quantized, moved to ``device`` and installed,
so two full copies of the weights never exist. Layouts: see :mod:`mochi_core.formats.dit`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from .. import ops, precision, quants
from ..errors import UnsupportedCheckpointError
from ..finite import check_finite, weight_origin
from ..formats.detect import DIT, require_component
from ..formats.dit import DiTLayout, DiTSource, detect_dit_layout, read_source
from ..formats.io import Checkpoint, open_checkpoint
from ..options import DIT_STORAGE, DiTOptions, renamed, resolve_dtype
from .config import DiTConfig
from .model import AsymmDiT

__all__ = ["load_dit", "read_dit_header", "parse_storage", "COMPUTE_DTYPES"]

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = precision.COMPUTE_DTYPES  # re-exported; the policy lives in mochi_core.precision


def parse_storage(value: str | torch.dtype | None) -> torch.dtype | str | None:
    """None (keep as stored), a float dtype / name of :mod:`mochi_core.dtypes`, or "q8_0" / "q4_0"."""
    return resolve_dtype(value, what="storage_dtype", choice=DIT_STORAGE)


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    # a whole diffusers pipeline folder: use its transformer/ subfolder
    if p.is_dir() and not any(p.glob("*.safetensors")) and (p / "transformer").is_dir():
        return p / "transformer"
    return p


def _check_shapes(layout: DiTLayout, cfg: DiTConfig, source: str) -> None:
    expected = cfg.expected_shapes()
    got = {k: s.shape for k, s in layout.sources.items()}
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [f"{k} {list(got[k])} (expected {list(v)})" for k, v in expected.items() if k in got and got[k] != v]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {'; '.join(wrong[:3])})")
        raise UnsupportedCheckpointError(
            f"{source}: tensor shapes are inconsistent with any Mochi DiT configuration (inferred {cfg}): "
            + ", ".join(parts)
        )


def _inspect(ckpt: Checkpoint, p: Path) -> tuple[DiTLayout, DiTConfig]:
    """Layout and configuration of an open DiT checkpoint, from its header; refuses other components and tensor
    sets that match no Mochi DiT configuration."""
    require_component(ckpt.keys(), DIT, path=str(p))
    layout = detect_dit_layout(ckpt.infos, source=p.name)
    if ckpt.metadata.get("format") == "gguf":
        layout.name = f"gguf ({ckpt.metadata['gguf.types']})"
    cfg = DiTConfig.from_shapes({k: s.shape for k, s in layout.sources.items()}, source=p.name)
    _check_shapes(layout, cfg, p.name)
    return layout, cfg


def read_dit_header(path: str | os.PathLike[str]) -> tuple[DiTLayout, DiTConfig]:
    """What :func:`load_dit` would find in ``path`` (file, shard folder, index, diffusers pipeline folder), read from
    the header(s) only: the layout and the inferred configuration. Raises UnsupportedCheckpointError as the loader."""
    p = _resolve_path(path)
    with open_checkpoint(p) as ckpt:
        return _inspect(ckpt, p)


def _convert(
    key: str,
    module: nn.Module,
    src: DiTSource,
    t: torch.Tensor,
    scale: torch.Tensor | None,
    target: torch.dtype | str | None,
) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """Return (stored tensor, weight format, scale) for a cast-on-use layer's weight."""
    quantized = src.fmt in quants.QUANT_TYPES
    if quantized and quants.row_bytes(src.fmt, math.prod(src.shape[1:])) is None:
        # rows that are not whole blocks (a small tensor the converter flattened to rows of 256): expanded once
        t = quants.dequantize(t, src.fmt, src.shape)
        if target is None or target == src.fmt:
            return t, "plain", None
        quantized = False
    elif target is None or (isinstance(target, str) and target == src.fmt):
        return t, src.fmt, scale
    if src.fmt == "scaled_fp8" and target in precision.FLOAT8_DTYPES:
        return t, src.fmt, scale
    # start from a float tensor
    if src.fmt == "scaled_fp8":
        assert scale is not None
        t = t.to(torch.float32) * scale.to(torch.float32)
    elif quantized:
        t = quants.dequantize(t, src.fmt, src.shape)
    high = precision.keeps_high_precision(key)
    if isinstance(target, str):  # quantized target
        if not high and isinstance(module, ops.Linear) and t.dim() == 2 and t.shape[1] % ops.QK == 0:
            q = ops.quantize_q8_0(t) if target == "q8_0" else ops.quantize_q4_0(t)
            return q, target, None
        want = torch.float32 if t.dtype in precision.FLOAT8_DTYPES else t.dtype
        return t.to(want), "plain", None
    want = precision.storage_dtype_for(key, t.dtype, target)
    if want in precision.FLOAT8_DTYPES and isinstance(module, ops.Linear):
        q, s = ops.quantize_scaled_fp8(t, want)  # per-tensor scale: fp8 storage without underflow
        return q, "scaled_fp8", s
    return t.to(want), "plain", None


def _install(
    model: AsymmDiT,
    key: str,
    src: DiTSource,
    ckpt: object,
    prefix: str,
    target: torch.dtype | str | None,
    device: torch.device,
) -> None:
    """Read one tensor, convert it to its storage format and install it in ``model`` (replacing the meta tensor).

    NaN/inf: cast-on-use weights are checked at their first use, every other (small) tensor here."""
    mod_name, _, attr = key.rpartition(".")
    module = model.get_submodule(mod_name) if mod_name else model
    t, scale = read_source(ckpt, src, prefix)
    infos = ckpt.infos  # type: ignore[attr-defined]
    origin = weight_origin(infos[prefix + src.keys[0]].file, *(prefix + k for k in src.keys))
    if attr == "weight" and isinstance(module, ops.CastWeights):
        t, fmt, scale = _convert(key, module, src, t, scale, target)
        ops.set_weight(
            module,
            t.to(device),
            fmt=fmt,
            scale=scale.to(device) if scale is not None else None,
            shape=src.shape,
            origin=origin,
        )
        return
    if src.fmt in quants.QUANT_TYPES:  # a quantized norm, bias or frequency table: expanded once, fp32
        t = quants.dequantize(t, src.fmt, src.shape)
    elif src.fmt != "plain":
        raise UnsupportedCheckpointError(f"{key}: stored as {src.fmt}, but only Linear weights may be")
    want = precision.storage_dtype_for(key, t.dtype, target if isinstance(target, torch.dtype) else None)
    value = t.to(device=device, dtype=want)
    check_finite(value, origin)
    setattr(module, attr, nn.Parameter(value, requires_grad=False))


def load_dit(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    compute_dtype: str | torch.dtype | None = None,
    storage_dtype: str | torch.dtype | None = None,
    attention: str = "sdpa",
    options: DiTOptions | None = None,
    dtype: str | torch.dtype | None = None,
) -> AsymmDiT:
    """Load a Mochi DiT from any published layout (official, Comfy bf16 / scaled fp8 / all-in-one, Kijai bf16 /
    fp8 / GGUF Q8_0 / Q4_0, diffusers file or sharded folder).

    ``device``: cpu, cuda, cuda:N (checked first: an unusable device is refused before the file is opened).
    ``compute_dtype``: fp32 / bf16 / fp16 (default: ``precision.default_compute_dtype`` of the device; ``dtype``
    is its earlier name). ``storage_dtype``: None keeps the weights as stored; a float dtype name (fp32, bf16,
    fp16, fp8_e4m3fn, fp8_e5m2) or "q8_0" / "q4_0" converts Linear weights (fp8 targets use a per-tensor scale;
    biases never go to fp8) except the high-precision skip list. ``attention``: "sdpa", "flash", "sage".
    ``options``: these four already resolved (:class:`~mochi_core.options.DiTOptions`); the keywords are then unused.
    Returns the model in eval mode, ``requires_grad`` False, with ``.config`` and ``.checkpoint_format``.
    """
    if options is None:
        names: dict[str, str] = {}
        compute_dtype = renamed("dtype", dtype, "compute_dtype", compute_dtype, names)
        options = DiTOptions.resolve(
            device=device, compute_dtype=compute_dtype, storage_dtype=storage_dtype, attention=attention, names=names
        )
    dev, target = options.device, options.storage_dtype
    p = _resolve_path(path)
    with open_checkpoint(p) as ckpt:
        source = p.name
        layout, cfg = _inspect(ckpt, p)
        logger.info("DiT %s: layout %s, %s, storage %s", source, layout.name, cfg, target or "as stored")
        model = AsymmDiT(cfg, device="meta", compute_dtype=options.compute_dtype, attention=options.attention)
        for key, src in layout.sources.items():
            _install(model, key, src, ckpt, layout.prefix, target, dev)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise UnsupportedCheckpointError(f"{source}: no tensor for {leftover[:5]}")
    model.checkpoint_format = layout.name
    model.eval()
    model.requires_grad_(False)
    return model
