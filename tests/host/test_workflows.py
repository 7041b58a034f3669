"""Every shipped API workflow runs in the real ComfyUI on tiny models saved under the published file names.

The tiny random-weight models (scripts/tiny_models.py) are written into the host's models folders as
``mochi_preview_fp8_scaled`` / ``mochi_preview_bf16`` (diffusion_models), ``t5xxl_fp16`` /
``t5xxl_fp8_e4m3fn_scaled`` (text_encoders) and ``mochi_vae`` (vae). Each workflow is run with small overrides
(48x32 pixels, 13 frames, 2 steps) and the saved video is decoded to check its frame count and size.
"""

from __future__ import annotations

import json
from pathlib import Path

import build_workflows
import pytest
from comfy_client import PromptRejected
from headless import apply_overrides, find_nodes
from tiny_models import probe_video, write_all, write_test_video

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "workflows" / "api"
WIDTH, HEIGHT, FRAMES, STEPS = 48, 32, 13, 2


@pytest.fixture(scope="module")
def tiny_models(comfy_host) -> dict[str, Path]:
    return write_all(comfy_host.models_dir, readme=False)


def small(prompt: dict, name: str) -> dict:
    """Shrink a shipped workflow: 48x32, 13 frames, 2 steps; v2v input resized to the same size."""
    out = apply_overrides(
        prompt, frames=FRAMES, steps=STEPS, width=WIDTH, height=HEIGHT, filename_prefix=f"tests/{name}"
    )
    for nid in find_nodes(out, "ImageScale"):
        out[nid]["inputs"].update(width=WIDTH, height=HEIGHT)
    for nid in find_nodes(out, "ImageFromBatch"):
        out[nid]["inputs"]["length"] = FRAMES
    return out


def api_workflows() -> list[Path]:
    return sorted(API_DIR.glob("*.json"))


def test_core_node_facts_of_the_workflow_builder_match_the_server(comfy_host) -> None:
    """scripts/build_workflows.py writes core nodes' widgets from CORE_NODES: they must be the live host's."""
    assert build_workflows.core_node_mismatches(comfy_host.client.object_info()) == []


def test_there_are_three_shipped_workflows() -> None:
    names = {p.stem for p in api_workflows()}
    assert {"mochi_text_to_video", "mochi_text_to_video_low_vram", "mochi_video_to_video"} <= names


@pytest.mark.parametrize("path", api_workflows(), ids=lambda p: p.stem)
def test_shipped_api_workflow_renders_video(comfy_host, tiny_models, path: Path) -> None:
    prompt = small(json.loads(path.read_text()), path.stem)
    if find_nodes(prompt, "LoadVideo"):
        (nid,) = find_nodes(prompt, "LoadVideo")
        write_test_video(comfy_host.base_dir / "input" / prompt[nid]["inputs"]["file"], frames=19, width=64, height=48)
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    files = [f for f in result.files() if f["filename"].endswith((".mp4", ".webm", ".webp", ".mov"))]
    assert len(files) == 1, result.outputs()
    frames, width, height = probe_video(comfy_host.client.view(**files[0]))
    assert (frames, width, height) == (FRAMES, WIDTH, HEIGHT)
    # the sampler reported one progress unit per step it ran (video-to-video with denoise < 1 runs fewer)
    samplers = find_nodes(prompt, "MochiSampler")
    ticks = [e["data"] for e in result.events if e.get("type") == "progress" and e["data"].get("node") in samplers]
    assert ticks and [t["value"] for t in ticks] == list(range(1, ticks[-1]["max"] + 1))
    assert ticks[-1]["max"] == (STEPS if prompt[samplers[0]]["inputs"].get("denoise", 1.0) >= 1.0 else 1)
    assert result.previews >= 1  # latent previews of the x0 estimate (server started with --preview-method auto)
    assert comfy_host.alive()


def test_second_run_reuses_cached_loaders(comfy_host, tiny_models) -> None:
    """Unchanged loader inputs are not executed again (ComfyUI output cache + IS_CHANGED file fingerprint)."""
    prompt = small(json.loads((API_DIR / "mochi_text_to_video.json").read_text()), "cache")
    first = comfy_host.client.run(prompt, timeout=300)
    assert first.status == "success"
    prompt2 = apply_overrides(prompt, seed=777)
    second = comfy_host.client.run(prompt2, timeout=300)
    assert second.status == "success"
    cached = next(e["data"]["nodes"] for e in second.events if e.get("type") == "execution_cached")
    loaders = find_nodes(prompt, ("MochiDiTLoader", "MochiT5Loader", "MochiVAELoader"))
    assert set(loaders) <= set(cached), (loaders, cached)


