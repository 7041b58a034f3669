"""The one module of the pack that talks to ComfyUI; every ComfyUI import happens inside a function.

Adapts ComfyUI's services to the plain callbacks `mochi_core` takes:

- model files: ``folder_paths.get_filename_list`` / ``get_full_path_or_raise`` (``diffusion_models``, ``vae``,
  ``text_encoders``);
- devices and memory: ``comfy.model_management.get_torch_device`` (compute), ``intermediate_device`` (where
  LATENT / IMAGE outputs live), ``free_memory`` (ask ComfyUI to move *its* models out of the way, never
  ``unload_all_models``), ``get_free_memory`` and ``extra_reserved_memory`` (``--reserve-vram``). The pack's
  weights live in system RAM between uses (:data:`WEIGHTS_HOME`), also under ``--highvram`` / ``--gpu-only``,
  where ComfyUI's ``unet_offload_device`` is the GPU: ComfyUI cannot evict models it does not manage, so a model
  left on the GPU would take the memory the next graph needs; pinned host memory for block streaming follows ``--disable-pinned-memory`` and
  ComfyUI's pinned-memory cap (``pin_policy``);
- interrupt: ``should_stop()`` reads ``processing_interrupted()``, checked before every step / tile and before each
  progress update (ahead of ComfyUI's own progress hook, so the pack's path is the one that stops); a
  :class:`mochi_core.errors.MochiInterrupted` becomes ComfyUI's ``InterruptProcessingException`` (the UI shows
  "interrupted", the next prompt runs) and is logged as ``<node>: stopped on request (...)``;
- progress and previews: ``comfy.utils.ProgressBar.update_absolute(step, total, ("JPEG", image, size))`` with a
  latent->RGB preview from ``comfy.latent_formats.Mochi().latent_rgb_factors`` when the server's
  ``--preview-method`` asks for previews (default: none, like core's KSampler).

Without ComfyUI (plain Python, unit tests) every function falls back to CPU / no-op behaviour, so the node
classes can be exercised directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "comfy_available",
    "filename_list",
    "full_path",
    "relative_paths",
    "compute_device",
    "WEIGHTS_HOME",
    "output_device",
    "free_bytes",
    "reserved_bytes",
    "make_room",
    "should_stop",
    "interrupt_errors",
    "ProgressReporter",
    "preview_factors",
    "latent_to_rgb",
    "default_tokenizer_dir",
    "is_oom",
    "pin_policy",
]


def comfy_available() -> bool:
    """True when running inside ComfyUI (``comfy.model_management`` importable)."""
    try:
        import comfy.model_management  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Model files
# ------------------------------------------------------------------------------------------------


#: Extensions listed in a model folder beyond ComfyUI's own (``.gguf`` DiT and T5 files; ComfyUI lists only
#: safetensors / pickle extensions there).
EXTRA_EXTENSIONS: dict[str, tuple[str, ...]] = {"diffusion_models": (".gguf",), "text_encoders": (".gguf",)}


def filename_list(folder: str) -> list[str]:
    """Files ComfyUI lists for ``folder`` (``diffusion_models``, ``vae``, ``text_encoders``), plus the files of
    :data:`EXTRA_EXTENSIONS` in that folder's paths (sorted, subfolders included); [] outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []
    names = list(folder_paths.get_filename_list(folder))
    extra = EXTRA_EXTENSIONS.get(folder)
    if extra:
        found: set[str] = set()
        for root in folder_paths.get_folder_paths(folder):
            if os.path.isdir(root):
                files, _ = folder_paths.recursive_search(root, excluded_dir_names=[".git"])
                found.update(folder_paths.filter_files_extensions(files, extra))
        names = sorted(set(names) | found)
    return names


def full_path(folder: str, name: str) -> str:
    """Absolute path of ``name`` in ComfyUI's ``folder``; raises FileNotFoundError naming the folder if absent.

    Outside ComfyUI ``name`` is taken as a path.
    """
    try:
        import folder_paths
    except ImportError:
        return name
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(
            f"model file {name!r} not found in models/{folder} (or it is a link to a file that no longer exists)"
        )
    return path


