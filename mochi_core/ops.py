"""Layers whose weights are stored in one dtype and cast on use to the compute dtype.

This is the single cast-on-use mechanism shared by the DiT, the VAE and T5 (docs/formats.md; every model
is built from these classes instead of choosing dtypes itself). A weight can be held as:

- ``plain``: any floating dtype (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2); cast to the input's dtype;
- ``scaled_fp8``: Comfy's scaled fp8 — an fp8 weight and an fp32 scalar ``scale_weight``; W = W_fp8 * scale;
  the product is formed in fp32 and rounded once to the compute dtype (GGUF block scales likewise);
- a GGUF block format (``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q2_k`` ... ``q6_k``, the names of
  :data:`mochi_core.quants.QUANT_TYPES`): a uint8 tensor (out, bytes per row) whose rows are whole blocks, expanded
  by :func:`mochi_core.quants.dequantize` (the one block-quant code path) on the device of the input.

The cast happens in :meth:`CastWeights.compute_weight`, once per forward, on the device of the input,
so weights may live on another device (the offload device) and travel layer by layer. On the CPU a
:class:`Linear` whose cast weight would exceed :data:`CPU_CAST_CHUNK_BYTES` casts and multiplies it in slices of
output rows, so the transient cast buffer stays small (the full-size DiT's MLP weight would otherwise need a
201 MB fp32 copy per use) and in cache; the result is the same, rows being independent. Measured on the full-size
DiT (``bench/full_size_cpu.py``): 55.6 -> 29.9 s per step and 11.03 -> 10.91 GB peak RSS against whole-weight casts
(large buffers are fresh mmaps that page-fault on every use).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import quants
from .errors import InvalidInputError
from .finite import check_finite, finite_flag

__all__ = [
    "WEIGHT_FORMATS",
    "CastWeights",
    "Linear",
    "LowRankPath",
    "Conv2d",
    "Conv3d",
    "cast_to",
    "quantize_q8_0",
    "quantize_q4_0",
    "dequantize_q8_0",
    "dequantize_q4_0",
    "quantize_scaled_fp8",
    "set_weight",
    "cast_modules",
    "replace_linears",
    "weight_nbytes",
    "CPU_CAST_CHUNK_BYTES",
    "cast_chunk_rows",
]

#: Storage formats of a cast-on-use weight: plain, scaled fp8, and every GGUF block format of mochi_core.quants.
WEIGHT_FORMATS = ("plain", "scaled_fp8", *quants.QUANT_TYPES)
QK = quants.QK  # values per legacy GGUF block
quantize_q8_0 = quants.quantize_q8_0
quantize_q4_0 = quants.quantize_q4_0
CPU_CAST_CHUNK_BYTES = 8 * 2**20  # the largest cast buffer a CPU Linear allocates at once (see module docstring)


def cast_to(t: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """``t.to(device, dtype)`` without a copy when nothing changes; fp8 goes through the device first."""
    if t is None:
        return None
    if t.device != device:
        t = t.to(device, non_blocking=True)
    return t if t.dtype == dtype else t.to(dtype)


# ----------------------------------------------------------------------------------------------
# GGUF blocks: one code path, mochi_core.quants (re-exported here under the names the loaders use)
# ----------------------------------------------------------------------------------------------


def dequantize_q8_0(raw: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(out, in/32*34) uint8 Q8_0 blocks -> (out, in) ``dtype`` (:func:`mochi_core.quants.dequantize`)."""
    return quants.dequantize(raw, "q8_0", shape, dtype)


