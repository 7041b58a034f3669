"""The nodes' memory policy: every phase is placed by the core planner, inside ComfyUI's memory.

One rule for the whole pack: text encoding, sampling and decoding inside ComfyUI take their placement from
:func:`mochi_core.plan`, the planner behind ``generate(budget=...)`` and ``python -m mochi_core plan``:

- **budget** (:func:`phase_budget`): the node's ``memory_budget_gb`` when set, else the free memory of the compute
  device. Either way ComfyUI is first asked to free what the phase needs at best (``free_memory``: it unloads
  only as many of its own models as needed), and on a GPU ComfyUI's reserve for other applications
  (``extra_reserved_memory()``, ``--reserve-vram``) is subtracted from the free memory; a budget larger than what
  is then free is cut to it.
- **plan** (:func:`plan_text`, :func:`plan_sampling`, :func:`plan_decode`): ``plan()`` with the loaded model's
  own configuration, storage and compute dtypes, for the job and budget; the node uses the phase it runs (T5
  layers resident, DiT blocks resident and CFG batching, decode tile).
- **apply** (:func:`placed`): the model goes to the compute device whole, or as the plan's streaming spec
  (``Plan.dit_streaming`` / ``Plan.t5_streaming``) says: N blocks resident, the others streamed
  (:func:`mochi_core.memory.enable_block_streaming`); a plan never changes a model, the node applies it; afterwards every weight is
  back in system RAM (:data:`nodes.host.WEIGHTS_HOME`, also under ``--highvram``), so ComfyUI's next model has
  the GPU. On a CPU-only ComfyUI the same plan bounds system RAM (streamed blocks give their pages back).

When the phase does not fit even at its smallest setting: with ``memory_budget_gb`` set the node refuses with
:class:`~mochi_core.errors.DoesNotFitError` (as ``generate(budget=...)`` does), naming the smallest budget that
fits; with the automatic budget it logs that and runs its smallest setting.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import host

logger = logging.getLogger(__name__)

__all__ = [
    "GB",
    "Budget",
    "PhasePlan",
    "phase_budget",
    "plan_text",
    "plan_sampling",
    "plan_decode",
    "placed",
    "stored_as",
]

#: bytes of one GB of the ``memory_budget_gb`` inputs (10^9, like the planner and ``--budget 12GB`` of the CLI)
GB = 10**9
#: budget of the "at best" plan: what a phase needs when memory is no object (every block resident, whole decode)
_UNBOUNDED = 1 << 50


@dataclass(frozen=True)
class Budget:
    """Device bytes a phase may use. ``source``: "memory_budget_gb" or "free memory"; ``free_bytes``: free on
    the device after ComfyUI made room; ``reserve_bytes``: ComfyUI's reserve, subtracted; ``capped``: a
    ``memory_budget_gb`` larger than the free memory was cut to it."""

    nbytes: int
    source: str
    free_bytes: int
    reserve_bytes: int
    capped: bool = False

    @property
    def explicit(self) -> bool:
        """True when the user's ``memory_budget_gb`` is the budget (a refusal is then the answer to a misfit)."""
        return self.source == "memory_budget_gb" and not self.capped

    def describe(self) -> str:
        from mochi_core.memory import format_bytes

        if self.explicit:
            return f"budget {format_bytes(self.nbytes)} (memory_budget_gb)"
        what = "memory_budget_gb cut to the free memory: " if self.capped else ""
        reserve = f" - ComfyUI reserve {format_bytes(self.reserve_bytes)}" if self.reserve_bytes else ""
        return f"budget {format_bytes(self.nbytes)} ({what}free {format_bytes(self.free_bytes)}{reserve})"


def phase_budget(device: torch.device, requested_bytes: int, need_bytes: int) -> Budget:
    """The budget of one phase on ``device``: ``requested_bytes`` (a node's ``memory_budget_gb``; 0 = automatic)
    or the free memory, after asking ComfyUI to free ``need_bytes`` (the phase's peak at best, or the requested
    budget when smaller) plus its reserve. On a GPU the reserve (``extra_reserved_memory()``) is kept free and a
    requested budget above the free memory is cut to it; on the CPU a requested budget is taken as it is."""
    reserve = host.reserved_bytes(device)
    ask = (min(requested_bytes, need_bytes) if requested_bytes > 0 else need_bytes) + reserve
    free = host.make_room(ask, device)
    usable = max(0, free - reserve)
    if requested_bytes <= 0:
        return Budget(usable, "free memory", free, reserve)
    if device.type == "cpu" or requested_bytes <= usable:
        return Budget(requested_bytes, "memory_budget_gb", free, reserve)
    return Budget(usable, "memory_budget_gb", free, reserve, capped=True)


