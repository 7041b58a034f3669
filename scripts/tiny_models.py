"""Tiny random-weight stand-ins for the tests and the demo (written by :mod:`mochi_core.testing.tiny_files`).

They are NOT Mochi: a 2-block DiT (width 96), a 2-layer T5 (width 32, full vocabulary) and a VAE with 32-64
channels, all random. They exercise the whole path (loaders, text encoding, sampling, tiled decode, video saving)
in seconds on a CPU; the video they make is noise. Used by ``make demo`` when no real weights are present (into a
separate demo models folder, with a README saying what they are) and by the host tests.

Layouts written: DiT as Comfy-Org ``scaled fp8`` (``mochi_preview_fp8_scaled``) and ``bf16``
(``mochi_preview_bf16``) via :mod:`mochi_core.testing.dit`; T5 as Comfy ``fp16`` / ``fp8_e4m3fn_scaled`` via
:mod:`mochi_core.testing.t5`; VAE as Comfy-Org ``mochi_vae`` (``decoder.`` + ``encoder.`` prefixes, bf16) via
:mod:`mochi_core.testing.vae`; a rank-4 LoRA in Genmo's fine-tuner layout (``loras/model_2000.lora.safetensors``) via
:mod:`mochi_core.testing.lora`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mochi_core.testing.tiny_files import (  # noqa: E402  (the one writer; this module keeps the test helpers)
    DIT_FILES,
    LABEL,
    LORA_FILE,
    README,
    T5_FILES,
    VAE_FILE,
    write_all,
)

__all__ = [
    "DIT_FILES",
    "LABEL",
    "LORA_FILE",
    "README",
    "T5_FILES",
    "VAE_FILE",
    "write_all",
    "probe_video",
    "write_test_video",
]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_models")
    for n, p in write_all(target).items():
        print(f"{n}: {p}")  # noqa: T201 - command-line tool output


def probe_video(data: bytes) -> tuple[int, int, int]:
    """(frames, width, height) of an encoded video (bytes), decoded with PyAV."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f for f in container.decode(video=0)]
    if not frames:
        return 0, 0, 0
    return len(frames), frames[0].width, frames[0].height


def write_test_video(path: Path, frames: int = 19, width: int = 64, height: int = 48, fps: int = 30) -> Path:
    """A small H.264 MP4 of a moving colour gradient (input for the video-to-video workflow)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            img = np.stack([(xx * 4 + i * 8) % 256, (yy * 5) % 256, np.full_like(xx, (i * 12) % 256)], -1).astype(
                np.uint8
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
