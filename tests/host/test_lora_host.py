"""The LoRA workflow in the real ComfyUI: a graph without the LoRA, queued after one with it, samples the base model.

The shipped ``mochi_text_to_video_lora`` workflow itself renders in ``test_workflows.py`` (every API workflow runs
there on the tiny models, the LoRA under its published name ``loras/model_2000.lora.safetensors``). Here the
sampler's latent is saved with core ``SaveLatent`` and compared bit for bit: base graph, LoRA graph, base graph
again. Both graphs load the same DiT file with the same options, so they share the DiT loader's cached model: the
LoRA graph must not leave it changed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from comfy_client import PromptRejected
from headless import apply_overrides, find_nodes
from safetensors.torch import load
from tiny_models import write_all

from mochi_core.sampling import linear_quadratic_schedule

pytestmark = pytest.mark.host

API_DIR = Path(__file__).resolve().parents[2] / "workflows" / "api"
SEED = 90210  # used by no other host test, so the first base run really samples


@pytest.fixture(scope="module")
def tiny_models(comfy_host) -> dict[str, Path]:
    return write_all(comfy_host.models_dir, readme=False)


def _graph(name: str, prefix: str, linear_steps: int) -> dict:
    prompt = apply_overrides(
        json.loads((API_DIR / f"{name}.json").read_text()),
        seed=SEED,
        frames=7,
        steps=2,
        width=32,
        height=32,
        filename_prefix=f"tests/{prefix}",
    )
    (sid,) = find_nodes(prompt, "MochiSampler")
    prompt[sid]["inputs"]["linear_steps"] = linear_steps
    prompt["99"] = {"class_type": "SaveLatent", "inputs": {"samples": [sid, 0], "filename_prefix": f"tests/{prefix}"}}
    return prompt


def _latent(comfy_host, prompt: dict) -> torch.Tensor:
    result = comfy_host.client.run(prompt, timeout=300)
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    (f,) = [f for f in result.files() if f["filename"].endswith(".latent")]
    return load(io.BytesIO(comfy_host.client.view(**f)).getvalue())["latent_tensor"]


def test_graph_without_lora_after_one_with_it_gives_the_base_output(comfy_host, tiny_models) -> None:
    # linear_steps 1 and 0 (= steps // 2 = 1) give the same schedule; the different value makes ComfyUI run the
    # sampler again for the second base graph instead of serving its cached output
    assert linear_quadratic_schedule(2, linear_steps=1) == linear_quadratic_schedule(2, linear_steps=None)
    base_before = _latent(comfy_host, _graph("mochi_text_to_video", "lora_base_1", 1))
    with_lora = _latent(comfy_host, _graph("mochi_text_to_video_lora", "lora_on", 0))
    base_after = _latent(comfy_host, _graph("mochi_text_to_video", "lora_base_2", 0))
    assert with_lora.shape == base_before.shape
    assert (with_lora - base_before).abs().max().item() > 1e-3  # the LoRA acts
    assert torch.equal(base_after, base_before)  # the cached base model was left as loaded
    assert "LoRA model_2000.lora.safetensors at strength 1" in comfy_host.log()
    assert comfy_host.alive()


def test_other_models_lora_is_refused_at_queue_time(comfy_host, tiny_models) -> None:
    from safetensors.torch import save_file

    bad = comfy_host.models_dir / "loras" / "flux_style_lora.safetensors"
    base = "transformer.single_transformer_blocks.0.attn.to_q"
    save_file({f"{base}.lora_A.weight": torch.zeros(4, 64), f"{base}.lora_B.weight": torch.zeros(64, 4)}, str(bad))
    prompt = _graph("mochi_text_to_video_lora", "lora_bad", 0)
    (lid,) = find_nodes(prompt, "MochiLoRA")
    prompt[lid]["inputs"]["lora_name"] = bad.name
    with pytest.raises(PromptRejected) as err:
        comfy_host.client.queue(prompt)
    text = json.dumps(err.value.body.get("node_errors"))
    assert "flux_style_lora.safetensors" in text and "LoRA for another model" in text
    assert comfy_host.alive()
