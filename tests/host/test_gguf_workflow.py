"""The shipped text-to-video workflow in the real ComfyUI with a ``.gguf`` DiT and a ``.gguf`` T5 under published
file names (``mochi-q4_k_m.gguf`` of calcuis/mochi-gguf, ``t5-v1_1-xxl-encoder-Q5_K_M.gguf`` of
city96/t5-v1_1-xxl-encoder-gguf).

Tiny random stand-ins written with ``GGUFWriter``: a DiT of width 256 (whole K super-blocks) as a Q4_K file with
Q6_K for some layers (a *_K_M mix) and a 2-layer T5 of width 256 (full vocabulary, so ComfyUI's real T5 tokenizer
drives it) as Q5_K with Q6_K for the feed-forward output. The loaders must list the files, keep their types, and
the workflow must render the video.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_client import PromptRejected
from headless import apply_overrides, find_nodes
from tiny_models import probe_video, write_all

from mochi_core.dit.config import DiTConfig
from mochi_core.formats.t5 import T5Shape
from mochi_core.testing.dit import random_dit_state_dict
from mochi_core.testing.gguf import write_dit_gguf, write_t5_gguf
from mochi_core.testing.t5 import tiny_t5_state_dict

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
DIT_NAME = "mochi-q4_k_m.gguf"
T5_NAME = "t5-v1_1-xxl-encoder-Q5_K_M.gguf"
WIDTH, HEIGHT, FRAMES, STEPS = 48, 32, 13, 2


@pytest.fixture(scope="module")
def gguf_models(comfy_host) -> None:
    write_all(comfy_host.models_dir, readme=False, which=("vae",))
    cfg = DiTConfig(depth=2, num_heads=2, hidden_size_x=256, hidden_size_y=256, t5_feat_dim=256)
    write_dit_gguf(
        comfy_host.model_path("diffusion_models", DIT_NAME),
        random_dit_state_dict(cfg, seed=7),
        "Q4_K",
        mix={r"mlp_x\.w2|attn\.proj_x": "Q6_K"},
    )
    shape = T5Shape(
        vocab_size=32128, d_model=256, d_kv=64, num_heads=4, d_ff=512, num_layers=2, num_buckets=32, gated=True
    )
    write_t5_gguf(
        comfy_host.model_path("text_encoders", T5_NAME),
        tiny_t5_state_dict(seed=8, shape=shape),
        "Q5_K",
        mix={r"DenseReluDense\.wo": "Q6_K"},
    )


def test_loaders_list_gguf_files(comfy_host, gguf_models) -> None:
    info = comfy_host.client.object_info()
    assert DIT_NAME in info["MochiDiTLoader"]["input"]["required"]["dit_name"][0]
    assert T5_NAME in info["MochiT5Loader"]["input"]["required"]["t5_name"][0]


def test_text_to_video_with_gguf_dit_and_t5(comfy_host, gguf_models) -> None:
    prompt = json.loads((REPO / "workflows" / "api" / "mochi_text_to_video.json").read_text())
    prompt = apply_overrides(
        prompt, frames=FRAMES, steps=STEPS, width=WIDTH, height=HEIGHT, filename_prefix="tests/gguf"
    )
    (dit,) = find_nodes(prompt, "MochiDiTLoader")
    (t5,) = find_nodes(prompt, "MochiT5Loader")
    prompt[dit]["inputs"].update(dit_name=DIT_NAME, weight_dtype="default")
    prompt[t5]["inputs"].update(t5_name=T5_NAME, weight_dtype="default")
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    (video,) = [f for f in result.files() if f["filename"].endswith(".mp4")]
    assert probe_video(comfy_host.client.view(**video)) == (FRAMES, WIDTH, HEIGHT)
    log = comfy_host.log()
    assert "gguf (F32 x" in log and "Q4_K x" in log and "Q6_K x" in log  # the DiT kept the file's own types
    assert comfy_host.alive()


def test_gguf_of_another_model_is_refused_at_queue_time(comfy_host, gguf_models) -> None:
    import torch

    from mochi_core.testing.gguf import encode_tensor, write_gguf

    name = "flux1-dev-Q4_K_S.gguf"
    write_gguf(
        comfy_host.model_path("diffusion_models", name),
        {"double_blocks.0.img_attn.proj.weight": (encode_tensor(torch.randn(8, 256), "Q4_K"), "Q4_K")},
        arch="flux",
    )
    prompt = json.loads((REPO / "workflows" / "api" / "mochi_text_to_video.json").read_text())
    (dit,) = find_nodes(prompt, "MochiDiTLoader")
    prompt[dit]["inputs"]["dit_name"] = name
    with pytest.raises(PromptRejected) as err:
        comfy_host.client.queue(prompt)
    text = json.dumps(err.value.body.get("node_errors"))
    assert name in text and "architecture 'flux'" in text, text
    assert comfy_host.alive()