@dataclass(frozen=True)
class PhasePlan:
    """The planner's answer for the phase a node runs: ``plan`` (the whole :class:`mochi_core.memory.Plan`),
    ``phase`` (its :class:`~mochi_core.memory.PhasePeak` for this node), ``budget`` and ``smallest_bytes`` (the
    least budget with which this phase fits, only computed when it does not fit)."""

    plan: Any
    phase: Any
    budget: Budget
    fits: bool
    smallest_bytes: int = 0

    def describe(self, what: str, device: torch.device, placement: str) -> str:
        """The node's one log line: what is resident, the predicted peak and the budget."""
        from mochi_core.memory import format_bytes

        return (
            f"{what} on {device}: {placement}; predicted peak {format_bytes(self.phase.peak_bytes)}, "
            f"{self.budget.describe()}"
        )

    def check(self, what: str) -> None:
        """Refuse a misfit under the user's own budget (:class:`~mochi_core.errors.DoesNotFitError`); log it under
        the automatic budget (the phase then runs its smallest setting)."""
        if self.fits:
            return
        from mochi_core.errors import DoesNotFitError
        from mochi_core.memory import format_bytes

        least = format_bytes(self.smallest_bytes)
        if self.budget.explicit:
            raise DoesNotFitError(
                f"{what} does not fit in memory_budget_gb={self.budget.nbytes / GB:g} "
                f"({format_bytes(self.budget.nbytes)}): the smallest budget that fits is {least}; raise "
                "memory_budget_gb (or set it to 0 = the free memory)",
                min_budget_bytes=self.smallest_bytes,
            )
        logger.warning(
            "%s: %s is less than the %s the planner predicts at the smallest setting; running it anyway",
            what,
            self.budget.describe(),
            least,
        )


def stored_as(layer: torch.nn.Module) -> str:
    """The planner's storage name of a cast-on-use linear layer: "scaled_fp8", "q8_0", "q4_0", or its dtype."""
    from mochi_core.dtypes import dtype_name

    fmt = getattr(layer, "weight_format", "plain")
    return fmt if fmt != "plain" else dtype_name(layer.weight.dtype)


