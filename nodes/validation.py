"""Input checks shared by the nodes; every message names the input and the allowed values."""

from __future__ import annotations


def nearest_valid_frames(frames: int) -> tuple[int, int]:
    """The 6k+1 frame counts just below and above ``frames``."""
    below = max(1, ((frames - 1) // 6) * 6 + 1)
    return below, below + 6


def check_frames(frames: int) -> None:
    if frames < 1 or (frames - 1) % 6:
        lo, hi = nearest_valid_frames(max(frames, 1))
        options = f"{lo} or {hi}" if lo != frames else f"{hi}"
        raise ValueError(
            f"frames={frames} is not allowed: Mochi needs 6k+1 frames (1, 7, 13, ..., 163); nearest: {options}"
        )


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value < 16 or value % 16:
            lo = max(16, value // 16 * 16)
            raise ValueError(
                f"{name}={value} is not allowed: it must be a positive multiple of 16 (nearest: {lo} or {lo + 16})"
            )


def check_model_file(folder: str, name: str, wanted: str, *, alternatives: tuple[str, ...] = ()) -> str:
    """Resolve ``name`` in ComfyUI's ``models/<folder>`` and read its header to check it holds ``wanted``.

    ``wanted`` is a component name of :mod:`mochi_core.formats.detect` (``dit``, ``vae_decoder``, ``t5``...).
    Returns the full path. Raises ValueError naming the folder and the file's actual content (a VAE in the DiT
    loader, a T5 in the VAE loader...). Reads only the header (cheap enough for queue-time validation).
    """
    from mochi_core.errors import MochiError
    from mochi_core.formats.detect import require_component
    from mochi_core.formats.io import open_checkpoint

    from . import host

    if not isinstance(name, str) or not name:
        raise ValueError(f"no model file selected: put a file in models/{folder} and pick it")
    listed = host.filename_list(folder)
    if host.comfy_available() and name not in listed:
        shown = ", ".join(listed[:8]) + (" ..." if len(listed) > 8 else "") if listed else "(folder is empty)"
        raise ValueError(f"model file {name!r} is not in models/{folder}; available: {shown}")
    try:
        path = host.full_path(folder, name)
        with open_checkpoint(path) as ckpt:
            require_component(ckpt.keys(), wanted, path=name, alternatives=alternatives)
    except (MochiError, OSError) as exc:
        raise ValueError(str(exc)) from exc
    return path
