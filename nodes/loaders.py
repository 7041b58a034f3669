"""Loader nodes: Mochi DiT, VAE and T5 from ComfyUI's model folders, with queue-time file checks and a model cache.

Semantics: file selection like core ``UNETLoader`` / ``VAELoader`` / ``CLIPLoader`` (``folder_paths`` lists of
``diffusion_models``, ``vae``, ``text_encoders``); the weights are read by ``mochi_core.load_dit`` /
``load_vae`` / ``load_text_encoder`` (every published layout, cast-on-use storage dtypes).

- ``VALIDATE_INPUTS`` reads only the file header, so a missing file, a VAE given to the DiT loader or a T5 given
  to the VAE loader is refused with ``node_errors`` before anything runs. A file name linked from another node
  (``None`` at queue time) is checked the same way when the loader runs.
- ``IS_CHANGED`` fingerprints the file (size, mtime), so replacing a file reloads it, and an unchanged file is
  served from ComfyUI's output cache. A linked file name cannot be fingerprinted at queue time: the loader then
  re-runs only when the name changes (ComfyUI's own input signature). A process-wide weak cache, keyed on the
  fingerprint, also returns the already-loaded model when two loader nodes (or two workflows) ask for the same
  file with the same options, without keeping a model alive that ComfyUI has dropped.
- Weights load into system RAM (:data:`nodes.host.WEIGHTS_HOME`, also under ``--highvram`` / ``--gpu-only``):
  the nodes that use a model place it on the compute device for their phase, as the core planner says, and
  move it back afterwards (see :mod:`nodes.placement`), so ComfyUI's own models can have the GPU between phases.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import host
from .registry import register
from .validation import check_model_file, check_widget_values, invalid

logger = logging.getLogger(__name__)

DIT_STORAGE = ["default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2", "q8_0", "fp32"]
T5_STORAGE = ["default", "fp16", "bf16", "fp8_e4m3fn", "fp32"]
ATTENTION = ["sdpa", "flash", "sage"]
MEMORY_MODES = ["auto", "full", "stream"]
VAE_DTYPES = ["auto", "bf16", "fp16", "fp32"]
T5_DTYPES = ["fp32", "bf16"]

_CACHE: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


def _fingerprint(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    obj = _CACHE.get(key)
    if obj is not None:
        logger.info("Mochi: reusing loaded model %s", os.path.basename(key[1]))
        return obj
    obj = load()
    try:
        _CACHE[key] = obj
    except TypeError:  # object without weakref support: just do not cache it
        pass
    return obj


#: IS_CHANGED value of a linked file name (unknown at queue time); constant, so the upstream signature decides
LINKED = "linked"
#: bytes of one GB of the ``memory_budget_gb`` inputs (10^9, like the planner and ``--budget 12GB`` of the CLI)
GB = 10**9


def _file_changed(folder: str, name: Any) -> str:
    if not isinstance(name, str):  # linked from another node: None at queue time
        return LINKED
    try:
        return repr(_fingerprint(host.full_path(folder, name)))
    except OSError:
        return name


def _queue_check(check: Callable[[], Any]) -> bool | str:
    """Run a check for ``VALIDATE_INPUTS``: True, or the refusal message."""
    try:
        check()
    except ValueError as exc:
        return str(exc)
    return True


@dataclass(eq=False)
class MochiDiT:
    """The ``MOCHI_DIT`` value: the loaded model plus how to place it on the device while sampling.

    ``memory``: "auto" (whole model on the device when it fits in the budget, else stream blocks), "full",
    "stream". ``budget_bytes``: device bytes allowed for weights and activations (0: free memory at run time).
    ``loras``: (LoRA, strength) pairs added by Mochi LoRA nodes, made active only while the sampler runs.
    """

    model: Any
    name: str
    memory: str = "auto"
    budget_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    loras: tuple[tuple[Any, float], ...] = ()


@register("MochiDiTLoader", "Mochi DiT Loader")
class MochiDiTLoader:
    CATEGORY = "Mochi/loaders"
    DESCRIPTION = (
        "Loads the Mochi 1 diffusion transformer from models/diffusion_models (Comfy-Org mochi_preview_bf16 or "
        "mochi_preview_fp8_scaled, the all-in-one file, Genmo's official file, Kijai bf16/fp8/GGUF, diffusers, and "
        ".gguf files such as mochi-q4_k_m.gguf). "
        "Weights are cast layer by layer to the compute dtype, so fp8 and quantized storage run on any GPU or CPU."
    )
    RETURN_TYPES = ("MOCHI_DIT",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Mochi DiT with its memory placement settings; connect it to Mochi Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "dit_name": (
                    host.filename_list("diffusion_models"),
                    {
                        "tooltip": "DiT weight file in models/diffusion_models (e.g. mochi_preview_fp8_scaled.safetensors)."
                    },
                ),
                "weight_dtype": (
                    DIT_STORAGE,
                    {
                        "default": "default",
                        "tooltip": "Storage dtype of the weights in memory. 'default' keeps the file's own (bf16, scaled fp8, or a .gguf file's own quant types such as Q4_K/Q6_K); fp8/q8_0 halve memory at a small quality cost. Computation always runs in bf16 (GPU) or fp32 (CPU).",
                    },
                ),
                "attention": (
                    ATTENTION,
                    {
                        "default": "sdpa",
                        "tooltip": "Attention kernel: sdpa (PyTorch, always available), flash (flash-attn) or sage (SageAttention) if installed.",
                    },
                ),
                "memory": (
                    MEMORY_MODES,
                    {
                        "default": "auto",
                        "tooltip": "How the DiT sits on the GPU while sampling, as the memory planner decides for the budget: auto (whole model with both CFG passes in one batch when that fits, else one pass at a time, else the transformer blocks that do not fit stream from system RAM), full (whole model), stream (lowest memory: CFG passes one at a time, blocks that do not fit streamed).",
                    },
                ),
                "memory_budget_gb": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1024.0,
                        "step": 0.5,
                        "tooltip": "GPU memory the sampler may use, in GB (10^9 bytes, as the planner and the command line count). 0 = automatic: the free memory at run time after ComfyUI unloads what it must (its --reserve-vram kept free).",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, dit_name: Any) -> bool | str:
        # only dit_name: ComfyUI files a VALIDATE_INPUTS message under every input the method takes. A NaN
        # memory_budget_gb passes ComfyUI's own range check; the loader refuses it when it runs, before any work
        if dit_name is None:  # linked: checked when the loader runs
            return True
        return _queue_check(lambda: check_model_file("diffusion_models", dit_name, "dit"))

    @classmethod
    def IS_CHANGED(cls, dit_name: Any, **_: Any) -> str:
        return _file_changed("diffusion_models", dit_name)

    def load(
        self, dit_name: str, weight_dtype: str, attention: str, memory: str, memory_budget_gb: float
    ) -> tuple[MochiDiT]:
        import mochi_core

        check_widget_values(MochiDiTLoader, {"memory_budget_gb": memory_budget_gb})  # NaN / inf refused
        path = check_model_file("diffusion_models", dit_name, "dit")
        storage = None if weight_dtype == "default" else weight_dtype
        device = host.WEIGHTS_HOME
        key = ("dit", path, _fingerprint(path), storage, attention, str(device))

        def load() -> Any:
            logger.info(
                "Mochi: loading DiT %s (storage %s, attention %s) on %s", dit_name, weight_dtype, attention, device
            )
            with host.relative_paths("diffusion_models"):
                return mochi_core.load_dit(
                    path, device=device, compute_dtype=_dit_compute_dtype(), storage_dtype=storage, attention=attention
                )

        model = _cached(key, load)
        return (MochiDiT(model=model, name=dit_name, memory=memory, budget_bytes=int(memory_budget_gb * GB)),)


def _dit_compute_dtype() -> Any:
    """bf16 on a GPU with native bf16, fp32 on older GPUs and on CPU (``mochi_core.precision`` default)."""
    from mochi_core.precision import default_compute_dtype

    return default_compute_dtype(host.compute_device())


def _vae_compute_dtype() -> str:
    """The VAE's ``auto`` compute dtype: the precision policy's default for ComfyUI's compute device (bf16 on GPUs
    with native bf16, fp32 on older GPUs, whose convolutions have no fast bf16 path, and on CPU)."""
    from mochi_core.precision import default_compute_dtype, dtype_name

    return dtype_name(default_compute_dtype(host.compute_device()))


@register("MochiVAELoader", "Mochi VAE Loader")
class MochiVAELoader:
    CATEGORY = "Mochi/loaders"
    DESCRIPTION = (
        "Loads the Mochi VAE (decoder and, when the file has it, encoder) from models/vae: Comfy-Org "
        "mochi_vae.safetensors, Genmo's decoder/encoder files, Kijai's or diffusers' VAE."
    )
    RETURN_TYPES = ("MOCHI_VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Mochi VAE; connect it to Mochi VAE Decode (Tiled) or Mochi VAE Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "vae_name": (
                    host.filename_list("vae"),
                    {"tooltip": "VAE weight file in models/vae (e.g. mochi_vae.safetensors)."},
                ),
                "dtype": (
                    VAE_DTYPES,
                    {
                        "default": "auto",
                        "tooltip": "Compute dtype of the VAE: auto = bf16 on GPUs with native bf16 (RTX 30xx, A100 "
                        "and newer), fp32 on older GPUs and on CPU.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name: Any) -> bool | str:
        if vae_name is None:  # linked: checked when the loader runs
            return True
        return _queue_check(lambda: _check_vae_file(vae_name))

    @classmethod
    def IS_CHANGED(cls, vae_name: Any, **_: Any) -> str:
        return _file_changed("vae", vae_name)

    def load(self, vae_name: str, dtype: str) -> tuple[Any]:
        import mochi_core

        path = _check_vae_file(vae_name)
        device = host.WEIGHTS_HOME
        compute = _vae_compute_dtype() if dtype == "auto" else dtype
        key = ("vae", path, _fingerprint(path), compute, str(device))

        def load() -> Any:
            logger.info("Mochi: loading VAE %s (compute %s) on %s", vae_name, compute, device)
            with host.relative_paths("vae"):
                return mochi_core.load_vae(path, device=device, compute_dtype=compute)

        return (_cached(key, load),)


@register("MochiT5Loader", "Mochi T5 Loader")
class MochiT5Loader:
    CATEGORY = "Mochi/loaders"
    DESCRIPTION = (
        "Loads the T5-XXL text encoder from a single file in models/text_encoders (t5xxl_fp16, "
        "t5xxl_fp8_e4m3fn, t5xxl_fp8_e4m3fn_scaled, or a llama.cpp .gguf such as t5-v1_1-xxl-encoder-Q5_K_M.gguf) with the official Mochi tokenization: 256 tokens, and an "
        "empty prompt contributes no text token. bf16 compute needs a GPU."
    )
    RETURN_TYPES = ("MOCHI_T5",)
    RETURN_NAMES = ("t5",)
    OUTPUT_TOOLTIPS = ("The T5 encoder and tokenizer; connect it to Mochi Text Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "t5_name": (
                    host.filename_list("text_encoders"),
                    {"tooltip": "T5-XXL weight file in models/text_encoders (e.g. t5xxl_fp16.safetensors)."},
                ),
                "weight_dtype": (
                    T5_STORAGE,
                    {
                        "default": "default",
                        "tooltip": "Storage dtype of the weights in memory ('default' keeps the file's, a .gguf's quant types included). T5 always computes in fp32 unless dtype says bf16.",
                    },
                ),
                "dtype": (
                    t5_dtype_choices(),
                    {
                        "default": "fp32",
                        "tooltip": "Compute dtype: fp32 (official, exact) or bf16 (less memory; needs a GPU: refused when ComfyUI computes on the CPU). fp16 is not offered: T5 overflows in fp16.",
                    },
                ),
                "tokenizer": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Folder or file of the google/t5-v1_1-xxl tokenizer. Empty = the one bundled with ComfyUI (comfy/text_encoders/t5_tokenizer).",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, t5_name: Any) -> bool | str:
        # only t5_name: ComfyUI files a VALIDATE_INPUTS message under every input the method takes, and skips its own
        # choice check for them; dtype keeps ComfyUI's check against t5_dtype_choices() (bf16 absent on the CPU)
        def check() -> None:
            if t5_name is not None:  # None = linked: checked when the loader runs
                check_model_file("text_encoders", t5_name, "t5")

        return _queue_check(check)

    @classmethod
    def IS_CHANGED(cls, t5_name: Any, **_: Any) -> str:
        return _file_changed("text_encoders", t5_name)

    def load(self, t5_name: str, weight_dtype: str, dtype: str, tokenizer: str) -> tuple[Any]:
        import mochi_core

        check_t5_dtype(dtype)
        path = check_model_file("text_encoders", t5_name, "t5")
        tok = tokenizer.strip() or host.default_tokenizer_dir()
        storage = None if weight_dtype == "default" else weight_dtype
        device = host.WEIGHTS_HOME
        key = ("t5", path, _fingerprint(path), storage, dtype, tok, str(device))

        def load() -> Any:
            logger.info("Mochi: loading T5 %s (storage %s, compute %s) on %s", t5_name, weight_dtype, dtype, device)
            with host.relative_paths("text_encoders"):
                return mochi_core.load_text_encoder(
                    path, tokenizer=tok, device=device, compute_dtype=dtype, storage_dtype=storage
                )

        return (_cached(key, load),)


def _check_vae_file(name: Any) -> str:
    return check_model_file("vae", name, "vae_decoder", alternatives=("vae_encoder",))


def t5_dtype_choices() -> list[str]:
    """The T5 compute dtypes offered here: fp32 always, bf16 only when ComfyUI computes on a GPU."""
    return ["fp32"] if host.compute_device().type == "cpu" else list(T5_DTYPES)


def check_t5_dtype(dtype: Any) -> None:
    """``dtype`` must be one of :data:`T5_DTYPES` (ComfyUI skips its choice check for inputs ``VALIDATE_INPUTS``
    takes), and bf16 needs a GPU: on the CPU T5 computes in fp32 (bf16 matmuls there are slow and not the official
    precision). ``None`` (linked) is skipped. Raises InvalidInputError."""
    if dtype == "bf16" and host.compute_device().type == "cpu":
        raise invalid(
            "dtype='bf16' is not allowed here: bf16 T5 compute needs a GPU and this ComfyUI computes on the CPU; "
            "use dtype 'fp32' (to save memory, pick a smaller weight_dtype such as fp8_e4m3fn instead)"
        )
    check_widget_values(MochiT5Loader, {"dtype": dtype})
