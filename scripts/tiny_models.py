"""Write TINY RANDOM-WEIGHT stand-ins for the Mochi model files under the published Comfy-Org file names.

They are NOT Mochi: a 2-block DiT (width 96), a 2-layer T5 (width 32, full vocabulary) and a VAE with 32-64
channels, all random. They exercise the whole path (loaders, text encoding, sampling, tiled decode, video saving)
in seconds on a CPU; the video they make is noise. Used by ``make demo`` when no real weights are present (into a
separate demo models folder, with a README saying what they are) and by the host tests.

Layouts written: DiT as Comfy-Org ``scaled fp8`` (``mochi_preview_fp8_scaled``) and ``bf16``
(``mochi_preview_bf16``) via :mod:`mochi_core.testing.dit`; T5 as Comfy ``fp16`` / ``fp8_e4m3fn_scaled`` via
:mod:`mochi_core.testing.t5`; VAE as Comfy-Org ``mochi_vae`` (``decoder.`` + ``encoder.`` prefixes, bf16) via
:mod:`mochi_core.testing.vae`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DIT_FILES = {"mochi_preview_fp8_scaled.safetensors": "comfy_scaled_fp8", "mochi_preview_bf16.safetensors": "comfy_bf16"}
T5_FILES = {"t5xxl_fp16.safetensors": "fp16", "t5xxl_fp8_e4m3fn_scaled.safetensors": "fp8_e4m3fn_scaled"}
VAE_FILE = "mochi_vae.safetensors"
LABEL = "TINY RANDOM-WEIGHT TEST MODEL - NOT MOCHI - output is noise"

README = f"""{LABEL}

The files in this folder are tiny random-weight stand-ins written by scripts/tiny_models.py under the published
Comfy-Org file names, so that `make demo` can show the whole ComfyUI path working on a CPU without downloading
~30 GB. They are not Mochi and cannot make a real video.

For real videos put the real files into ./models (or $MOCHI_MODELS):
  diffusion_models/mochi_preview_fp8_scaled.safetensors (or mochi_preview_bf16.safetensors)
  text_encoders/t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn_scaled.safetensors)
  vae/mochi_vae.safetensors
from https://huggingface.co/Comfy-Org/mochi_preview_repackaged (folder split_files/).
"""


def write_vae(path: Path, seed: int = 1) -> Path:
    """Comfy-Org layout (``decoder.*`` + ``encoder.*``, 16-bit) of the tiny random VAE of :mod:`mochi_core.testing.vae`."""
    from mochi_core.testing.vae import random_decoder_state_dict, random_encoder_state_dict, write_comfy_vae

    return Path(write_comfy_vae(path, random_decoder_state_dict(seed=seed), random_encoder_state_dict(seed=seed + 1)))


def write_dit_file(path: Path, fmt: str) -> Path:
    from mochi_core.testing.dit import write_dit

    return Path(write_dit(path, fmt))


def write_t5_file(path: Path, layout: str) -> Path:
    from mochi_core.testing.t5 import write_t5

    return Path(write_t5(path, layout))


def write_all(
    models_dir: Path, *, readme: bool = True, which: tuple[str, ...] = ("dit", "t5", "vae")
) -> dict[str, Path]:
    """Write every stand-in under ``models_dir/{diffusion_models,text_encoders,vae}``; returns name -> path."""
    out: dict[str, Path] = {}
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models_dir / sub).mkdir(parents=True, exist_ok=True)
    if "dit" in which:
        for name, fmt in DIT_FILES.items():
            out[name] = write_dit_file(models_dir / "diffusion_models" / name, fmt)
    if "t5" in which:
        for name, layout in T5_FILES.items():
            out[name] = write_t5_file(models_dir / "text_encoders" / name, layout)
    if "vae" in which:
        out[VAE_FILE] = write_vae(models_dir / "vae" / VAE_FILE)
    if readme:
        (models_dir / "README_TINY_RANDOM_MODELS.txt").write_text(README)
    return out


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