def dequantize_q4_0(raw: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(out, in/32*18) uint8 Q4_0 blocks -> (out, in) ``dtype`` (:func:`mochi_core.quants.dequantize`)."""
    return quants.dequantize(raw, "q4_0", shape, dtype)


def quantize_scaled_fp8(w: torch.Tensor, fp8: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight -> (fp8 weight, fp32 scalar scale) with W ≈ W_fp8 * scale (Comfy's scaled fp8)."""
    w32 = w.detach().to(torch.float32)
    scale = (w32.abs().max() / torch.finfo(fp8).max).clamp(min=1e-12)
    return (w32 / scale).to(fp8), scale.reshape(()).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class CastWeights:
    """Mixin: holds ``weight`` in a storage format and casts it on use (see module docstring).

    Attributes set by :func:`set_weight`: ``weight_format`` (one of :data:`WEIGHT_FORMATS`),
    ``weight_shape`` (logical shape), and for ``scaled_fp8`` a ``scale_weight`` buffer.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_format: str = "plain"
    weight_shape: tuple[int, ...] | None = None
    scale_value: float = 1.0  # scaled fp8: the fp32 ``scale_weight`` as a Python float (no device sync per use)
    #: where the weight came from (``mochi_core.finite.weight_origin``): set by loaders, checked for NaN/inf on the
    #: first cast (``weight_checked`` then becomes True); None: never checked
    weight_origin: str | None = None
    weight_checked: bool = False
    #: the first cast's finiteness as a 0-d bool tensor on the compute device, read (one sync for the whole model)
    #: by ``mochi_core.finite.verify_weights`` after the forward; None when nothing is pending
    weight_finite: torch.Tensor | None = None

    def compute_weight(
        self, dtype: torch.dtype, device: torch.device, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """The weight as a ``dtype`` tensor on ``device``, whatever its storage format: (out, in, ...), or only the
        output rows ``rows = (start, stop)`` of it (every format stores whole rows, so a slice casts alone)."""
        w = self._cast(dtype, device, rows)
        if self.weight_origin is not None and not self.weight_checked:
            # first use: a finiteness flag of the slice just cast (in cache; never a second pass over a memory-mapped
            # file), kept on the device so no block waits for the host; verify_weights reads them all at once
            flag = finite_flag(w)
            self.weight_finite = flag if self.weight_finite is None or rows is None else self.weight_finite & flag
            shape = self.weight_shape or tuple(self.weight.shape)
            if rows is None or rows[1] >= shape[0]:  # Linear casts its row slices in order: the last one ends it
                self.weight_checked = True
        return w

    def _cast(self, dtype: torch.dtype, device: torch.device, rows: tuple[int, int] | None) -> torch.Tensor:
        fmt = self.weight_format
        stored = self.weight if rows is None else self.weight[rows[0] : rows[1]]
        if fmt == "plain":
            return cast_to(stored, dtype, device)
        raw = stored.to(device, non_blocking=True) if stored.device != device else stored
        if fmt == "scaled_fp8":
            # fp8 -> bf16/fp16/fp32 is exact; the fp32 scale goes in as a Python scalar, so the product is formed in
            # fp32 (opmath) and rounded once to ``dtype``, never with a scale already rounded to ``dtype``
            return raw.to(dtype, copy=True).mul_(self.scale_value)  # one weight-sized buffer, scaled in place
        shape = self.weight_shape
        assert shape is not None
        if fmt in quants.QUANT_TYPES:  # GGUF blocks, expanded on ``device`` (rows are whole blocks: see set_weight)
            out_rows = shape[0] if rows is None else rows[1] - rows[0]
            return quants.dequantize(raw, fmt, (out_rows, *shape[1:]), dtype)
        raise AssertionError(f"unknown weight format {fmt!r}; set_weight allows only {', '.join(WEIGHT_FORMATS)}")

    def compute_bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        return cast_to(self.bias, dtype, device)


def cast_chunk_rows(out_features: int, in_features: int, element_size: int) -> int | None:
    """Output rows per slice when a CPU Linear of this size casts its weight to a compute dtype of ``element_size``
    bytes in slices, or None when the whole cast weight fits in :data:`CPU_CAST_CHUNK_BYTES`."""
    row_bytes = in_features * element_size
    if out_features * row_bytes <= CPU_CAST_CHUNK_BYTES:
        return None
    return max(1, CPU_CAST_CHUNK_BYTES // row_bytes)


class LowRankPath(nn.Module):
    """A low-rank update next to a :class:`Linear`: ``out += (x @ down^T) @ up^T`` (what a LoRA adds at run time).

    ``down``: (R, in), ``up``: (out, R), held in the compute dtype with every scale already folded into ``up``
    (several LoRAs stacked along R). They are buffers of the Linear's child module ``lora``, so whole-module moves and
    block streaming carry them with their layer; they are non-persistent (never part of the model's state dict).
    """

    def __init__(self, down: torch.Tensor, up: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("down", down, persistent=False)
        self.register_buffer("up", up, persistent=False)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (..., out) += low-rank update of x (..., in), in place on ``out`` (a fresh layer output)."""
        down = cast_to(self.down, x.dtype, x.device)
        up = cast_to(self.up, x.dtype, x.device)
        assert down is not None and up is not None
        h = F.linear(x.reshape(-1, x.shape[-1]), down)  # (M, R)
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(h, up.t())  # one pass over the output, no output-sized temporary
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class Linear(CastWeights, nn.Linear):
    """``nn.Linear`` with cast-on-use weights. x: (..., in) -> (..., out) in x's dtype.

    A child module ``lora`` (:class:`LowRankPath`, installed by :mod:`mochi_core.lora`) adds its low-rank update to
    the output; the stored weight is never touched by it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x)
        lora = self._modules.get("lora")
        return out if lora is None else lora.add_to(x, out)  # type: ignore[operator]

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.compute_bias(x.dtype, x.device)
        needs_cast = self.weight_format != "plain" or self.weight.dtype != x.dtype
        shape = self.weight_shape or tuple(self.weight.shape)
        step = cast_chunk_rows(shape[0], shape[1], x.element_size()) if needs_cast and x.device.type == "cpu" else None
        if step is None:
            return F.linear(x, self.compute_weight(x.dtype, x.device), bias)
        # CPU, large weight: cast and multiply slices of output rows into one output (same values, small buffer)
        out = x.new_empty(*x.shape[:-1], shape[0])
        flat_x, flat_out = x.reshape(-1, shape[1]), out.view(-1, shape[0])
        for start in range(0, shape[0], step):
            stop = min(start + step, shape[0])
            w = self.compute_weight(x.dtype, x.device, (start, stop))
            flat_out[:, start:stop] = F.linear(flat_x, w, None if bias is None else bias[start:stop])
            del w  # free this slice before the next one is cast
        return out


class Conv2d(CastWeights, nn.Conv2d):
    """``nn.Conv2d`` with cast-on-use weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(x.dtype, x.device), self.compute_bias(x.dtype, x.device))


class Conv3d(CastWeights, nn.Conv3d):
    """``nn.Conv3d`` with cast-on-use weights.

    On the CPU in float32 the convolution always goes to oneDNN. ATen's own choice sends small inputs
    (B·C·T·H <= 20480 with 3x3 kernels) to ``slow_conv3d``, whose im2col buffer is 27 times the input: the VAE's
    short temporal chunks and small tiles would then need several times the memory the planner predicts, and run
    slower. Same math either way (differences at float rounding level).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.compute_weight(x.dtype, x.device)
        bias = self.compute_bias(x.dtype, x.device)
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not torch.is_grad_enabled()
        ):
            return torch.mkldnn_convolution(
                x.contiguous(), weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return self._conv_forward(x, weight, bias)


def set_weight(
    module: nn.Module,
    tensor: torch.Tensor,
    *,
    fmt: str = "plain",
    scale: torch.Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    origin: str | None = None,
) -> None:
    """Install ``tensor`` as ``module.weight`` in storage format ``fmt`` (no copy, no grad).

    ``shape`` is the logical weight shape (required for GGUF block formats, whose bytes are then held as
    (out, bytes per row): every row must be whole blocks, so a slice of rows expands alone); ``scale`` the
    scaled-fp8 scalar (checked for NaN/inf here); ``origin`` names the file and tensor
    (``mochi_core.finite.weight_origin``): the weight is then checked for NaN/inf at its first cast.
    """
    # the loaders' invariants (formats are detected from the files, scales read with their weights)
    assert fmt in WEIGHT_FORMATS, f"weight format {fmt!r} not in {WEIGHT_FORMATS}"
    if not isinstance(module, CastWeights):
        raise TypeError(f"{type(module).__name__} does not cast weights on use")
    if fmt in quants.QUANT_TYPES:
        per_row = None if shape is None else quants.row_bytes(fmt, math.prod(shape[1:]))
        if per_row is None or tensor.numel() != shape[0] * per_row or tensor.dtype != torch.uint8:
            raise InvalidInputError(
                f"{fmt} data {tuple(tensor.shape)} {tensor.dtype} does not hold a {shape} weight in whole blocks per "
                "row" + (" (the logical shape is required)" if shape is None else "")
            )
        tensor = tensor.reshape(shape[0], per_row)
    module.weight = nn.Parameter(tensor, requires_grad=False)
    module.weight_format = fmt
    module.weight_shape = tuple(shape) if shape is not None else tuple(tensor.shape)
    module.weight_origin = origin
    module.weight_checked = False
    if fmt == "scaled_fp8":
        if scale is None or scale.numel() != 1:  # a file's scale_weight: checked here, where it is installed
            shape = None if scale is None else tuple(scale.shape)
            raise InvalidInputError(f"scale_weight must be a single value; got shape {shape}")
        scale32 = scale.reshape(()).to(torch.float32)
        if origin is not None:
            check_finite(scale32, f"{origin} (its scale_weight)")
        module.register_buffer("scale_weight", scale32, persistent=True)
        module.scale_value = float(scale32)
    else:
        if "scale_weight" in module._buffers:
            del module._buffers["scale_weight"]
        module.scale_value = 1.0


def cast_modules(model: nn.Module) -> Iterator[tuple[str, CastWeights]]:
    """Every cast-on-use layer of ``model`` with its qualified name."""
    for name, mod in model.named_modules():
        if isinstance(mod, CastWeights):
            yield name, mod


def replace_linears(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` for :class:`Linear` (same parameters, no copy).

    Used for third-party modules (transformers' T5) so they share the cast-on-use mechanism.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and not isinstance(child, CastWeights):
            new = Linear.__new__(Linear)
            new.__dict__.update(child.__dict__)
            new.weight_format = "plain"
            new.weight_shape = tuple(child.weight.shape)
            setattr(model, name, new)
        else:
            replace_linears(child)
    return model


def weight_nbytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``model`` as stored."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