def _device_kind(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpu"


def _job_size(latent_shape: tuple[int, ...]) -> dict[str, int]:
    """``(B, 12, T, h, w)`` -> the planner's width / height / frames / batch. Latent sides are rounded up to even
    (the planner takes multiples of 16 pixels); a rounded side plans for a slightly larger latent."""
    b, _, t, h, w = (int(v) for v in latent_shape)
    return {"width": 8 * (w + w % 2), "height": 8 * (h + h % 2), "frames": 6 * (t - 1) + 1, "batch": b}


def _plan(name: str, device: torch.device, requested: int, kwargs: dict[str, Any]) -> PhasePlan:
    """Plan phase ``name`` at best (to know what to ask ComfyUI for), then under the budget; on a misfit also at
    budget 1 byte, where the planner takes the phase's smallest setting (forced choices kept): the least budget
    with which the phase fits."""
    from mochi_core import plan

    dev = _device_kind(device)
    need = plan(**kwargs, budget_bytes=_UNBOUNDED, device=dev).phase(name).peak_bytes
    budget = phase_budget(device, requested, need)
    job = plan(**kwargs, budget_bytes=max(1, budget.nbytes), device=dev)
    phase = job.phase(name)
    fits = phase.peak_bytes <= budget.nbytes
    least = 0 if fits else plan(**kwargs, budget_bytes=1, device=dev).phase(name).peak_bytes
    return PhasePlan(job, phase, budget, fits, least)


def plan_text(encoder: Any, device: torch.device) -> PhasePlan:
    """T5 layers resident for one prompt on ``device`` under the free memory (``text_encoding`` phase)."""
    from mochi_core.dtypes import dtype_name
    from mochi_core.memory import T5Sizes

    s = encoder.shape
    sizes = T5Sizes(s.vocab_size, s.d_model, s.d_kv, s.num_heads, s.d_ff, s.num_layers, s.num_buckets)
    layer = encoder.model.encoder.block[0].layer[1].DenseReluDense
    kwargs = {
        "width": 16,  # the text phase does not depend on the video size
        "height": 16,
        "frames": 1,
        "t5_sizes": sizes,
        "t5_storage": stored_as(layer.wi_0 if hasattr(layer, "wi_0") else layer.wi),
        "t5_compute_dtype": dtype_name(encoder.dtype),
    }
    return _plan("text_encoding", device, 0, kwargs)


def plan_sampling(
    dit: Any,
    latent_shape: tuple[int, ...],
    device: torch.device,
    *,
    memory: str,
    budget_bytes: int,
    cfg_pass: bool,
    text_shape: tuple[int, int] = (256, 4096),
    teacache: bool = False,
) -> PhasePlan:
    """DiT blocks resident and CFG batching for sampling a ``(B, 12, T, h, w)`` latent on ``device``.

    ``memory`` (the DiT loader's input): "auto" lets the planner choose; "full" keeps every block resident;
    "stream" runs the CFG passes one after another and streams what does not fit. ``cfg_pass``: False when cfg
    is 1 (no negative pass, like an unbatched CFG step). ``text_shape``: (tokens, features) of the conditioning
    the sampler holds on the device. LoRAs of the handle's chain are counted in the DiT blocks they change. ``teacache``: count
    TeaCache's state kept across steps."""
    from mochi_core.dtypes import dtype_name
    from mochi_core.memory import T5Sizes

    model = dit.model
    kwargs: dict[str, Any] = {
        **_job_size(latent_shape),
        "t5_sizes": T5Sizes(d_model=int(text_shape[1]), tokens=int(text_shape[0])),
        "dit_config": model.config,
        "dit_storage": stored_as(model.blocks[0].mlp_x.w1),
        "compute_dtype": dtype_name(model.compute_dtype),
        "attention": model.attention,
        "token_chunk": getattr(model, "token_chunk", None),
        "teacache": bool(teacache),
    }
    if getattr(dit, "loras", ()):  # the chain's LoRA factors, applied before placement, live in the blocks
        kwargs["loras"] = [lora for lora, _ in dit.loras]
    if not cfg_pass or memory == "stream":
        kwargs["batch_cfg"] = False
    if memory == "full":
        kwargs["resident_blocks"] = model.config.depth
    return _plan("sampling", device, budget_bytes, kwargs)


def plan_decode(
    vae: Any, latent_shape: tuple[int, ...], device: torch.device, *, budget_bytes: int, tile: Any = None
) -> PhasePlan:
    """The decode tile for a ``(B, 12, T, h, w)`` latent on ``device``: the largest that fits the budget, or
    ``tile`` (latent frames, height, width[, overlap]) when the node's tile inputs force one."""
    from mochi_core.dtypes import dtype_name

    kwargs: dict[str, Any] = {
        **_job_size(latent_shape),
        "decoder_config": vae.decoder.config,
        "vae_dtype": dtype_name(vae.dtype),
    }
    if tile is not None:
        kwargs["decode_tile"] = tile
    return _plan("decoding", device, budget_bytes, kwargs)


@contextlib.contextmanager
def placed(
    what: str,
    module: torch.nn.Module,
    device: torch.device,
    *,
    streaming: Any = None,
    blocks: torch.nn.ModuleList | None = None,
    set_device: Callable[[torch.device], None] | None = None,
) -> Iterator[torch.device]:
    """``module`` on ``device`` for the body of the ``with``: whole, or as the plan's ``streaming``
    (:class:`mochi_core.options.StreamingSpec`) says when it streams: its first ``resident_blocks`` blocks
    (``module.blocks``, or ``blocks``) resident and the others streamed from system RAM. Afterwards every weight is
    back in :data:`nodes.host.WEIGHTS_HOME`, also when the move failed part-way; ``set_device`` tells the model's
    wrapper where its weights are (T5 and VAE keep a ``device`` attribute).

    Yields the device the inputs must live on. Running out of memory while moving raises
    :class:`~mochi_core.errors.DoesNotFitError` naming ``what`` (the model is whole in system RAM again).
    """
    from mochi_core.errors import DoesNotFitError
    from mochi_core.memory import streaming as stream

    home = host.WEIGHTS_HOME
    streams = streaming is not None and streaming.streams
    if not streams and device == home:
        yield home
        return
    streamer = None
    oom = False
    try:
        try:
            if not streams:
                stream.move_module(module, device)
            else:
                streamer = stream.enable_block_streaming(
                    module,
                    streaming.resident_blocks,
                    device=device,
                    offload_device=home,
                    prefetch=streaming.prefetch,
                    blocks=blocks,
                    pin_memory=host.pin_policy(),
                )
            if set_device is not None:
                set_device(device)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
            if not host.is_oom(exc):
                raise
            oom = True
        if oom:  # outside the except block, so the failed attempt's tensors can be freed by the move back
            stream.move_module(module, home)
            host.soft_empty_cache()
            raise DoesNotFitError(
                f"out of memory on {device} while moving the {what} weights there; they stay in system RAM: "
                "free GPU memory (or close other models) or set a smaller memory_budget_gb and queue again"
            )
        yield device
    finally:
        if streamer is not None:
            streamer.remove()
        stream.move_module(module, home)  # every weight back home, also after a failure part-way
        if set_device is not None:
            set_device(home)
        host.soft_empty_cache()
