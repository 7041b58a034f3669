"""Input checks shared by the nodes; every message names the input and the allowed values."""

from __future__ import annotations

from typing import Any


def video_size_inputs(note: str = "") -> dict[str, tuple[str, dict[str, Any]]]:
    """The ``width`` / ``height`` / ``frames`` INT inputs (848x480, 31 frames by default) shared by the nodes that
    make a video size; ``note`` is appended to each tooltip."""
    suffix = f" {note}" if note else ""
    return {
        "width": (
            "INT",
            {
                "default": 848,
                "min": 16,
                "max": 4096,
                "step": 16,
                "tooltip": "Video width in pixels, a multiple of 16 (Mochi was trained at 848)." + suffix,
            },
        ),
        "height": (
            "INT",
            {
                "default": 480,
                "min": 16,
                "max": 4096,
                "step": 16,
                "tooltip": "Video height in pixels, a multiple of 16 (Mochi was trained at 480)." + suffix,
            },
        ),
        "frames": (
            "INT",
            {
                "default": 31,
                "min": 1,
                "max": 1021,
                "step": 6,
                "tooltip": "Number of frames, 6k+1 (1, 7, 13, ... 163; 163 = 5.4 s at 30 fps)." + suffix,
            },
        ),
    }


def check_video_size(width: int, height: int, frames: int) -> None:
    """Frames 6k+1, width and height positive multiples of 16 (:func:`mochi_core.sampling.validate_size`).

    Raises ValueError (``InvalidInputError``) naming the input and the nearest allowed values.
    """
    from mochi_core.sampling import validate_size

    validate_size(frames, height, width)


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
