"""Where the DiT sits while it samples: whole on the compute device, or block streaming, inside ComfyUI's memory.

Reproduces the behaviour of ComfyUI's partial loading (``comfy/model_patcher.py`` lowvram: what does not fit
stays in system RAM and streams in per use) with ``mochi_core.memory`` block streaming, and asks ComfyUI to make
room first (``comfy.model_management.free_memory``, never ``unload_all_models``). After sampling the weights go
back to the offload device, so the VAE decode gets the GPU (peers.md P1, P3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import host

logger = logging.getLogger(__name__)

__all__ = ["Placement", "plan_placement", "dit_on_device", "activation_bytes"]

GiB = 1024**3


def _nbytes(module: torch.nn.Module) -> int:
    from mochi_core.memory.streaming import block_nbytes

    return block_nbytes(module)


def activation_bytes(model: Any, latent_shape: tuple[int, ...], cfg_batch: int) -> int:
    """Device bytes one DiT call on ``latent_shape`` (B, 12, T, h, w) allocates beyond its weights, with CFG batch
    ``cfg_batch``: :func:`mochi_core.memory.planner.dit_activation_bytes` (256 text tokens, the worst case) plus a
    768 MiB reserve for the CUDA context and workspaces (the planner's default)."""
    from mochi_core.memory.planner import dit_activation_bytes

    cfg = model.config
    b, _, t, h, w = latent_shape
    dtype = getattr(model, "compute_dtype", torch.float32)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    parts = dit_activation_bytes(
        cfg,
        visual_tokens=t * (h // cfg.patch_size) * (w // cfg.patch_size),
        text_tokens=256,
        batch=b * cfg_batch,
        compute_dtype=name,
        storage="bf16",
        backend="flash",
    )
    return int(parts["total"]) + 768 * 1024**2


@dataclass(frozen=True)
class Placement:
    """``mode``: "none" (compute on the home device), "full" or "stream"; ``resident_blocks`` for "stream"."""

    mode: str
    resident_blocks: int
    budget_bytes: int
    weight_bytes: int
    activation_bytes: int

    def describe(self) -> str:
        if self.mode == "stream":
            return (
                f"streaming: {self.resident_blocks} blocks resident, budget {self.budget_bytes / GiB:.1f} GiB, "
                f"weights {self.weight_bytes / GiB:.1f} GiB, activations ~{self.activation_bytes / GiB:.1f} GiB"
            )
        return f"{self.mode}: weights {self.weight_bytes / GiB:.2f} GiB, activations ~{self.activation_bytes / GiB:.2f} GiB"


def plan_placement(model: Any, *, mode: str, budget_bytes: int, free_bytes: int, act_bytes: int) -> Placement:
    """Pure decision: "full" when weights + activations fit the budget (or ``mode`` forces it), else "stream" with
    as many leading blocks resident as fit. ``budget_bytes`` 0 means ``free_bytes``."""
    weights = _nbytes(model)
    budget = budget_bytes if budget_bytes > 0 else free_bytes
    if mode == "full" or (mode == "auto" and weights + act_bytes <= budget):
        return Placement("full", len(model.blocks), budget, weights, act_bytes)
    blocks = list(model.blocks)
    per_block = max(_nbytes(b) for b in blocks)
    non_block = weights - sum(_nbytes(b) for b in blocks)
    # resident + two streamed blocks in flight (current + prefetch) must fit with the activations
    room = budget - act_bytes - non_block - 2 * per_block
    resident = max(0, min(len(blocks), room // per_block if per_block else len(blocks)))
    return Placement("stream", int(resident), budget, weights, act_bytes)


@contextlib.contextmanager
def dit_on_device(handle: Any, latent_shape: tuple[int, ...], *, cfg_batch: int = 2) -> Iterator[torch.device]:
    """Put the DiT of ``handle`` (a :class:`nodes.loaders.MochiDiT`) on the compute device for the block's body,
    fully or block-streamed per its memory settings; afterwards every weight is back on its home device.

    Yields the device the latent must live on.
    """
    from mochi_core.memory.streaming import enable_block_streaming, move_module

    model = handle.model
    device = host.compute_device()
    home = next(model.parameters()).device
    if device == home or device.type == "cpu":
        yield home
        return
    act = activation_bytes(model, latent_shape, cfg_batch)
    weights = _nbytes(model)
    free = host.make_room(weights + act, device)
    placement = plan_placement(
        model, mode=handle.memory, budget_bytes=handle.budget_bytes, free_bytes=free, act_bytes=act
    )
    logger.info("Mochi DiT on %s, %s", device, placement.describe())
    streamer = None
    try:
        if placement.mode == "full":
            move_module(model, device)
        else:
            streamer = enable_block_streaming(
                model, placement.resident_blocks, device=device, offload_device=home, pin_memory=host.pin_policy()
            )
        yield device
    finally:
        if streamer is not None:
            streamer.remove()
        move_module(model, home)
        host.soft_empty_cache()
