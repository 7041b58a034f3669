"""The memory planner: predict the peak of every phase of one generation before any work starts.

No peer has one (peers.md §6.5, issue 7). The model of memory below is derived from *our* code, tensor by tensor,
and checked against measured allocation peaks on CPU (``tests/unit/test_planner_validation.py``):

- **weights** are counted exactly from the official key shapes (:meth:`DiTConfig.expected_shapes`, the T5-XXL
  layout of mochi-spec.md §6, the decoder built on the ``meta`` device) and the storage rule of
  :mod:`mochi_core.precision`: tensors on the high-precision skip list keep the official file's fp32 (a Comfy
  bf16 file keeps them in bf16: 0.2 GB less than planned), everything else takes the requested storage (fp8: 1 byte
  plus a per-tensor scale, Q8_0: 34/32, Q4_0: 18/32).
- **DiT activations** (``mochi_core/dit/block.py``): the peak of a block is in the visual MLP, when ``w2``
  writes its output. Live then: the block input, the attention output, the post-attention stream, the modulated
  MLP input, ``w1``'s output (2·F_x wide), SiLU(a)·b (F_x wide), ``w2``'s output — (5 + 3·F_x/D_x)·B·N·D_x elements
  of the compute dtype — plus the RoPE rotations shared by all blocks (N·D_x/2 complex64) and ``w2``'s weight
  cast to the compute dtype. The attention stage peaks lower (12·B·N·D_x) as long as the attention kernel
  needs O(N) workspace: SDPA's flash / memory-efficient kernels on CUDA in bf16 and the CPU flash kernel do;
  PyTorch's MATH fallback materializes B·H·S² scores (mochi-spec.md §6.5: ~96 GB at 163 frames), and the planner
  models it when that is what torch would pick (fp32 on CUDA: memory-efficient kernel, still O(N)).
- **phases** run one after another on the compute device; each brings in its own weights and releases the
  previous ones: text encoding (T5), sampling (DiT: all blocks resident, or N resident and the others streamed
  by :mod:`mochi_core.memory.streaming`, which adds ``1 + prefetch`` block buffers), decoding (decoder weights +
  one tile's working set).

On CUDA, ``reserve_bytes`` (default 768 MiB: CUDA context, cuBLAS workspaces, allocator rounding) is added to
every phase before comparing with the budget; on CPU it is 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import DoesNotFitError, InvalidInputError
from .estimates import (
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

GiB = 1 << 30
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}


# ----------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------


def parse_bytes(value: str | int | float) -> int:
    """``"20GB"`` -> 20·10⁹, ``"12GiB"`` / ``"12G"`` -> 12·2³⁰, ``"500MB"``, ``"1.5GB"``, ``"123"`` / 123 -> bytes."""
    if isinstance(value, bool):
        raise InvalidInputError(f"budget={value!r} is not a size; use e.g. 20GB, 12GiB, 500MB or a byte count")
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise InvalidInputError(f"budget={value!r} must be a positive number of bytes")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise InvalidInputError(
            f"budget={value!r} is not a size; use a number with an optional unit: B, KB, MB, GB, TB (powers of 10) "
            "or KiB, MiB, GiB, TiB (powers of 2), e.g. 20GB or 12GiB"
        )
    out = int(float(m.group(1)) * _UNITS[unit])
    if out <= 0:
        raise InvalidInputError(f"budget={value!r} must be positive")
    return out


def format_bytes(n: int | float) -> str:
    """Bytes as GB (powers of 10) with two decimals, plus GiB: '12.34 GB (11.49 GiB)'."""
    return f"{n / 1e9:.2f} GB ({n / GiB:.2f} GiB)"


# ----------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhasePeak:
    """Predicted peak of one phase on the compute device (bytes). ``peak_bytes`` = sum of the parts + reserve."""

    name: str
    weights_bytes: int
    activation_bytes: int
    workspace_bytes: int
    other_bytes: int
    reserve_bytes: int
    peak_bytes: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided and predicts. All sizes in bytes; see :meth:`to_json`.

    ``resident_blocks`` = DiT blocks kept on the device (``depth`` = no streaming);
    ``t5_resident_blocks`` likewise for T5 layers. ``decode_tile`` = latent (T, H, W) per tile, ``decode_tiles``
    the number of tiles. ``min_budget_bytes`` = smallest budget with which some plan fits (every phase at its
    smallest setting); ``limiting_phase`` = the phase that sets it.
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

    # -- the attributes `mochi_core.pipeline.generate(plan=...)` reads ------------------------------
    @property
    def dit_storage_dtype(self) -> str | None:
        """Storage conversion for ``load_dit`` (None: keep the file's)."""
        return None if "dit" in self.as_stored else self.dit_storage

    @property
    def t5_storage_dtype(self) -> str | None:
        """Storage conversion for ``load_text_encoder`` (None: keep the file's)."""
        return None if "t5" in self.as_stored else self.t5_storage

    @property
    def memory_budget(self) -> int:
        """Bytes the VAE decode may use for its working set (the budget minus decoder weights and reserve)."""
        return self.decode_budget_bytes

    @property
    def dit_load_device(self) -> str:
        """Where to load the DiT: on the device when all blocks are resident, else on the CPU (then streamed)."""
        return "cpu" if self.streaming else self.device

    def prepare_dit(self, model: Any, device: Any) -> Any:
        """Install block streaming on a loaded DiT when the plan streams; otherwise return it unchanged."""
        if not self.streaming:
            return model
        from .streaming import enable_block_streaming

        model._mochi_streamer = enable_block_streaming(
            model, self.resident_blocks, device=device, prefetch=self.prefetch
        )
        return model

    @property
    def t5_load_device(self) -> str:
        """Where to load T5: the device when all its layers are resident, else the CPU (then streamed)."""
        return "cpu" if self.t5_resident_blocks < self.t5_layers else self.device

    def prepare_t5(self, encoder: Any, device: Any) -> Any:
        """Stream T5 layers (``encoder.model.encoder.block``) when the plan says so; sets ``encoder.device``."""
        if self.t5_resident_blocks >= self.t5_layers:
            return encoder
        from .streaming import enable_block_streaming

        model = getattr(encoder, "model", encoder)
        model._mochi_streamer = enable_block_streaming(
            model, self.t5_resident_blocks, device=device, prefetch=self.prefetch, blocks=model.encoder.block
        )
        if hasattr(encoder, "device"):
            encoder.device = torch.device(device)
        return encoder

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
            + f", CFG batched: {self.batch_cfg}; T5 {self.t5_storage}: {self.t5_resident_blocks}/{self.t5_layers} layers "
            f"resident; decode tile {self.decode_tile} x{self.decode_tiles}",
        ]
        for p in self.phases:
            lines.append(
                f"  {p.name:14s} {format_bytes(p.peak_bytes)} = weights {p.weights_bytes / 1e9:.2f} + activations "
                f"{p.activation_bytes / 1e9:.2f} + workspace {p.workspace_bytes / 1e9:.2f} + other {p.other_bytes / 1e9:.2f}"
                f" + reserve {p.reserve_bytes / 1e9:.2f} GB"
            )
        lines.append(f"smallest budget that fits: {format_bytes(self.min_budget_bytes)} (set by {self.limiting_phase})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _streamed_weights(other: int, blocks: list[int], resident: int, prefetch: bool) -> int:
    """Device bytes of a streamed model: non-block tensors, the first N blocks and the streamed block buffers."""
    streamed = sorted(blocks[resident:], reverse=True)
    buffers = sum(streamed[: 1 + int(prefetch)])
    return other + sum(blocks[:resident]) + buffers


def plan(
    width: int,
    height: int,
    frames: int,
    *,
    budget_bytes: int | str,
    device: str = "cuda",
    dit_storage: str = "fp8_e4m3fn",
    t5_storage: str = "fp16",
    vae_dtype: str = "bf16",
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
    decode_tile: tuple[int, ...] | None = None,
    reserve_bytes: int | None = None,
) -> Plan:
    """Plan one ``width``x``height``x``frames`` generation under ``budget_bytes`` on ``device``.

    Chooses, in this order of preference: the whole DiT resident with batched CFG, then unbatched CFG, then block
    streaming with the most resident blocks that fit; T5 layers resident, else streamed; the largest decode tile
    that fits. ``resident_blocks`` / ``batch_cfg`` / ``decode_tile`` force a choice. ``text_tokens``: valid prompt
    tokens in the joint attention (default 256, the worst case). Sizes follow mochi-spec.md §3.6 (frames 6k+1,
    width/height multiples of 16). Returns a :class:`Plan` (``fits`` may be False; see :func:`require_fit`).
    """
    from ..dit.config import DiTConfig
    from ..vae.config import DecoderConfig

    for name, v in (("width", width), ("height", height), ("frames", frames)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name}={v!r} must be a positive integer")
    if width % 16 or height % 16:
        raise InvalidInputError(f"width and height must be multiples of 16; got {width}x{height}")
    if (frames - 1) % 6:
        raise InvalidInputError(f"frames={frames} is not allowed: frames must be 6k+1 (e.g. 7, 31, 85, 163)")
    budget = parse_bytes(budget_bytes)
    dev = str(device).split(":")[0].strip().lower()
    if dev not in ("cuda", "cpu"):
        raise InvalidInputError(f"device={device!r} is not supported by the planner; allowed: cuda, cpu")
    dit_storage = _norm_storage(dit_storage, "dit_storage", DIT_STORAGES)
    t5_storage = _norm_storage(t5_storage, "t5_storage", DIT_STORAGES)
    vae_dtype = _norm_storage(vae_dtype, "vae_dtype", VAE_DTYPES)
    attention = str(attention).strip().lower()
    if attention not in ATTENTIONS:
        raise InvalidInputError(f"attention={attention!r} is not supported; allowed: {', '.join(ATTENTIONS)}")
    cdt = _norm_storage(compute_dtype or ("bf16" if dev == "cuda" else "fp32"), "compute_dtype", VAE_DTYPES)
    a = _DTYPE_BYTES[cdt]
    t5c = _norm_storage(t5_compute_dtype, "t5_compute_dtype", ("fp32", "bf16"))
    cfg = dit_config or DiTConfig()
    t5s = t5_sizes or T5Sizes()
    dcfg = decoder_config or DecoderConfig()
    reserve = int(reserve_bytes if reserve_bytes is not None else (768 * 2**20 if dev == "cuda" else 0))
    notes: list[str] = []

    lt, lh, lw = (frames - 1) // 6 + 1, height // 8, width // 8
    latent_bytes = cfg.in_channels * lt * lh * lw * 4
    p = cfg.patch_size
    n_tok = lt * (lh // p) * (lw // p)
    l_txt = cfg.t5_token_length if text_tokens is None else int(text_tokens)
    backend = attention_backend(dev, attention, a, cfg.head_dim)
    if backend == "math":
        notes.append("attention falls back to the MATH kernel: O(S^2) scores (use bf16 on CUDA or attention='flash')")
    carried = 2 * t5s.tokens * t5s.d_model * 4 + 2 * t5s.tokens  # features + masks of prompt and negative prompt

    # -- text encoding --------------------------------------------------------------------------
    t5_other, t5_layers = t5_weight_bytes(t5s, t5_storage)
    t5_act = t5_activation_bytes(t5s, prompts=2, compute_dtype=t5c, storage=t5_storage)

    def text_phase(resident: int) -> PhasePeak:
        w = (
            _streamed_weights(t5_other, t5_layers, resident, prefetch)
            if resident < len(t5_layers)
            else t5_other + sum(t5_layers)
        )
        return PhasePeak("text_encoding", w, t5_act, 0, carried, reserve, w + t5_act + carried + reserve,
                         {"resident_layers": resident, "layers": len(t5_layers)})  # fmt: skip

    # -- sampling -------------------------------------------------------------------------------
    d_other, d_blocks = dit_weight_bytes(cfg, dit_storage)
    depth = len(d_blocks)

    def sampling_phase(resident: int, batched: bool) -> PhasePeak:
        b = 2 if batched else 1
        act = dit_activation_bytes(
            cfg,
            visual_tokens=n_tok,
            text_tokens=l_txt,
            batch=b,
            compute_dtype=cdt,
            storage=dit_storage,
            backend=backend,
        )
        w = _streamed_weights(d_other, d_blocks, resident, prefetch) if resident < depth else d_other + sum(d_blocks)
        other = carried + 4 * latent_bytes
        act_b = act["total"] - act["attention_workspace"]
        return PhasePeak(
            "sampling",
            w,
            act_b,
            act["attention_workspace"],
            other,
            reserve,
            w + act["total"] + other + reserve,
            {"resident_blocks": resident, "batch": b, "activation_parts": act},
        )

    # -- decoding -------------------------------------------------------------------------------
    from ..vae.tiling import TilePlan, choose_tiles, min_decode_bytes

    dec_w = decoder_weight_bytes(dcfg, vae_dtype)
    vdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[vae_dtype]
    lat_shape = (1, dcfg.latent_dim, lt, lh, lw)
    dec_other = 2 * latent_bytes

    def decode_phase(tile: Any) -> PhasePeak:
        ws = decode_working_set_bytes(lat_shape, tile, config=dcfg, dtype=vae_dtype)
        tp = tile.clamp(lt, lh, lw)
        n_tiles = (
            math.ceil(lt / tp.frames) * _count_tiles(lh, tp.height, tp.overlap) * _count_tiles(lw, tp.width, tp.overlap)
        )
        detail = {"tile": [tp.frames, tp.height, tp.width], "overlap": tp.overlap, "tiles": n_tiles}
        return PhasePeak("decoding", dec_w, ws, 0, dec_other, reserve, dec_w + ws + dec_other + reserve, detail)

    def decode_for_budget() -> PhasePeak:
        room = budget - dec_w - dec_other - reserve
        try:
            tile = choose_tiles(lat_shape, max(room, 1), dcfg, vdt)
        except DoesNotFitError:
            tile = _smallest_tile(lh, lw)
        return decode_phase(tile)

    # -- choices ----------------------------------------------------------------------------------
    def fits(ph: PhasePeak) -> bool:
        return ph.peak_bytes <= budget

    # T5
    t5_choice = len(t5_layers)
    while t5_choice > 0 and not fits(text_phase(t5_choice)):
        t5_choice -= 1
    text = text_phase(t5_choice)
    # DiT
    if resident_blocks is not None:
        if not 0 <= int(resident_blocks) <= depth:
            raise InvalidInputError(f"resident_blocks={resident_blocks!r} must be from 0 to {depth}")
        batched = bool(batch_cfg) if batch_cfg is not None else fits(sampling_phase(int(resident_blocks), True))
        samp = sampling_phase(int(resident_blocks), batched)
    else:
        options = [True, False] if batch_cfg is None else [bool(batch_cfg)]
        samp = None
        for batched in options:
            cand = sampling_phase(depth, batched)
            if fits(cand):
                samp = cand
                break
        if samp is None:
            batched = options[-1]
            n = depth
            while n > 0 and not fits(sampling_phase(n, batched)):
                n -= 1
            samp = sampling_phase(n, batched)
    # decode
    if decode_tile is not None:
        tile = TilePlan.parse(tuple(int(v) for v in decode_tile))
        dec = decode_phase(tile)
    else:
        dec = decode_for_budget()

    phases = (text, samp, dec)
    peak_phase = max(phases, key=lambda ph: ph.peak_bytes)
    minima = {
        "text_encoding": text_phase(0).peak_bytes,
        "sampling": sampling_phase(0, False).peak_bytes,
        "decoding": dec_w + min_decode_bytes(lat_shape, dcfg, vdt) + dec_other + reserve,
    }
    limiting = max(minima, key=lambda k: minima[k])
    resident = int(samp.detail["resident_blocks"])
    if resident < depth:
        notes.append(f"block streaming: {depth - resident} of {depth} DiT blocks stream from pinned host memory")
    if t5_choice < len(t5_layers):
        notes.append(f"T5 layer streaming: {len(t5_layers) - t5_choice} of {len(t5_layers)} layers stream")
    return Plan(
        width=width,
        height=height,
        frames=frames,
        device=dev,
        budget_bytes=budget,
        fits=all(fits(ph) for ph in phases),
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
        latent_shape=(cfg.in_channels, lt, lh, lw),
        visual_tokens=n_tok,
        text_tokens=l_txt,
        batch_cfg=samp.detail["batch"] == 2,
        depth=depth,
        resident_blocks=resident,
        streaming=resident < depth,
        prefetch=prefetch,
        t5_layers=len(t5_layers),
        t5_resident_blocks=t5_choice,
        decode_tile=tuple(dec.detail["tile"]),  # type: ignore[arg-type]
        decode_overlap=int(dec.detail["overlap"]),
        decode_tiles=int(dec.detail["tiles"]),
        decode_budget_bytes=max(0, budget - dec_w - dec_other - reserve),
        phases=phases,
        notes=tuple(notes),
    )


def _smallest_tile(lh: int, lw: int) -> Any:
    """The plan :func:`mochi_core.vae.tiling.min_decode_bytes` prices: 1 latent frame, 8x8-latent tiles."""
    from ..vae.tiling import MIN_TILE, TilePlan

    th, tw = min(lh, MIN_TILE), min(lw, MIN_TILE)
    return TilePlan(1, th, tw, max(1, min(4, min(th, tw) // 4)))


def _count_tiles(length: int, size: int, overlap: int) -> int:
    if size >= length:
        return 1
    step = max(1, size - overlap)
    return math.ceil((length - size) / step) + 1


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