def _shorten(text: str, folder: str) -> str:
    """``text`` with every absolute path of ComfyUI's ``folder`` written as ``models/<folder>``."""
    import os

    import folder_paths

    for base in sorted(folder_paths.get_folder_paths(folder), key=len, reverse=True):
        base = os.path.normpath(base)
        text = text.replace(base + os.sep, f"models/{folder}/").replace(base, f"models/{folder}")
    return text


@contextlib.contextmanager
def relative_paths(folder: str) -> Iterator[None]:
    """Messages of errors raised in the body name model files relative to ComfyUI's model folders
    (``models/diffusion_models/x.safetensors``), never by the server's absolute paths, which an API client should
    not see. The error itself (type, traceback) is kept; only the paths in its message change."""
    try:
        yield
    except Exception as exc:
        if comfy_available():
            if isinstance(exc, OSError):
                for attr in ("filename", "filename2"):
                    value = getattr(exc, attr, None)
                    if isinstance(value, str):
                        setattr(exc, attr, _shorten(value, folder))
            exc.args = tuple(_shorten(a, folder) if isinstance(a, str) else a for a in exc.args)
        raise


# ------------------------------------------------------------------------------------------------
# Devices and memory
# ------------------------------------------------------------------------------------------------


def compute_device() -> torch.device:
    """ComfyUI's compute device (``get_torch_device``); CPU outside ComfyUI."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return torch.device(mm.get_torch_device())


#: where the pack's model weights wait between uses, whatever ComfyUI's memory mode (see the module docstring)
WEIGHTS_HOME = torch.device("cpu")


def output_device() -> torch.device:
    """Where node outputs (LATENT, IMAGE) live (``intermediate_device``)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return torch.device(mm.intermediate_device())


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` as ComfyUI counts it (for CPU: available system RAM)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        import psutil

        return int(psutil.virtual_memory().available)
    return int(mm.get_free_memory(device))


def reserved_bytes(device: torch.device) -> int:
    """Device memory ComfyUI keeps free for other applications (``extra_reserved_memory()``: 400 MiB by default,
    ``--reserve-vram`` GB when given); 0 on the CPU and outside ComfyUI."""
    if device.type == "cpu":
        return 0
    try:
        import comfy.model_management as mm
    except ImportError:
        return 0
    return int(mm.extra_reserved_memory())


def make_room(nbytes: int, device: torch.device) -> int:
    """Ask ComfyUI to unload its own models from ``device`` until ``nbytes`` are free; returns the free bytes.

    Uses ``comfy.model_management.free_memory`` (smart eviction), never ``unload_all_models``.
    """
    try:
        import comfy.model_management as mm
    except ImportError:
        return free_bytes(device)
    if device.type != "cpu":
        mm.free_memory(int(nbytes), device)
        mm.soft_empty_cache()
    return int(mm.get_free_memory(device))


def pin_policy() -> Any:
    """How block streaming may page-lock host memory, from ComfyUI's settings: off under
    ``--disable-pinned-memory`` (or where ComfyUI pins nothing, e.g. on the CPU), else capped at what ComfyUI's
    pinned-memory limit leaves (``MAX_PINNED_MEMORY`` minus ``TOTAL_PINNED_MEMORY``). Outside ComfyUI (or with a
    ComfyUI that has no such settings): the core's default (pin when streaming to CUDA, no cap)."""
    from mochi_core.memory.streaming.pinning import PinPolicy

    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    limit = getattr(mm, "MAX_PINNED_MEMORY", None)
    if limit is None:
        return None
    if limit <= 0:
        return PinPolicy.disabled()
    return PinPolicy(limit_bytes=max(0, int(limit - getattr(mm, "TOTAL_PINNED_MEMORY", 0))))


def soft_empty_cache() -> None:
    """Release cached device memory after a heavy phase (no-op outside ComfyUI / on CPU)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return
    mm.soft_empty_cache()


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of torch (CUDA or CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    return isinstance(exc, mm.OOM_EXCEPTION)


# ------------------------------------------------------------------------------------------------
# Interrupt
# ------------------------------------------------------------------------------------------------


def should_stop() -> bool:
    """True once the user pressed Cancel / POST /interrupt (``processing_interrupted``); False outside ComfyUI."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    return bool(mm.processing_interrupted())


@contextlib.contextmanager
def interrupt_errors(what: str = "Mochi") -> Iterator[None]:
    """Turn :class:`mochi_core.errors.MochiInterrupted` into ComfyUI's ``InterruptProcessingException``.

    ComfyUI then reports ``execution_interrupted`` (not an error) and resets the flag for the next prompt. The
    stop is logged as ``"<what>: stopped on request (<where>)"``.
    """
    from mochi_core.errors import MochiInterrupted

    try:
        yield
    except MochiInterrupted as exc:
        try:
            import comfy.model_management as mm
        except ImportError:
            raise
        logger.info("%s: stopped on request (%s)", what, exc)
        mm.throw_exception_if_processing_interrupted()  # resets the flag and raises when it is set
        raise mm.InterruptProcessingException() from exc


# ------------------------------------------------------------------------------------------------
# Progress and previews
# ------------------------------------------------------------------------------------------------


def preview_factors() -> tuple[torch.Tensor, torch.Tensor] | None:
    """Core's Mochi latent->RGB matrix (12, 3) and bias (3,), or None when previews are off / outside ComfyUI."""
    try:
        import comfy.latent_formats
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:
        return None
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    fmt = comfy.latent_formats.Mochi()
    bias = fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0]
    return torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def latent_to_rgb(latent: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """First latent frame of the first video -> RGB preview: ``(B, 12, T, h, w)`` DiT space -> ``(h, w, 3)`` uint8.

    Same projection as core's ``Latent2RGBPreviewer``, which core applies to the sampler's x0 estimate in the
    model's (normalized, DiT) space: linear map with the 12x3 factors and bias, then [-1, 1] -> [0, 255].
    """
    x = latent[0, :, 0].detach().to("cpu", torch.float32)  # (12, h, w)
    rgb = torch.nn.functional.linear(x.movedim(0, -1), factors.t(), bias)  # (h, w, 3)
    return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)


def _preview_size() -> int:
    try:
        from comfy.cli_args import args
    except ImportError:
        return 512
    return int(args.preview_size)


class ProgressReporter:
    """A ComfyUI progress bar for ``total`` units; optional latent previews. A no-op outside ComfyUI.

    ``update(done, preview_latent=None)``: ``done`` units finished; ``preview_latent`` is a DiT-space latent
    ``(B, 12, T, h, w)`` (the sampler's x0 estimate) whose first frame is sent as the preview image.
    """

    def __init__(self, total: int, *, previews: bool = False) -> None:
        self.total = max(1, int(total))
        self._bar: Any = None
        self._factors = preview_factors() if previews else None
        try:
            import comfy.utils
        except ImportError:
            return
        self._bar = comfy.utils.ProgressBar(self.total)

    @property
    def sends_previews(self) -> bool:
        return self._factors is not None

    def update(self, done: int, preview_latent: torch.Tensor | None = None) -> None:
        """Report ``done`` units. Raises :class:`mochi_core.errors.MochiInterrupted` when a stop was requested,
        before ComfyUI's progress hook would raise its own interrupt (so :func:`interrupt_errors` handles it)."""
        if self._bar is None:
            return
        if should_stop():
            from mochi_core.errors import MochiInterrupted

            raise MochiInterrupted(f"stopped after {done} of {self.total}")
        preview = None
        if preview_latent is not None and self._factors is not None:
            from PIL import Image

            img = Image.fromarray(latent_to_rgb(preview_latent, *self._factors).numpy())
            preview = ("JPEG", img, _preview_size())
        self._bar.update_absolute(min(done, self.total), self.total, preview)

    def callback(self) -> Callable[..., None]:
        """A ``callback(step, total, x0)`` for :func:`mochi_core.sample` (``x0``: DiT-space estimate)."""

        def cb(step: int, total: int, x0: torch.Tensor | None = None) -> None:
            self.total = max(1, int(total))
            self.update(step + 1, x0)

        return cb


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


def default_tokenizer_dir() -> str | None:
    """The T5 tokenizer bundled with the host (``comfy/text_encoders/t5_tokenizer``), or None outside ComfyUI."""
    try:
        import comfy.text_encoders
    except ImportError:
        return None
    import os

    for base in getattr(comfy.text_encoders, "__path__", []):
        d = os.path.join(base, "t5_tokenizer")
        if os.path.isdir(d):
            return d
    return None
