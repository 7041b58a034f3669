"""A folder of TINY RANDOM-WEIGHT stand-ins for the Mochi model files, to try the pack without 20 GB of downloads.

They are NOT Mochi: a 2-block DiT (width 96), a 2-layer T5 (width 32, full vocabulary) and a VAE with 32-64
channels, all random; the video they make is noise. They are written in the published formats and under the
published Comfy-Org file names, so every loader, the command line, the Python API and ComfyUI read them exactly as
they read the real files:

    DIR/diffusion_models/mochi_preview_fp8_scaled.safetensors   (Comfy-Org scaled fp8 layout)
    DIR/diffusion_models/mochi_preview_bf16.safetensors         (Comfy-Org bf16 layout)
    DIR/text_encoders/t5xxl_fp16.safetensors                    (Comfy fp16 layout)
    DIR/text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors       (Comfy scaled fp8 layout)
    DIR/vae/mochi_vae.safetensors                               (Comfy-Org decoder + encoder)
    DIR/loras/model_2000.lora.safetensors                       (a LoRA in Genmo's fine-tuner layout)
    DIR/tokenizer/tokenizer.json                                (a tiny character-level tokenizer, not T5's)
    DIR/README_TINY_RANDOM_MODELS.txt

Command line: ``python -m mochi_core.testing DIR``.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

DIT_FILES: dict[str, str] = {
    "mochi_preview_fp8_scaled.safetensors": "comfy_scaled_fp8",
    "mochi_preview_bf16.safetensors": "comfy_bf16",
}
T5_FILES: dict[str, str] = {
    "t5xxl_fp16.safetensors": "fp16",
    "t5xxl_fp8_e4m3fn_scaled.safetensors": "fp8_e4m3fn_scaled",
}
VAE_FILE = "mochi_vae.safetensors"
#: a LoRA for the tiny DiT in Genmo's fine-tuner layout, under the name that fine-tuner gives it (loras/)
LORA_FILE = "model_2000.lora.safetensors"
TOKENIZER_FILE = Path("tokenizer") / "tokenizer.json"
LABEL = "TINY RANDOM-WEIGHT TEST MODEL - NOT MOCHI - output is noise"

README = f"""{LABEL}

The files in this folder are tiny random-weight stand-ins written by `python -m mochi_core.testing` under the
published Comfy-Org file names, to show the whole path (loaders, text encoding, sampling, tiled decode, video
writing) working on a CPU in seconds without downloading ~30 GB. They are not Mochi and cannot make a real video.
tokenizer/tokenizer.json is a tiny character-level tokenizer, not the T5 tokenizer.

For real videos use the real files (Comfy-Org/mochi_preview_repackaged on Hugging Face, folder split_files/):
  diffusion_models/mochi_preview_fp8_scaled.safetensors (or mochi_preview_bf16.safetensors)
  text_encoders/t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn_scaled.safetensors)
  vae/mochi_vae.safetensors
(for the LoRA workflow, your LoRA as loras/model_2000.lora.safetensors, or pick its name in the Mochi LoRA node)
and the T5 tokenizer of google/t5-v1_1-xxl (spiece.model or tokenizer.json; ComfyUI ships it in
comfy/text_encoders/t5_tokenizer/).
"""


def write_tiny_tokenizer(path: str | os.PathLike[str]) -> Path:
    """A character-level Unigram ``tokenizer.json`` with T5's special ids (pad 0, EOS ``</s>`` 1, unk 2).

    Every printable ASCII character is a piece (with and without the word-start marker), so any prompt
    tokenizes; ids stay far below T5's vocabulary size (32128), which the tiny T5 keeps.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [f"\u2581{c}" for c in chars] + list(chars)
    vocab = [(p, 0.0 if i < 3 else -1.0 - i / 1000) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def write_all(
    models_dir: str | os.PathLike[str],
    *,
    readme: bool = True,
    which: tuple[str, ...] = ("dit", "t5", "vae", "lora"),
) -> dict[str, Path]:
    """Write the stand-ins under ``models_dir/{diffusion_models,text_encoders,vae,loras,tokenizer}``; returns name ->
    path."""
    from .dit import write_dit
    from .lora import write_lora
    from .t5 import write_t5
    from .vae import random_decoder_state_dict, random_encoder_state_dict, write_comfy_vae

    root = Path(models_dir)
    out: dict[str, Path] = {}
    for sub in ("diffusion_models", "text_encoders", "vae", "loras"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if "dit" in which:
        for name, fmt in DIT_FILES.items():
            out[name] = Path(write_dit(root / "diffusion_models" / name, fmt))
    if "t5" in which:
        for name, layout in T5_FILES.items():
            out[name] = Path(write_t5(root / "text_encoders" / name, layout))
        out["tokenizer.json"] = write_tiny_tokenizer(root / TOKENIZER_FILE)
    if "vae" in which:
        out[VAE_FILE] = Path(
            write_comfy_vae(
                root / "vae" / VAE_FILE, random_decoder_state_dict(seed=1), random_encoder_state_dict(seed=2)
            )
        )
    if "lora" in which:  # std 0.2: a LoRA that visibly changes the tiny model's output
        out[LORA_FILE] = Path(write_lora(root / "loras" / LORA_FILE, "genmo", rank=4, alpha=8, seed=5, std=0.2))
    if readme:
        (root / "README_TINY_RANDOM_MODELS.txt").write_text(README)
    return out
