"""``apply_loras``: make a list of (LoRA, strength) the active set of a loaded DiT; an empty list removes them all.

Two ways to apply, same result up to float rounding:

- **run time** (default): each affected :class:`~mochi_core.ops.Linear` gets a child :class:`~mochi_core.ops.LowRankPath`
  that adds ``(x @ down^T) @ up^T`` to its output. The stacked LoRAs of a layer are one path of rank = the sum of
  their ranks (``down`` = the ``lora_A`` rows one above the other, ``up`` = the ``lora_B`` columns side by side, each
  multiplied by its file scale x strength in float32, then rounded once to the compute dtype). Base weights are not
  touched, so fp8, scaled-fp8 and GGUF storage stay exactly as stored.
- **merge** (``merge=True``, float storage only: fp32, bf16, fp16): each affected weight is replaced by a new tensor
  ``W + sum(scale x strength x (lora_B @ lora_A))``, computed in float32 and rounded once to the storage dtype (the
  order of Genmo's own merge). The original weight tensor is kept aside (the layer then holds both), and put back on
  removal.

Removal (a new list, an empty one, or :func:`remove_loras`) deletes the paths and puts the original weight tensors
back, so the model is bit for bit the loaded base model again, without reading the file. A strength of 0 adds
nothing (the LoRA is skipped).

Everything is checked before the model changes: strengths (finite real numbers), each LoRA layer against the model
(names, shapes), merge storage. A refused call leaves the previous LoRAs active. Block streaming captures a block's
tensors when it is installed, so LoRAs must be applied before :func:`~mochi_core.memory.streaming.enable_block_streaming`
(and the streamer removed before changing them); the paths are buffers of their layer, so they then travel with
their block, and whole-module moves carry them too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import ops
from ..errors import InvalidInputError
from ..memory.streaming import streaming_attached
from ..precision import lora_factor_dtype, merge_storage_dtypes
from ..scalars import as_bool
from .model import LoRA, LoRAPart
from .reader import load_lora

__all__ = ["apply_loras", "check_loras", "remove_loras", "active_loras", "loras_applied", "ActiveLoRAs", "LoRASpec"]

LoRASpec = tuple[LoRA | str | os.PathLike[str], float]
_STATE = "_mochi_loras"  # attribute of the DiT holding its ActiveLoRAs
_BASE = "_mochi_lora_base_weight"  # attribute of a merged Linear holding its original weight tensor


@dataclass(frozen=True)
class ActiveLoRAs:
    """The LoRAs active on a DiT: ``entries`` ((LoRA, strength), in order), ``merged`` (merge or run time),
    ``layers`` (names of the changed Linear layers)."""

    entries: tuple[tuple[LoRA, float], ...] = ()
    merged: bool = False
    layers: tuple[str, ...] = ()


def active_loras(dit: nn.Module) -> ActiveLoRAs:
    """What :func:`apply_loras` last made active on ``dit`` (empty when none)."""
    return dit.__dict__.get(_STATE) or ActiveLoRAs()


def _check_dit(dit: Any) -> nn.Module:
    if not isinstance(dit, nn.Module) or not isinstance(getattr(dit, "blocks", None), nn.ModuleList):
        raise InvalidInputError(f"apply_loras needs a DiT loaded with load_dit; got {type(dit).__name__}")
    if streaming_attached(dit):
        raise InvalidInputError(
            "LoRAs cannot change while block streaming is installed on this DiT (it has captured each block's "
            "tensors): call remove() on the streaming handle, apply the LoRAs, then enable streaming again"
        )
    return dit


def _normalize(loras: Any) -> list[tuple[LoRA, float]]:
    """The (LoRA, strength) list, checked by :class:`~mochi_core.options.LoRAOptions` (paths then read)."""
    from ..options import LoRAOptions

    resolved = LoRAOptions.resolve(loras=loras)
    return [(lora if isinstance(lora, LoRA) else load_lora(lora), s) for lora, s in resolved.loras]


def _linear(dit: nn.Module, lora: LoRA, part: LoRAPart) -> ops.Linear:
    try:
        module = dit.get_submodule(part.layer)
    except AttributeError:
        module = None
    if not isinstance(module, ops.Linear):
        depth = len(dit.blocks)  # type: ignore[arg-type]
        raise InvalidInputError(
            f"LoRA {lora.name}: key {part.key!r} matches no layer of this DiT ({part.layer!r} is not one of its "
            f"Linear layers; the model has {depth} blocks)"
        )
    out_f, in_f = module.weight_shape or tuple(module.weight.shape)
    rows_ok = part.out_rows == out_f
    if part.down.shape[1] != in_f or not rows_ok:
        raise InvalidInputError(
            f"LoRA {lora.name}: shapes do not fit layer {part.layer!r}: its weight is [{out_f}, {in_f}] "
            f"(out, in) but the LoRA gives lora_A {list(part.down.shape)} and lora_B {list(part.up.shape)}"
            + (" (one third of a fused qkv weight)" if part.third is not None else "")
        )
    return module


def _full_up(part: LoRAPart, out_f: int) -> torch.Tensor:
    """``up`` (rows, r) as (out_f, r) float32: a q/k/v third placed in its rows, zeros elsewhere."""
    up = part.up.to(torch.float32)
    if part.third is None:
        return up
    full = up.new_zeros(out_f, up.shape[1])
    rows = out_f // 3
    full[part.third * rows : (part.third + 1) * rows] = up
    return full


def _group(dit: nn.Module, entries: list[tuple[LoRA, float]]) -> dict[str, list[tuple[LoRAPart, float]]]:
    """layer name -> [(part, scale x strength)], every part checked against the model; strength 0 skipped."""
    groups: dict[str, list[tuple[LoRAPart, float]]] = {}
    for lora, strength in entries:
        for part in lora.parts:
            _linear(dit, lora, part)
            if strength != 0.0:
                groups.setdefault(part.layer, []).append((part, part.scale * strength))
    return groups


def _check_merge(dit: nn.Module, groups: dict[str, Any]) -> None:
    allowed = merge_storage_dtypes()
    for layer in groups:
        module = dit.get_submodule(layer)
        assert isinstance(module, ops.Linear)
        w = module.weight
        if module.weight_format != "plain" or w.dtype not in allowed:
            stored = w.dtype if module.weight_format == "plain" else module.weight_format
            raise InvalidInputError(
                f"merge=True needs fp32, bf16 or fp16 weight storage; layer {layer!r} is stored as {stored}: apply the "
                "LoRAs at run time (merge=False), which keeps fp8 and GGUF weights as stored"
            )
        if w.is_meta:
            raise InvalidInputError(f"layer {layer!r} has no weights loaded (meta tensor); cannot merge a LoRA into it")


def _remove(dit: nn.Module) -> None:
    state = active_loras(dit)
    for layer in state.layers:
        module = dit.get_submodule(layer)
        module._modules.pop("lora", None)
        base = module.__dict__.pop(_BASE, None)
        if base is not None:
            current = module._parameters["weight"]
            if current is not None and base.device != current.device:
                base = base.to(current.device)  # a copy of the same values: still bit for bit the loaded weight
            module._parameters["weight"] = base
    dit.__dict__.pop(_STATE, None)


def _install_runtime(dit: nn.Module, groups: dict[str, list[tuple[LoRAPart, float]]], dtype: torch.dtype) -> None:
    for layer, parts in groups.items():
        module = dit.get_submodule(layer)
        out_f = (module.weight_shape or tuple(module.weight.shape))[0]
        device = module.weight.device
        down = torch.cat([p.down.to(torch.float32) for p, _ in parts], dim=0)
        up = torch.cat([_full_up(p, out_f) * s for p, s in parts], dim=1)  # scale x strength in float32
        module.add_module("lora", ops.LowRankPath(down.to(device, dtype), up.to(device, dtype)))


def _install_merged(dit: nn.Module, groups: dict[str, list[tuple[LoRAPart, float]]]) -> None:
    for layer, parts in groups.items():
        module = dit.get_submodule(layer)
        base = module._parameters["weight"]
        w = base.detach().to(torch.float32, copy=True)
        for p, s in parts:
            delta = _full_up(p, w.shape[0]).to(w.device) @ p.down.to(w.device, torch.float32)
            w += delta * s  # (lora_B @ lora_A) * scaling, as Genmo's merge
        module.__dict__[_BASE] = base
        module._parameters["weight"] = nn.Parameter(w.to(base.dtype), requires_grad=False)


def check_loras(dit: nn.Module, loras: Sequence[LoRASpec], *, merge: bool = False) -> list[tuple[LoRA, float]]:
    """Every check :func:`apply_loras` makes (list, strengths, layer names and shapes, merge storage), without
    changing ``dit``; returns the (LoRA, strength) list with paths read. Raises InvalidInputError as it does."""
    dit = _check_dit(dit)
    entries = _normalize(loras)
    groups = _group(dit, entries)
    if as_bool("merge", merge):
        _check_merge(dit, groups)
    return entries


def apply_loras(dit: nn.Module, loras: Sequence[LoRASpec], *, merge: bool = False) -> ActiveLoRAs:
    """Make ``loras`` (a list of ``(lora, strength)``; lora = a :func:`load_lora` result or a path) the active LoRAs of
    ``dit``, replacing any earlier ones; ``[]`` removes them all, restoring the base model bit for bit.

    ``strength``: any finite real number (1 = as trained, 0 = off, negative = subtracted). ``merge``: False adds
    run-time low-rank paths (any weight storage); True merges into fp32 / bf16 / fp16 weights (see module docstring).
    Afterwards ``dit(x, sigma, t5_feat, t5_mask)`` includes them. Returns the new :class:`ActiveLoRAs`.
    Raises :class:`~mochi_core.errors.InvalidInputError` (naming the LoRA file, the layer and the shapes) with the
    model unchanged.
    """
    dit = _check_dit(dit)
    merge = as_bool("merge", merge)
    entries = _normalize(loras)
    groups = _group(dit, entries)
    if merge:
        _check_merge(dit, groups)
    _remove(dit)
    if not entries:
        return ActiveLoRAs()
    if merge:
        _install_merged(dit, groups)
    else:
        _install_runtime(dit, groups, lora_factor_dtype(getattr(dit, "compute_dtype", torch.float32)))
    state = ActiveLoRAs(tuple(entries), merge, tuple(sorted(groups)))
    dit.__dict__[_STATE] = state
    return state


def remove_loras(dit: nn.Module) -> None:
    """Remove every LoRA from ``dit`` (same as ``apply_loras(dit, [])``)."""
    apply_loras(dit, [])


@contextlib.contextmanager
def loras_applied(dit: nn.Module, loras: Sequence[LoRASpec], *, merge: bool = False) -> Iterator[ActiveLoRAs]:
    """``apply_loras`` for the body of a ``with`` block; afterwards (also after an error) the LoRAs that were active
    before are back (none, usually), so a shared, cached model is left as it was."""
    before = active_loras(dit)
    state = apply_loras(dit, loras, merge=merge)
    try:
        yield state
    finally:
        apply_loras(dit, list(before.entries), merge=before.merged)
