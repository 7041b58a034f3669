"""Decoded VAE output -> frames -> MP4 (PyAV) or PNG files.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (``decode_latents``: frames =
clamp((x + 1) / 2, 0, 1)) and ``src/genmo/lib/utils.py`` (``save_video``: 30 fps, ``(frame * 255).astype(uint8)``,
i.e. truncation, not rounding); docs/numerics.md §1 step 6.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError, MissingBackendError
from .scalars import as_int

__all__ = [
    "CRF_RANGE",
    "FPS",
    "check_mp4_options",
    "decoded_to_frames",
    "frames_to_uint8",
    "write_mp4",
    "write_png",
    "write_png_frames",
]

logger = logging.getLogger(__name__)

#: Mochi 1 renders at 30 frames per second.
FPS = 30
#: H.264 constant rate factor range of libx264 (0 = lossless ... 51 = worst).
CRF_RANGE = (0, 51)


def _arg(name: str, value: object) -> str:
    """``crf=60`` for API arguments, ``--crf 60`` for command-line options."""
    return f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"


def check_mp4_options(fps: int, crf: int, *, names: tuple[str, str] = ("fps", "crf")) -> None:
    """``fps`` an integer >= 1 and ``crf`` an integer in :data:`CRF_RANGE`; errors name ``names`` (e.g. the CLI's
    ``--fps`` / ``--crf``)."""
    label = [_arg(n, v) for n, v in zip(names, (fps, crf))]
    lo, hi = CRF_RANGE
    as_int(
        names[0],
        fps,
        low=1,
        message=f"{label[0]} is not allowed: the frame rate must be an integer >= 1 (Mochi: {FPS})",
    )
    as_int(
        names[1],
        crf,
        low=lo,
        high=hi,
        message=f"{label[1]} is not allowed: H.264 CRF must be an integer in {lo}..{hi} (lower is better)",
    )


def decoded_to_frames(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output (B, 3, F, H, W) or (3, F, H, W), nominally in [-1, 1] -> frames (B, F, H, W, 3) or
    (F, H, W, 3) float32 in [0, 1] (ComfyUI's IMAGE layout)."""
    if decoded.dim() not in (4, 5) or decoded.shape[-4] != 3:
        raise InvalidInputError(f"decoded video must be (B, 3, F, H, W) or (3, F, H, W), got {tuple(decoded.shape)}")
    x = decoded.to(torch.float32)
    x = torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)
    return x.movedim(-4, -1).contiguous()


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """frames (..., H, W, 3) float in [0, 1] -> uint8 by truncation of frames * 255 in float32 (official save)."""
    return (frames.to(torch.float32).clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _check_frames(frames: torch.Tensor) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise InvalidInputError(f"frames must be (F, H, W, 3), got {tuple(frames.shape)}")
    return frames if frames.dtype == torch.uint8 else frames_to_uint8(frames)


def write_mp4(
    path: str | os.PathLike[str],
    frames: torch.Tensor,
    *,
    fps: int = FPS,
    crf: int = 18,
    codec: str = "libx264",
) -> Path:
    """Write frames (F, H, W, 3) (float in [0, 1] or uint8) as an H.264 MP4 (yuv420p) with PyAV.

    Height and width must be even (yuv420p); Mochi sizes are multiples of 16. ``fps`` >= 1, ``crf`` 0..51 (checked
    before anything is written). Falls back to the ``mpeg4`` encoder when the PyAV build has no ``libx264``.
    """
    check_mp4_options(fps, crf)
    try:
        import av
    except ImportError as exc:
        raise MissingBackendError("writing MP4 needs PyAV: pip install av") from exc
    data = _check_frames(frames).cpu().numpy()
    n, h, w, _ = data.shape
    if h % 2 or w % 2:
        raise InvalidInputError(f"MP4 (yuv420p) needs an even height and width, got {h}x{w}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(p), mode="w") as container:
        if codec not in av.codecs_available:
            logger.warning("PyAV has no %s encoder; writing MPEG-4 part 2 instead", codec)
            codec = "mpeg4"
        stream: Any = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(int(crf))}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(data[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    logger.info("wrote %s: %d frames, %dx%d, %d fps", p, n, w, h, fps)
    return p


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | os.PathLike[str], image: torch.Tensor) -> Path:
    """Write one image (H, W, 3) (float in [0, 1] or uint8) as an 8-bit RGB PNG (no dependency beyond zlib)."""
    img = _check_frames(image.unsqueeze(0))[0].cpu().contiguous()
    h, w, _ = img.shape
    raw = img.numpy().tobytes()
    stride = w * 3
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 6))
    png += _png_chunk(b"IEND", b"")
    p = Path(path)
    p.write_bytes(png)
    return p


def write_png_frames(folder: str | os.PathLike[str], frames: torch.Tensor, *, prefix: str = "frame_") -> list[Path]:
    """Write frames (F, H, W, 3) as ``<folder>/<prefix>00000.png`` ...; returns the paths."""
    data = _check_frames(frames)
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    return [write_png(d / f"{prefix}{i:05d}.png", data[i]) for i in range(data.shape[0])]
