"""Input checks shared by the nodes; every message names the input and the allowed values.

ComfyUI (0.3.75 ``execution.validate_inputs``) skips its own min / max / choice checks for every input a node's
``VALIDATE_INPUTS`` names as an argument, and passes ``None`` for an input that is linked from another node (its
value is only known at run time). So each ``VALIDATE_INPUTS`` here re-checks the ranges of the inputs it takes
(:func:`check_widget_values`, read from the node's own ``INPUT_TYPES``), lets ``None`` through, and the node runs
the same checks again at execution time, when linked values are known.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

#: Hugging Face shard file names: ``model-00001-of-00002.safetensors``, ``diffusion_pytorch_model-00001-of-00003...``
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$", re.IGNORECASE)


def invalid(message: str) -> ValueError:
    """The error type of refused inputs: :class:`mochi_core.errors.InvalidInputError` (a ValueError)."""
    from mochi_core.errors import InvalidInputError

    return InvalidInputError(message)


def widget_specs(node_cls: type) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{input name: (type, options)}`` of a node's required and optional inputs."""
    spec = node_cls.INPUT_TYPES()
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            out[name] = (entry[0], entry[1] if len(entry) > 1 else {})
    return out


def check_widget_values(node_cls: type, values: Mapping[str, Any]) -> None:
    """Check ``values`` against the INT / FLOAT ranges and the choice lists in ``node_cls.INPUT_TYPES()``.

    ``None`` means linked (not known at queue time) and is skipped. Numbers go through the pack's one rule for
    integers and real numbers (:mod:`mochi_core.scalars`: NaN and inf refused, as by the API and the CLI). Raises
    InvalidInputError naming the input and the allowed values: ``batch_size=65 is not allowed: batch_size must be
    an integer from 1 to 64``.
    """
    from mochi_core.scalars import as_int_in, as_real

    specs = widget_specs(node_cls)
    for name, value in values.items():
        if value is None:
            continue
        kind, opts = specs[name]
        if isinstance(kind, list):
            if value not in kind:
                raise invalid(f"{name}={value!r} is not allowed: {name} must be one of {', '.join(map(str, kind))}")
            continue
        lo, hi = opts.get("min"), opts.get("max")
        if kind == "INT":
            as_int_in(name, value, low=lo, high=hi)
        elif kind == "FLOAT":
            what = f"a number from {lo} to {hi}"
            number = as_real(name, value, what=what)
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                raise invalid(f"{name}={value!r} is not allowed: {name} must be {what}")


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
    """Frames 6k+1, width and height positive multiples of 16: the pack's one size rule
    (:func:`mochi_core.options.check_size`, as for the API and the CLI).

    Raises ValueError (``InvalidInputError``) naming the input and the nearest allowed values.
    """
    from mochi_core.options import check_size

    check_size(width, height, frames)


def check_model_file(folder: str, name: str, wanted: str, *, alternatives: tuple[str, ...] = ()) -> str:
    """Resolve ``name`` in ComfyUI's ``models/<folder>`` and read its header to check it holds ``wanted``.

    ``wanted`` is a component name of :mod:`mochi_core.formats.detect` (``dit``, ``vae_decoder``, ``t5``...).
    Returns the full path. Raises ValueError naming the folder and the file's actual content (a VAE in the DiT
    loader, a T5 in the VAE loader...), with file names relative to the model folders (never the server's absolute
    paths). Reads only the header (cheap enough for queue-time validation).
    """
    from mochi_core.errors import MochiError
    from mochi_core.formats.detect import require_component
    from mochi_core.formats.io import open_checkpoint

    from . import host

    if not isinstance(name, str) or not name:
        raise invalid(f"no model file selected (got {name!r}): put a file in models/{folder} and pick it")
    check_not_a_shard(folder, name)
    listed = host.filename_list(folder)
    if host.comfy_available() and name not in listed:
        shown = ", ".join(listed[:8]) + (" ..." if len(listed) > 8 else "") if listed else "(folder is empty)"
        raise invalid(f"model file {name!r} is not in models/{folder}; available: {shown}")
    try:
        with host.relative_paths(folder):
            path = host.full_path(folder, name)
            with open_checkpoint(path) as ckpt:
                require_component(ckpt.keys(), wanted, path=name, alternatives=alternatives)
    except (MochiError, OSError) as exc:
        raise invalid(str(exc)) from exc
    return path


def check_not_a_shard(folder: str, name: str) -> None:
    """Refuse one shard of a sharded Hugging Face checkpoint (``model-00001-of-00002.safetensors``).

    A shard holds only part of the tensors; the loaders take single-file checkpoints. Sharded folders load
    through the Python API and the command line, which take the folder (or its ``*.index.json``) as a path.
    """
    m = _SHARD_RE.search(os.path.basename(name))
    if m is None or int(m.group(2)) <= 1:  # "-00001-of-00001" is a whole checkpoint
        return
    raise invalid(
        f"model file {name!r} is shard {int(m.group(1))} of {int(m.group(2))} of a sharded Hugging Face checkpoint; "
        f"the loaders take a single-file checkpoint from models/{folder} (e.g. the Comfy-Org repackaged files). "
        "Load a sharded folder with the Python API or `python -m mochi_core generate`, which take the folder path"
    )
