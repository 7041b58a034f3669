"""The memory planner: predict the peak of every phase of one generation before any work starts.

The model of memory below is derived from *our* code, tensor by tensor,
and checked against measured allocation peaks on CPU (``tests/unit/test_planner_validation.py``):

- **weights** are counted exactly from the official key shapes (:meth:`DiTConfig.expected_shapes`, the T5-XXL
  T5-XXL layout, the decoder built on the ``meta`` device) and the storage rule of
  :mod:`mochi_core.precision`: tensors on the high-precision skip list keep the official file's fp32 (a Comfy
  bf16 file keeps them in bf16: 0.2 GB less than planned), everything else takes the requested storage (fp8: 1 byte
  plus a per-tensor scale, Q8_0: 34/32, Q4_0: 18/32).
- **DiT activations** (``mochi_core/dit/block.py``): the peak of a block is in the visual MLP, when ``w2``
  writes its output. Live then: the block input, the attention output, the post-attention stream, the modulated
  MLP input, ``w1``'s output (2·F_x wide), SiLU(a)·b (F_x wide), ``w2``'s output — (5 + 3·F_x/D_x)·B·N·D_x elements
  of the compute dtype — plus the RoPE rotations shared by all blocks (N·D_x/2 complex64) and ``w2``'s weight
  cast to the compute dtype. The attention stage peaks lower (12·B·N·D_x) as long as the attention kernel
  needs O(N) workspace: SDPA's flash / memory-efficient kernels on CUDA in bf16 and the CPU flash kernel do;
  PyTorch's MATH fallback materializes B·H·S² scores (~96 GB at 163 frames), and the planner
  models it when that is what torch would pick (fp32 on CUDA: memory-efficient kernel, still O(N)).
- **phases** run one after another on the compute device; each brings in its own weights and releases the
  previous ones: text encoding (T5), sampling (DiT: all blocks resident, or N resident and the others streamed
  by :mod:`mochi_core.memory.streaming`, which adds ``1 + prefetch`` block buffers), decoding (decoder weights +
  one tile's working set, which holds the decoded video once, as the float32 output accumulator; the pipeline moves
  it to the CPU as soon as the decode returns, so it is not counted again after the decode).
- ``resident_blocks`` / ``batch_cfg`` / ``decode_tile`` force a choice; the smallest budget that fits is then the
  smallest with those choices kept.

On CUDA, ``reserve_bytes`` (default 768 MiB: CUDA context, cuBLAS workspaces, allocator rounding) is added to
every phase before comparing with the budget; on CPU it is 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...checks import check_instance
from ...errors import DoesNotFitError
from ...options import DecodeOptions, StreamingSpec
from ...precision import default_compute_dtype, dtype_name
from ...scalars import as_bool, as_int_in
from ...units import GB, format_bytes, parse_bytes
from ..estimates import (
    _DTYPE_BYTES,
    ATTENTIONS,
    DIT_STORAGES,
    VAE_DTYPES,
    T5Sizes,
    _norm_storage,
    attention_backend,
    decode_working_set_bytes,
    decoder_weight_bytes,
    dit_activation_bytes,
    dit_weight_bytes,
    t5_activation_bytes,
    t5_weight_bytes,
)
from .args import check_decode_tile, check_frame_size, check_plan_device, check_reserve
from .phases import PhaseModel, PhasePeak

__all__ = [
    "Plan",
    "PhasePeak",
    "T5Sizes",
    "plan",
    "require_fit",
    "parse_bytes",
    "format_bytes",
    "dit_weight_bytes",
    "t5_weight_bytes",
    "decoder_weight_bytes",
    "dit_activation_bytes",
    "t5_activation_bytes",
    "decode_working_set_bytes",
    "DIT_STORAGES",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided and predicts. All sizes in bytes; see :meth:`to_json`.

    ``resident_blocks`` = DiT blocks kept on the device (``depth`` = no streaming);
    ``t5_resident_blocks`` likewise for T5 layers. ``decode_tile`` = latent (T, H, W) per tile, ``decode_tiles``
    the number of tiles; ``decode_tile_forced``: the caller fixed the tile (then :attr:`tile` gives it to the
    decode instead of :attr:`memory_budget`). ``min_budget_bytes`` = smallest budget with which some plan fits
    (every phase at its smallest setting, forced choices kept); ``limiting_phase`` = the phase that sets it.
    """

    width: int
    height: int
    frames: int
    device: str
    budget_bytes: int
    fits: bool
    predicted_peak_bytes: int
    min_budget_bytes: int
    limiting_phase: str
    peak_phase: str
    dit_storage: str
    t5_storage: str
    vae_dtype: str
    compute_dtype: str
    attention: str
    attention_backend: str
    latent_shape: tuple[int, int, int, int]
    visual_tokens: int
    text_tokens: int
    batch_cfg: bool
    depth: int
    resident_blocks: int
    streaming: bool
    prefetch: bool
    t5_layers: int
    t5_resident_blocks: int
    decode_tile: tuple[int, int, int]
    decode_overlap: int
    decode_tiles: int
    decode_budget_bytes: int
    phases: tuple[PhasePeak, ...]
    notes: tuple[str, ...] = ()
    #: components ("dit", "t5") whose storage is the file's own (planned from the file; nothing to convert)
    as_stored: tuple[str, ...] = ()
    decode_norm: str = "tile"
    decode_tile_forced: bool = False
    #: a multi-process run: this plan is per rank (see :class:`~mochi_core.memory.planning.phases.PhaseModel`)
    cfg_parallel: bool = False
    sp: int = 1
    #: bytes of run-time LoRA factors counted in the DiT (0 without LoRAs)
    lora_bytes: int = 0

    # -- what the pipeline and the nodes apply (a plan never changes a model) -----------------------
    @property
    def dit_storage_dtype(self) -> str | None:
        """Storage conversion for ``load_dit`` (None: keep the file's)."""
        return None if "dit" in self.as_stored else self.dit_storage

    @property
    def t5_storage_dtype(self) -> str | None:
        """Storage conversion for ``load_text_encoder`` (None: keep the file's)."""
        return None if "t5" in self.as_stored else self.t5_storage

    @property
    def memory_budget(self) -> int | None:
        """Bytes the VAE decode may use for its working set (the budget minus decoder weights and reserve);
        None when the decode tile was forced (:attr:`tile` applies then)."""
        return None if self.decode_tile_forced else self.decode_budget_bytes

    @property
    def tile(self) -> Any:
        """The forced decode tile as a :class:`~mochi_core.vae.tiling.TilePlan` (clamped to the latent), for
        ``VAE.decode(tile=...)``; None when the planner chooses the tile from :attr:`memory_budget`."""
        if not self.decode_tile_forced:
            return None
        from ...vae.tiling import TilePlan

        return TilePlan(*self.decode_tile, self.decode_overlap, self.decode_norm)

    @property
    def dit_load_device(self) -> str:
        """Where to load the DiT: on the device when all blocks are resident, else on the CPU (then streamed)."""
        return "cpu" if self.streaming else self.device

    @property
    def dit_streaming(self) -> StreamingSpec:
        """Which DiT blocks stay on the device; the pipeline (or a node) installs streaming when it streams."""
        return StreamingSpec(self.resident_blocks, self.depth, self.prefetch)

    @property
    def t5_load_device(self) -> str:
        """Where to load T5: the device when all its layers are resident, else the CPU (then streamed)."""
        return "cpu" if self.t5_resident_blocks < self.t5_layers else self.device

    @property
    def t5_streaming(self) -> StreamingSpec:
        """Which T5 layers stay on the device (``encoder.block``)."""
        return StreamingSpec(self.t5_resident_blocks, self.t5_layers, self.prefetch)

    def decode_options(self) -> DecodeOptions:
        """The decode's tiling: the forced tile, or the decode budget the tiles are chosen from."""
        return DecodeOptions(memory_budget=self.memory_budget, tile=self.tile)

    def tile_text(self) -> str:
        """The decode tile with its units: ``3 latent frames x 60x106 latents (13 frames, 480x848 px) x4 tiles``."""
        t, h, w = self.decode_tile
        return (
            f"tile {t} latent frames x {h}x{w} latents (up to {6 * t} frames of {8 * w}x{8 * h} px), "
            f"{self.decode_tiles} tile{'s' if self.decode_tiles != 1 else ''}"
        )

    def phase(self, name: str) -> PhasePeak:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = format_bytes(self.budget_bytes)
        d["predicted_peak"] = format_bytes(self.predicted_peak_bytes)
        d["min_budget"] = format_bytes(self.min_budget_bytes)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.width}x{self.height}x{self.frames} on {self.device}, budget {format_bytes(self.budget_bytes)}: "
            + ("fits" if self.fits else "does NOT fit")
            + f", predicted peak {format_bytes(self.predicted_peak_bytes)} ({self.peak_phase})",
            f"DiT {self.dit_storage}: {self.resident_blocks}/{self.depth} blocks resident"
            + (" (streaming)" if self.streaming else "")
            + (f", CFG batched: {self.batch_cfg}" if not self.cfg_parallel else ", CFG halves on two ranks")
            + f"; T5 {self.t5_storage}: {self.t5_resident_blocks}/{self.t5_layers} layers "
            f"resident; decode {self.tile_text()}" + (" (forced)" if self.decode_tile_forced else ""),
        ]
        if self.lora_bytes:
            lines.append(f"LoRA factors (run time, in the DiT's weights): {format_bytes(self.lora_bytes)}")
        for p in self.phases:
            lines.append(
                f"  {p.name:14s} {format_bytes(p.peak_bytes)} = weights {p.weights_bytes / GB:.2f} GB + activations "
                f"{p.activation_bytes / GB:.2f} GB + workspace {p.workspace_bytes / GB:.2f} GB + other "
                f"{p.other_bytes / GB:.2f} GB + reserve {p.reserve_bytes / GB:.2f} GB"
            )
        lines.append(f"smallest budget that fits: {format_bytes(self.min_budget_bytes)} (set by {self.limiting_phase})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def plan(
    width: int,
    height: int,
    frames: int,
    *,
    budget_bytes: int | str,
    device: str = "cuda",
    dit_storage: str = "fp8_e4m3fn",
    t5_storage: str = "fp16",
    vae_dtype: str | None = None,
    attention: str = "sdpa",
    dit_config: Any = None,
    t5_sizes: T5Sizes | None = None,
    decoder_config: Any = None,
    compute_dtype: str | None = None,
    t5_compute_dtype: str = "fp32",
    batch_cfg: bool | None = None,
    text_tokens: int | None = None,
    resident_blocks: int | None = None,
    prefetch: bool = True,
    decode_tile: Any = None,
    reserve_bytes: int | str | None = None,
    batch: int = 1,
    cfg_parallel: bool = False,
    sp: int = 1,
    loras: Sequence[Any] = (),
    token_chunk: int | None | str = "auto",
    teacache: bool = False,
) -> Plan:
    """Plan one ``width``x``height``x``frames`` generation under ``budget_bytes`` on ``device``.

    Chooses, in this order of preference: the whole DiT resident with batched CFG, then unbatched CFG, then block
    streaming with the most resident blocks that fit; T5 layers resident, else streamed; the largest decode tile
    that fits. ``resident_blocks`` (0..depth) / ``batch_cfg`` (True, False; None = choose) / ``decode_tile`` (a
    ``TilePlan``, latent frames per chunk, or (frames, height, width[, overlap]) latents) force a choice, and the
    smallest budget that fits is computed with them kept. ``text_tokens``: valid prompt tokens in the joint attention
    (0..the DiT's token length, default all of them, the worst case). ``reserve_bytes``: kept free on the device
    (bytes or a size such as "768MiB"; default 768 MiB on CUDA, 0 on CPU). ``batch``: videos sampled and decoded
    together (1..64; a batched latent). ``cfg_parallel`` / ``sp``: plan one rank of a multi-process run (``sp``
    must divide the heads; each CFG rank runs its half). ``loras``: LoRA files applied at run time (their factors,
    read from the headers, are counted in the DiT blocks they change, in the compute dtype). ``token_chunk``: the
    DiT's chunk length ("auto" = the DiT's default, None = never chunked); ``teacache``: count TeaCache's state
    kept across steps. Sizes follow Mochi's rules (frames
    6k+1, width/height multiples of 16). Every argument is validated first
    (:class:`~mochi_core.errors.InvalidInputError` names it). Returns a :class:`Plan` (``fits`` may be False; see
    :func:`require_fit`).
    """
    from ...dit.config import DiTConfig
    from ...vae.config import DecoderConfig

    width, height, frames = check_frame_size(width, height, frames)
    budget = parse_bytes(budget_bytes, what="budget_bytes")
    dev = check_plan_device(device)
    dit_storage = _norm_storage(dit_storage, "dit_storage", DIT_STORAGES)
    t5_storage = _norm_storage(t5_storage, "t5_storage", DIT_STORAGES)
    # defaults: what load_dit / load_vae pick on this device (bf16 on CUDA GPUs with native bf16, else fp32)
    device_default = dtype_name(default_compute_dtype(dev, warn=False))
    vae_dtype = _norm_storage(vae_dtype or device_default, "vae_dtype", VAE_DTYPES)
    attention = _norm_storage(attention, "attention", ATTENTIONS)
    cdt = _norm_storage(compute_dtype or device_default, "compute_dtype", VAE_DTYPES)
    t5c = _norm_storage(t5_compute_dtype, "t5_compute_dtype", ("fp32", "bf16"))
    cfg = check_instance("dit_config", dit_config, DiTConfig, "mochi_core.dit.config") or DiTConfig()
    t5s = check_instance("t5_sizes", t5_sizes, T5Sizes, "mochi_core.memory.T5Sizes") or T5Sizes()
    dcfg = check_instance("decoder_config", decoder_config, DecoderConfig, "mochi_core.vae.config") or DecoderConfig()
    batch_cfg = as_bool("batch_cfg", batch_cfg, none="let the planner choose")
    prefetch = bool(as_bool("prefetch", prefetch))
    if text_tokens is None:
        l_txt = cfg.t5_token_length
    else:
        l_txt = as_int_in("text_tokens", text_tokens, low=0, high=cfg.t5_token_length)
    forced_tile = check_decode_tile(decode_tile)
    reserve = check_reserve(reserve_bytes, dev)
    if resident_blocks is not None:
        resident_blocks = as_int_in("resident_blocks", resident_blocks, low=0, high=cfg.depth)
    batch = as_int_in("batch", batch, low=1, high=64)
    from ...parallel.layout import ParallelLayout

    layout = ParallelLayout(cfg_parallel, sp)
    layout.check_heads(cfg.num_heads)
    if layout.cfg_parallel:
        batch_cfg = True  # each CFG rank runs its half of the batch
    lora_bytes = _lora_bytes(loras, cfg.depth, _DTYPE_BYTES[cdt])
    if token_chunk == "auto":
        from ...dit.block import DEFAULT_TOKEN_CHUNK

        chunk: int | None = DEFAULT_TOKEN_CHUNK
    else:
        chunk = None if token_chunk is None else as_int_in("token_chunk", token_chunk, low=1, high=1 << 30)
    teacache = bool(as_bool("teacache", teacache))
    if attention == "flash":  # the flash-attn varlen path runs whole sequences (mochi_core/dit/block.py)
        chunk = None

    backend = attention_backend(dev, attention, _DTYPE_BYTES[cdt], cfg.head_dim)
    model = PhaseModel(
        latent=((frames - 1) // 6 + 1, height // 8, width // 8),
        dit_config=cfg,
        t5_sizes=t5s,
        decoder_config=dcfg,
        dit_storage=dit_storage,
        t5_storage=t5_storage,
        vae_dtype=vae_dtype,
        compute_dtype=cdt,
        t5_compute_dtype=t5c,
        backend=backend,
        text_tokens=l_txt,
        prefetch=prefetch,
        reserve=reserve,
        device_type=torch.device(dev).type,
        batch=batch,
        sp=layout.sp,
        cfg_parallel=layout.cfg_parallel,
        lora_bytes=lora_bytes,
        token_chunk=chunk,
        teacache=teacache,
    )
    text = _choose_text(model, budget)
    samp = _choose_sampling(model, budget, resident_blocks, batch_cfg)
    dec = model.decoding(forced_tile) if forced_tile is not None else model.decoding_for_budget(budget)
    minima = {
        "text_encoding": model.text(0).peak_bytes,
        # forced choices stay forced: the smallest budget is the one with which *this* request fits
        "sampling": model.sampling(resident_blocks or 0, bool(batch_cfg)).peak_bytes,
        "decoding": (dec if forced_tile is not None else model.smallest_decoding()).peak_bytes,
    }
    phases = (text, samp, dec)
    peak_phase = max(phases, key=lambda ph: ph.peak_bytes)
    limiting = max(minima, key=lambda k: minima[k])
    resident = int(samp.detail["resident_blocks"])
    t5_resident = int(text.detail["resident_layers"])
    notes = _notes(model, backend, resident, t5_resident)
    if layout.model_parallel:
        notes.insert(0, _parallel_note(layout, model.visual_tokens))
    result = Plan(
        width=width,
        height=height,
        frames=frames,
        device=dev,
        budget_bytes=budget,
        fits=all(ph.peak_bytes <= budget for ph in phases),
        predicted_peak_bytes=peak_phase.peak_bytes,
        min_budget_bytes=minima[limiting],
        limiting_phase=limiting,
        peak_phase=peak_phase.name,
        dit_storage=dit_storage,
        t5_storage=t5_storage,
        vae_dtype=vae_dtype,
        compute_dtype=cdt,
        attention=attention,
        attention_backend=backend,
        latent_shape=(cfg.in_channels, model.lt, model.lh, model.lw),
        visual_tokens=model.visual_tokens,
        text_tokens=l_txt,
        batch_cfg=bool(samp.detail["batch_cfg"]),
        depth=model.depth,
        resident_blocks=resident,
        streaming=resident < model.depth,
        prefetch=prefetch,
        t5_layers=model.t5_depth,
        t5_resident_blocks=t5_resident,
        decode_tile=tuple(dec.detail["tile"]),  # type: ignore[arg-type]
        decode_overlap=int(dec.detail["overlap"]),
        decode_tiles=int(dec.detail["tiles"]),
        decode_budget_bytes=model.decode_room(budget),
        phases=phases,
        notes=tuple(notes),
        decode_norm=str(dec.detail["norm"]),
        decode_tile_forced=forced_tile is not None,
        cfg_parallel=layout.cfg_parallel,
        sp=layout.sp,
        lora_bytes=lora_bytes[0] + sum(lora_bytes[1]),
    )
    logger.debug("plan: %s", result.summary())
    return result


def _choose_text(model: PhaseModel, budget: int) -> PhasePeak:
    """All T5 layers resident if that fits, else the most resident layers that fit (at least 0)."""
    n = model.t5_depth
    while n > 0 and model.text(n).peak_bytes > budget:
        n -= 1
    return model.text(n)


def _choose_sampling(model: PhaseModel, budget: int, resident: int | None, batch_cfg: bool | None) -> PhasePeak:
    """Whole DiT with batched CFG, then unbatched, then streaming with the most resident blocks that fit;
    ``resident`` / ``batch_cfg`` (validated) force their part of the choice."""
    if resident is not None:
        batched = batch_cfg if batch_cfg is not None else model.sampling(resident, True).peak_bytes <= budget
        return model.sampling(resident, batched)
    options = [True, False] if batch_cfg is None else [batch_cfg]
    for batched in options:
        whole = model.sampling(model.depth, batched)
        if whole.peak_bytes <= budget:
            return whole
    batched = options[-1]
    n = model.depth
    while n > 0 and model.sampling(n, batched).peak_bytes > budget:
        n -= 1
    return model.sampling(n, batched)


def _parallel_note(layout: Any, tokens: int) -> str:
    """The note that says the plan is per rank, and what each rank holds."""
    lo, hi = tokens // layout.sp, -(-tokens // layout.sp)
    share = f"{lo}" if lo == hi else f"{lo}-{hi}"
    held = f" and {share} of the {tokens} visual tokens" if layout.sp > 1 else ""
    cfg = ", one CFG half per rank" if layout.cfg_parallel else ""
    return (
        f"planned per rank for {layout.ranks} processes ({layout.describe()}): every rank holds the whole DiT{held}"
        f"{cfg}; T5 and the assembled video on rank 0 (the rank planned), decode tiles spread over the ranks"
    )


def _notes(model: PhaseModel, backend: str, resident: int, t5_resident: int) -> list[str]:
    notes = []
    if backend == "math":
        notes.append("attention falls back to the MATH kernel: O(S^2) scores (use bf16 on CUDA or attention='flash')")
    if resident < model.depth:
        notes.append(
            f"block streaming: {model.depth - resident} of {model.depth} DiT blocks stream from pinned host memory"
        )
    if t5_resident < model.t5_depth:
        notes.append(f"T5 layer streaming: {model.t5_depth - t5_resident} of {model.t5_depth} layers stream")
    return notes


def _lora_bytes(loras: Any, depth: int, itemsize: int) -> tuple[int, list[int]]:
    """(outside the blocks, per block) bytes of the run-time LoRA factors of the files ``loras``."""
    if not loras:
        return 0, [0] * depth
    from ...lora.estimate import lora_runtime_bytes
    from ...options import LoRAOptions

    paths = [getattr(x, "path", x) for x, _ in LoRAOptions.resolve(loras=[(x, 1.0) for x in loras]).loras]
    return lora_runtime_bytes(paths, depth=depth, itemsize=itemsize)


def require_fit(p: Plan) -> Plan:
    """Return ``p`` if it fits; else raise :class:`DoesNotFitError` naming the smallest budget that would fit."""
    if p.fits:
        return p
    over = [ph for ph in p.phases if ph.peak_bytes > p.budget_bytes]
    where = ", ".join(f"{ph.name} needs {format_bytes(ph.peak_bytes)}" for ph in over)
    raise DoesNotFitError(
        f"{p.width}x{p.height}x{p.frames} does not fit in {format_bytes(p.budget_bytes)} on {p.device} "
        f"({where}); the smallest budget that fits is {format_bytes(p.min_budget_bytes)} "
        f"(set by {p.limiting_phase}; DiT {p.dit_storage}, T5 {p.t5_storage}, VAE {p.vae_dtype})",
        min_budget_bytes=p.min_budget_bytes,
    )
