"""What a user chooses, checked once: frozen option records for the DiT, T5, VAE, decode, sampling, LoRAs and the
job.

Every record has one ``resolve(...)`` classmethod. It is the only validator of its fields: it takes the values as
callers pass them (names, aliases, numpy scalars, ``"auto"``), refuses a bad one with an
:class:`~mochi_core.errors.InvalidInputError` naming the input and the allowed values, and returns the record
with canonical values (``torch.device``, ``torch.dtype``, ints). The Python API, the command line and the nodes
all call these functions, so one input gets one verdict and one message everywhere; ``names=`` only changes how
an input is named in the message (``compute_dtype`` for the API, ``--compute-dtype`` for the CLI). Loaders and
the sampler take resolved records and do not check again.

Adding an option:
1. add a field (with its default) to the record it belongs to (or a new frozen record for a new feature);
2. validate it in that record's ``resolve`` only, naming it through ``names`` (``_Names``), with the shared
   helpers below (:func:`resolve_dtype`, :func:`resolve_bytes`, :mod:`mochi_core.scalars`);
3. take it as a keyword in the public entry points that need it (``generate``, a loader, the CLI flag, the node
   widget), passing the raw value to ``resolve``; the code that uses it reads the resolved record;
4. add a test that the API, the CLI and (where it has one) the node give the same message for a bad value.
Dtype names and aliases live in :mod:`mochi_core.dtypes` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import dtypes
from .checks import check_instance
from .devices import check_device
from .errors import InvalidInputError
from .scalars import as_bool, as_int, as_int_in, as_real

__all__ = [
    "DTypeChoice",
    "DIT_COMPUTE",
    "DIT_STORAGE",
    "T5_COMPUTE",
    "T5_STORAGE",
    "VAE_COMPUTE",
    "VAE_STORAGE",
    "DiTOptions",
    "T5Options",
    "VAEOptions",
    "DecodeOptions",
    "SamplingOptions",
    "JobOptions",
    "LoRAOptions",
    "parse_lora_arg",
    "StreamingSpec",
    "ParallelOptions",
    "resolve_dtype",
    "resolve_bytes",
]


# ----------------------------------------------------------------------------------------------
# Dtypes: which names each choice accepts (the names themselves are in mochi_core.dtypes)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DTypeChoice:
    """The dtype names one choice accepts. ``role`` "compute" or "storage"; ``model`` "DiT", "T5", "VAE";
    ``notes``: why a known name is refused here, appended to the message."""

    role: str
    model: str
    names: tuple[str, ...]
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def auto(self) -> str:
        return "'auto'" if self.role == "compute" else "'auto' (keep the file's)"


_FP8_NOTE = " (fp8 is a storage dtype: use it as storage_dtype)"
DIT_COMPUTE = DTypeChoice("compute", "DiT", ("fp32", "bf16", "fp16"), {"fp8_e4m3fn": _FP8_NOTE, "fp8_e5m2": _FP8_NOTE})
VAE_COMPUTE = DTypeChoice("compute", "VAE", ("fp32", "bf16", "fp16"), {"fp8_e4m3fn": _FP8_NOTE, "fp8_e5m2": _FP8_NOTE})
T5_COMPUTE = DTypeChoice(
    "compute",
    "T5",
    ("fp32", "bf16"),
    {"fp16": " (T5 overflows in fp16)", "fp8_e4m3fn": _FP8_NOTE, "fp8_e5m2": _FP8_NOTE},
)
_GGUF_FILE_TYPE = " (a .gguf file's own type: a file stored so keeps it with 'auto'; it is not a conversion target)"
DIT_STORAGE = DTypeChoice(
    "storage",
    "DiT",
    (*dtypes.TORCH_DTYPES, *dtypes.QUANTIZED),
    {k: _GGUF_FILE_TYPE for k in dtypes.GGUF_BLOCKS if k not in dtypes.QUANTIZED},
)
T5_STORAGE = DTypeChoice(
    "storage",
    "T5",
    tuple(dtypes.TORCH_DTYPES),
    {
        **{k: _GGUF_FILE_TYPE for k in dtypes.GGUF_BLOCKS},
        **{k: " (GGUF storage is for the DiT)" for k in dtypes.QUANTIZED},
    },
)
_VAE_FP8 = " (fp8 storage is for the DiT and T5: the VAE has no fp8 scales)"
VAE_STORAGE = DTypeChoice(
    "storage",
    "VAE",
    ("fp32", "bf16", "fp16"),
    {"fp8_e4m3fn": _VAE_FP8, "fp8_e5m2": _VAE_FP8, "q8_0": _VAE_FP8, "q4_0": _VAE_FP8},
)


def resolve_dtype(
    value: Any, *, what: str, choice: DTypeChoice, device: torch.device | str | None = None
) -> torch.dtype | str | None:
    """The one check of a dtype input. Returns the torch dtype (a quantized name such as ``"q8_0"`` stays a
    string); for "auto" / None: the device's default compute dtype (fp32 for T5, and for a compute choice that
    does not allow the default), or None for storage (keep the file's)."""
    name = dtypes.canonical_name(value)
    if name is None:
        if choice.role == "storage":
            return None
        from .precision import default_compute_dtype

        default = dtypes.dtype_name(default_compute_dtype(device or "cpu")) if choice.model != "T5" else "fp32"
        return dtypes.TORCH_DTYPES[default if default in choice.names else "fp32"]
    if name not in choice.names:
        shown = name if name in dtypes.BYTES else repr(value)
        note = choice.notes.get(name, "")
        allowed = f"allowed: {', '.join(choice.names)} or {choice.auto}"
        verdict = "cannot be a compute dtype" if choice.role == "compute" else f"is not a {choice.model} storage dtype"
        raise InvalidInputError(f"{what}={shown} {verdict}{note}; {allowed}")
    return dtypes.TORCH_DTYPES.get(name, name)


def resolve_bytes(value: Any, *, what: str, allow_zero: bool = False) -> int | None:
    """None, or a byte count: an int of bytes or a size string with its unit ("12GB", "12GiB", "500MB")."""
    if value is None:
        return None
    from .units import parse_bytes

    return parse_bytes(value, what=what, allow_zero=allow_zero)


def positive_bytes(value: Any, *, name: str) -> int | None:
    """None, or a positive number of bytes (Python / numpy numbers, one-element tensors; 1e9 is fine), as an int."""
    if value is None:
        return None
    bytes_ = as_real(name, value, low=1, what="a positive number of bytes (e.g. 8 * 10**9) or None")
    return int(bytes_)


class _Names:
    """How each input is named in messages: its field name unless ``names`` maps it (``--compute-dtype``)."""

    def __init__(self, names: Mapping[str, str] | None) -> None:
        self.names = dict(names or {})

    def __call__(self, key: str) -> str:
        return self.names.get(key, key)


def _attention(value: Any, what: str) -> str:
    from .dit.attention import check_backend

    return check_backend(value, what=what)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTOptions:
    """How the DiT is loaded: ``device`` (where the weights go), ``compute_dtype``, ``storage_dtype`` (None = as
    stored; a torch dtype or "q8_0" / "q4_0"), ``attention`` (sdpa, flash, sage)."""

    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype | str | None = None
    attention: str = "sdpa"

    @classmethod
    def resolve(
        cls,
        *,
        device: Any = "cpu",
        compute_dtype: Any = None,
        storage_dtype: Any = None,
        attention: Any = "sdpa",
        names: Mapping[str, str] | None = None,
    ) -> DiTOptions:
        n = _Names(names)
        attention = _attention(attention, n("attention"))
        dev = check_device(device, what=n("device"))
        compute = resolve_dtype(compute_dtype, what=n("compute_dtype"), choice=DIT_COMPUTE, device=dev)
        storage = resolve_dtype(storage_dtype, what=n("storage_dtype"), choice=DIT_STORAGE)
        return cls(dev, compute, storage, attention)  # type: ignore[arg-type]


@dataclass(frozen=True)
class T5Options:
    """How T5 is loaded: ``device``, ``compute_dtype`` (fp32 by default, bf16 allowed; fp16 overflows),
    ``storage_dtype`` (None = as stored)."""

    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype | None = None

    @classmethod
    def resolve(
        cls,
        *,
        device: Any = "cpu",
        compute_dtype: Any = None,
        storage_dtype: Any = None,
        names: Mapping[str, str] | None = None,
    ) -> T5Options:
        n = _Names(names)
        dev = check_device(device, what=n("device"))
        compute = resolve_dtype(compute_dtype, what=n("compute_dtype"), choice=T5_COMPUTE, device=dev)
        storage = resolve_dtype(storage_dtype, what=n("storage_dtype"), choice=T5_STORAGE)
        return cls(dev, compute, storage)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VAEOptions:
    """How the VAE is loaded: ``device``, ``compute_dtype`` (the device's default: bf16 on CUDA, fp32 on CPU),
    ``storage_dtype`` (fp32, bf16, fp16; None = as stored)."""

    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype | None = None

    @classmethod
    def resolve(
        cls,
        *,
        device: Any = "cpu",
        compute_dtype: Any = None,
        storage_dtype: Any = None,
        names: Mapping[str, str] | None = None,
    ) -> VAEOptions:
        n = _Names(names)
        storage = resolve_dtype(storage_dtype, what=n("storage_dtype"), choice=VAE_STORAGE)
        dev = check_device(device, what=n("device"))
        compute = resolve_dtype(compute_dtype, what=n("compute_dtype"), choice=VAE_COMPUTE, device=dev)
        return cls(dev, compute, storage)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DecodeOptions:
    """How the VAE decode is tiled: ``memory_budget`` (bytes for the working set; tiles planned from it) or
    ``tile`` (a :class:`~mochi_core.vae.tiling.TilePlan`), not both; neither = the whole latent at once."""

    memory_budget: int | None = None
    tile: Any = None

    @classmethod
    def resolve(
        cls, *, memory_budget: Any = None, tile: Any = None, names: Mapping[str, str] | None = None
    ) -> DecodeOptions:
        n = _Names(names)
        budget = positive_bytes(memory_budget, name=n("memory_budget"))
        if tile is not None:
            from .vae.tiling import TilePlan

            tile = TilePlan.parse(tile)
        if budget is not None and tile is not None:
            raise InvalidInputError(
                f"{n('tile')}= cannot be combined with {n('memory_budget')}= or budget= (which sets the decode "
                "budget): pass one"
            )
        return cls(budget, tile)


@dataclass(frozen=True)
class StreamingSpec:
    """Which transformer blocks stay on the device: the first ``resident_blocks`` of ``depth``; the others are
    streamed from host memory (``prefetch``: the next block is copied while the current one computes)."""

    resident_blocks: int
    depth: int
    prefetch: bool = True

    @property
    def streams(self) -> bool:
        return self.resident_blocks < self.depth


# ----------------------------------------------------------------------------------------------
# Sampling and the job
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingOptions:
    """Checked sampler settings. ``sigmas``: steps + 1 floats from the schedule or the caller; ``cfgs``: one
    guidance scale per step; ``cfg``: the scalar ``cfg`` argument; ``denoise`` in (0, 1]; ``first``: index of the
    first step that runs; ``batch_cfg``: cond and uncond as one DiT call. Doing less work
    (:mod:`mochi_core.guidance`, :mod:`mochi_core.teacache`): ``preset`` ('default' / 'fast', already applied to
    steps, cfgs and sigmas), ``teacache_threshold`` (0 = off), ``max_skip_steps`` (0 = no limit), ``stg_scale``
    (0 = off), ``stg_blocks``, ``stg_rescale`` (0 = off)."""

    steps: int
    sigmas: tuple[float, ...]
    cfgs: tuple[float, ...]
    cfg: float
    denoise: float
    first: int
    batch_cfg: bool = True
    preset: str = "default"
    teacache_threshold: float = 0.0
    max_skip_steps: int = 0
    stg_scale: float = 0.0
    stg_blocks: tuple[int, ...] = (34,)
    stg_rescale: float = 0.0

    @property
    def needs_uncond(self) -> bool:
        """True when some step runs the unconditional pass (cfg != 1)."""
        return any(c != 1.0 for c in self.cfgs)

    @classmethod
    def resolve(
        cls,
        *,
        steps: Any,
        cfg: Any,
        threshold_noise: Any = 0.025,
        linear_steps: Any = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        cfg_schedule: Sequence[float] | torch.Tensor | None = None,
        denoise: Any = 1.0,
        batch_cfg: Any = True,
        has_start_latent: bool = False,
        preset: Any = "default",
        teacache_threshold: Any = 0.0,
        max_skip_steps: Any = 0,
        stg_scale: Any = 0.0,
        stg_blocks: Any = None,
        stg_rescale: Any = 0.0,
    ) -> SamplingOptions:
        """``steps`` >= 1; ``cfg`` a finite number >= 0 (may be None when ``cfg_schedule`` gives one value per
        step); ``sigmas`` (steps + 1 values strictly decreasing to 0) or else the linear-quadratic schedule from
        ``threshold_noise`` and ``linear_steps``; ``cfg_schedule`` one finite value >= 0 per step; ``denoise`` in
        (0, 1], below 1 only with a start latent; ``batch_cfg`` True / False. ``preset`` 'default' or 'fast'
        (which sets steps, cfg and the schedule itself, so those are left out: None); ``teacache_threshold`` >= 0,
        ``max_skip_steps`` integer >= 0; ``stg_scale`` >= 0, ``stg_blocks`` (integers or a text like '30,34';
        None = (34,)), ``stg_rescale`` in [0, 1]. No tensor work."""
        from .guidance import apply_preset, check_stg
        from .sampling import linear_quadratic_schedule, validate_sigmas
        from .teacache import check_teacache

        preset_name, steps, cfg, threshold_noise, linear_steps = apply_preset(
            preset, steps, cfg, threshold_noise, linear_steps, sigmas, cfg_schedule
        )
        tc_threshold, max_skips = check_teacache(teacache_threshold, max_skip_steps)
        stg, blocks, stg_rescale_v = check_stg(stg_scale, stg_blocks, stg_rescale)
        steps = check_steps(steps)
        if cfg_schedule is None:
            cfg_value = finite_number("cfg", cfg, minimum=0.0)
            cfgs = [cfg_value] * steps
        else:
            cfgs = _cfg_list(cfg_schedule, steps)
            cfg_value = cfgs[0] if cfg is None else finite_number("cfg", cfg, minimum=0.0)
        if sigmas is None:
            sched = linear_quadratic_schedule(steps, threshold_noise, linear_steps)
        else:
            sched = validate_sigmas(sigmas, steps)
        denoise = as_real("denoise", denoise, low=0.0, high=1.0, low_open=True, what="a number in (0, 1]")
        if denoise < 1.0 and not has_start_latent:
            raise InvalidInputError(
                "denoise < 1 needs a start_latent (video-to-video); use denoise=1.0 for text-to-video"
            )
        return cls(
            steps=steps,
            sigmas=tuple(sched),
            cfgs=tuple(cfgs),
            cfg=cfg_value,
            denoise=float(denoise),
            first=_start_index(sched, float(denoise)),
            batch_cfg=as_bool("batch_cfg", batch_cfg),
            preset=preset_name,
            teacache_threshold=tc_threshold,
            max_skip_steps=max_skips,
            stg_scale=stg,
            stg_blocks=blocks,
            stg_rescale=stg_rescale_v,
        )


@dataclass(frozen=True)
class ParallelOptions:
    """Several processes on one video (started by torchrun): ``cfg_parallel`` (cond and uncond on two ranks),
    ``sp`` (ranks per sequence-parallel group, >= 1) and ``timeout_s`` (how long a collective waits for a slow
    peer, > 0). Whether ``sp`` divides the DiT's heads and whether the process count matches are checked against
    the model and the launch (:class:`mochi_core.parallel.layout.ParallelLayout`)."""

    cfg_parallel: bool = False
    sp: int = 1
    timeout_s: float = 1800.0

    @classmethod
    def resolve(
        cls,
        *,
        cfg_parallel: Any = False,
        sp: Any = 1,
        timeout_s: Any = 1800.0,
        names: Mapping[str, str] | None = None,
    ) -> ParallelOptions:
        n = _Names(names)
        cfg = as_bool(n("cfg_parallel"), cfg_parallel)
        message = f"{n('sp')}={sp!r} is not allowed: sequence parallelism needs an integer >= 1"
        ranks = as_int(n("sp"), sp, low=1, message=message)
        timeout = as_real(n("timeout_s"), timeout_s, low=0.0, low_open=True, what="a number of seconds > 0")
        return cls(cfg, ranks, timeout)


@dataclass(frozen=True)
class JobOptions:
    """One video: prompts, size (``width`` x ``height`` multiples of 16, ``frames`` 6k+1) and noise ``seed``."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: int
    seed: int

    @classmethod
    def resolve(
        cls,
        *,
        prompt: Any,
        negative_prompt: Any = "",
        width: Any = 848,
        height: Any = 480,
        frames: Any = 31,
        seed: Any = 0,
        names: Mapping[str, str] | None = None,
    ) -> JobOptions:
        n = _Names(names)
        check_instance(n("prompt"), prompt, str, "the text of the video", optional=False)
        check_instance(n("negative_prompt"), negative_prompt, str, "'' for none", optional=False)
        w, h, f = check_size(width, height, frames, names=names)
        return cls(prompt, negative_prompt, w, h, f, check_seed(seed, name=n("seed")))

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(12, T, H/8, W/8) of this video."""
        return (12, (self.frames - 1) // 6 + 1, self.height // 8, self.width // 8)


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------


def parse_lora_arg(text: Any, *, what: str = "--lora") -> tuple[str, float]:
    """``PATH[:STRENGTH]`` (the command line's form) -> (path, strength), strength 1.0 when absent. The text after the
    last ``:`` is a strength only when it reads as a number, so a path with a colon (``C:\\loras\\x``) stays whole;
    the strength is then checked by :meth:`LoRAOptions.resolve`."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(
            f"{what}={text!r} is not allowed: give PATH or PATH:STRENGTH (e.g. model_2000.lora.safetensors:0.8)"
        )
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


@dataclass(frozen=True)
class LoRAOptions:
    """LoRAs made active on the DiT for a job: ``loras``, in order, pairs of (a :class:`~mochi_core.lora.LoRA` or a
    header-checked path, strength as a finite float: 1 = as trained, 0 = off, negative = subtracted)."""

    loras: tuple[tuple[Any, float], ...] = ()

    @classmethod
    def resolve(cls, *, loras: Any = None, names: Mapping[str, str] | None = None) -> LoRAOptions:
        """``loras``: None or [] (none), or a list of ``(lora, strength)`` pairs or ``"PATH[:STRENGTH]"`` strings;
        ``lora`` a :func:`mochi_core.load_lora` result or a file path. A path is checked from its header now (a
        pickle, a LoRA for another model, a file that is no LoRA are refused naming it); which layers it changes and
        their shapes are checked against the DiT when the LoRAs are applied."""
        import os

        from .lora.model import LoRA
        from .lora.reader import check_lora_file

        what = _Names(names)("loras")
        if loras is None:
            return cls()
        if isinstance(loras, (str, bytes, os.PathLike, LoRA)) or not isinstance(loras, Sequence):
            raise InvalidInputError(
                f"{what} must be a list of (lora, strength) pairs (lora: a load_lora result or a file path); got "
                f"{type(loras).__name__}"
            )
        out = []
        for i, item in enumerate(loras):
            if isinstance(item, str):
                item = parse_lora_arg(item, what=f"{what}[{i}]")
            pair = isinstance(item, (tuple, list)) and len(item) == 2
            lora, strength = item if pair else (None, None)
            if not pair or not isinstance(lora, (str, os.PathLike, LoRA)):
                problem = (
                    f"{what}[{i}]={item!r} must be a (lora, strength) pair"
                    if not pair
                    else (f"{what}[{i}]: {type(lora).__name__} is not a LoRA; pass a load_lora result or a file path")
                )
                raise InvalidInputError(problem)
            if isinstance(lora, (str, os.PathLike)):
                check_lora_file(lora)
            value = as_real(f"{what}[{i}] strength", strength, what="a finite real number (negative allowed)")
            out.append((lora, value))
        return cls(tuple(out))


# ----------------------------------------------------------------------------------------------
# Shared rules of single values
# ----------------------------------------------------------------------------------------------

#: Default video size of every entry point (API, CLI generate and plan, nodes): Mochi's training resolution and
#: the frame count of Genmo's demos.
DEFAULT_SIZE = {"width": 848, "height": 480, "frames": 31}


def nearest_frame_counts(frames: int) -> tuple[int, int]:
    """The valid counts (6k + 1) just below and just above ``frames`` (both 1 and 7 below 1)."""
    lower = 6 * ((max(int(frames), 1) - 1) // 6) + 1
    return lower, lower + 6


def check_size(width: Any, height: Any, frames: Any, *, names: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(width, height, frames) as ints: frames 6k+1, width and height positive multiples of 16; integers of any
    kind (Python, numpy, one-element tensors)."""
    n = _Names(names)
    w, h, f = (as_int(n(k), v) for k, v in (("width", width), ("height", height), ("frames", frames)))
    problem = None
    if f < 1 or (f - 1) % 6:
        lo, hi = nearest_frame_counts(f)
        near = f"{lo} or {hi}" if f > 1 else f"{lo}"
        problem = f"{n('frames')}={f} is not allowed: Mochi needs 6k+1 frames (1, 7, 13, ..., 163); nearest valid "
        problem += f"counts: {near}"
    for key, value in (("height", h), ("width", w)) if problem is None else ():
        if value < 16 or value % 16:
            lo = max(16, value // 16 * 16)
            problem = f"{n(key)}={value} is not allowed: it must be a positive multiple of 16 (e.g. {lo} or {lo + 16})"
            break
    if problem is not None:
        raise InvalidInputError(problem)
    return w, h, f


def check_steps(steps: Any) -> int:
    """``steps`` as an int >= 1."""
    return as_int_in("steps", steps, low=1)


def check_seed(seed: Any, *, name: str = "seed") -> int:
    """A noise seed is an integer in [0, 2**64); returned as a Python int."""
    return as_int(name, seed, low=0, high=2**64 - 1, what="an integer in [0, 2**64)")


def finite_number(name: str, value: Any, *, minimum: float) -> float:
    """``value`` as a float that is finite and >= ``minimum``, or InvalidInputError naming ``name``."""
    return as_real(name, value, low=minimum)


def _cfg_list(cfg_schedule: Sequence[float] | torch.Tensor, steps: int) -> list[float]:
    """One finite guidance scale >= 0 per step, from a list, a 1-D tensor or a 1-D array."""
    values: list[Any] | None = None
    if hasattr(cfg_schedule, "tolist") and getattr(cfg_schedule, "ndim", None) == 1:  # torch tensor, numpy array
        values = cfg_schedule.tolist()  # type: ignore[union-attr]
    elif not hasattr(cfg_schedule, "ndim") and not isinstance(cfg_schedule, (str, bytes, dict)):
        values = list(cfg_schedule) if hasattr(cfg_schedule, "__iter__") else None
    if values is None or len(values) != steps:
        got = f"{len(values)} values" if values is not None else _describe(cfg_schedule)
        raise InvalidInputError(
            f"cfg_schedule must be a list of numbers (or a 1-D tensor), one per step ({steps}); got {got}"
        )
    return [finite_number("cfg", c, minimum=0.0) for c in values]


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__


def _start_index(sigmas: Sequence[float], denoise: float) -> int:
    """First schedule index whose sigma <= denoise (at least one step is kept)."""
    if denoise >= 1.0:
        return 0
    for i, s in enumerate(sigmas[:-1]):
        if s <= denoise:
            return i
    return len(sigmas) - 2


def renamed(
    old: str, old_value: Any, new: str, new_value: Any, names: dict[str, str], *, key: str | None = None
) -> Any:
    """The value of an argument given under its earlier name ``old`` (with a DeprecationWarning) or ``new``;
    ``names[key or new]`` then names it ``old`` in messages, as the caller wrote it."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"{old}= is now called {new}=", DeprecationWarning, stacklevel=3)
    if new_value is not None:
        raise InvalidInputError(f"{old}= is the earlier name of {new}=: pass only {new}=")
    names[key or new] = old
    return old_value