def test_core_empty_latent_and_conditioning_nodes_interoperate(comfy_host, tiny_models) -> None:
    """Core EmptyMochiLatentVideo sizes our sampler; our conditioning passes through a core conditioning node."""
    prompt = small(json.loads((API_DIR / "mochi_text_to_video.json").read_text()), "interop")
    (sid,) = find_nodes(prompt, "MochiSampler")
    prompt["90"] = {
        "class_type": "EmptyMochiLatentVideo",
        "inputs": {"width": 64, "height": 32, "length": 7, "batch_size": 1},
    }
    prompt["91"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": prompt[sid]["inputs"]["negative"]}}
    prompt[sid]["inputs"]["latent"] = ["90", 0]
    prompt[sid]["inputs"]["negative"] = ["91", 0]
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    (f,) = [f for f in result.files() if f["filename"].endswith(".mp4")]
    assert probe_video(comfy_host.client.view(**f)) == (7, 64, 32)


def test_core_sigmas_drive_the_sampler(comfy_host, tiny_models) -> None:
    """A core SIGMAS (KarrasScheduler from 1.0 to 0) replaces steps; an out-of-range one is a clear error."""
    prompt = small(json.loads((API_DIR / "mochi_text_to_video.json").read_text()), "sigmas")
    (sid,) = find_nodes(prompt, "MochiSampler")
    prompt["95"] = {
        "class_type": "KarrasScheduler",
        "inputs": {"steps": 3, "sigma_max": 1.0, "sigma_min": 0.05, "rho": 7.0},
    }
    prompt[sid]["inputs"]["sigmas"] = ["95", 0]
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    ticks = [e["data"] for e in result.events if e.get("type") == "progress" and e["data"].get("node") == sid]
    assert ticks[-1]["max"] == 3
    prompt["95"]["inputs"]["sigma_max"] = 2.0
    bad = comfy_host.client.run(prompt, timeout=300)
    assert bad.status == "error" and "sigmas must start in (0, 1]" in bad.error["exception_message"]


SPEED_INPUTS = ("preset", "teacache_threshold", "max_skip_steps", "stg_scale", "stg_blocks", "stg_rescale")


def test_workflow_saved_without_the_speed_inputs_still_runs(comfy_host, tiny_models) -> None:
    """A workflow saved before the sampler had its optional speed inputs (they are simply absent) runs as before."""
    prompt = small(json.loads((API_DIR / "mochi_text_to_video.json").read_text()), "old")
    (sid,) = find_nodes(prompt, "MochiSampler")
    assert set(SPEED_INPUTS) <= set(prompt[sid]["inputs"])
    for name in SPEED_INPUTS:
        del prompt[sid]["inputs"][name]
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    assert "Mochi Sampler: 2 steps, 4 DiT passes run, 0 skipped" in comfy_host.log()


def test_fast_preset_teacache_and_stg_in_the_host(comfy_host, tiny_models) -> None:
    """preset fast runs 8 steps whatever the steps widget says; TeaCache + STG run and the log counts the passes;
    a bad stg_blocks text is refused when the prompt is queued."""
    prompt = small(json.loads((API_DIR / "mochi_text_to_video.json").read_text()), "fast")
    (sid,) = find_nodes(prompt, "MochiSampler")
    prompt = apply_overrides(prompt, preset="fast", teacache_threshold=0.09, stg_scale=1.0, stg_blocks="0")
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    ticks = [e["data"] for e in result.events if e.get("type") == "progress" and e["data"].get("node") == sid]
    assert ticks[-1]["max"] == 8
    line = next(ln for ln in comfy_host.log().splitlines()[::-1] if "Mochi Sampler: 8 steps" in ln)
    assert "DiT passes run" in line and "TeaCache C" in line
    bad = apply_overrides(prompt, stg_blocks="thirty-four")
    with pytest.raises(PromptRejected) as exc:
        comfy_host.client.run(bad, timeout=300)
    assert "stg_blocks='thirty-four'" in json.dumps(exc.value.body)
