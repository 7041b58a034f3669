"""Invalid inputs are refused with ``node_errors`` (or a clear execution error) and the server keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from comfy_client import PromptRejected
from headless import apply_overrides, find_nodes
from tiny_models import write_all

pytestmark = pytest.mark.host

API = Path(__file__).resolve().parents[2] / "workflows" / "api" / "mochi_text_to_video.json"


@pytest.fixture(scope="module")
def models(comfy_host) -> dict[str, Path]:
    return write_all(comfy_host.models_dir, readme=False)


@pytest.fixture()
def prompt() -> dict:
    return apply_overrides(
        json.loads(API.read_text()), frames=7, steps=1, width=32, height=32, filename_prefix="tests/errors"
    )


def node(prompt: dict, class_type: str) -> dict:
    (nid,) = find_nodes(prompt, class_type)
    return prompt[nid]


def rejected(comfy_host, prompt: dict) -> str:
    with pytest.raises(PromptRejected) as err:
        comfy_host.client.queue(prompt)
    assert err.value.body.get("node_errors"), err.value.body
    return json.dumps(err.value.body["node_errors"])


def test_frames_30_is_refused_naming_the_valid_counts(comfy_host, models, prompt) -> None:
    node(prompt, "MochiSampler")["inputs"]["frames"] = 30
    body = rejected(comfy_host, prompt)
    assert "frames=30" in body and "25 or 31" in body


def test_width_850_is_refused_naming_multiples_of_16(comfy_host, models, prompt) -> None:
    node(prompt, "MochiSampler")["inputs"]["width"] = 850
    body = rejected(comfy_host, prompt)
    assert "width=850" in body and "848 or 864" in body


def test_missing_model_file_is_refused(comfy_host, models, prompt) -> None:
    node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = "no_such_mochi_file.safetensors"
    body = rejected(comfy_host, prompt)
    assert "no_such_mochi_file.safetensors" in body and "models/diffusion_models" in body


def test_vae_file_in_dit_loader_is_refused(comfy_host, models, prompt) -> None:
    wrong = comfy_host.model_path("diffusion_models", "test_errors_vae_in_dit_folder.safetensors")
    shutil.copy(models["mochi_vae.safetensors"], wrong)
    node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = wrong.name
    body = rejected(comfy_host, prompt)
    assert "not a dit checkpoint" in body and "vae_decoder" in body and "VAE loader" in body


def test_t5_file_in_vae_loader_is_refused(comfy_host, models, prompt) -> None:
    wrong = comfy_host.model_path("vae", "test_errors_t5_in_vae_folder.safetensors")
    shutil.copy(models["t5xxl_fp16.safetensors"], wrong)
    node(prompt, "MochiVAELoader")["inputs"]["vae_name"] = wrong.name
    body = rejected(comfy_host, prompt)
    assert "t5" in body and "T5 loader" in body


def test_empty_prompt_list_is_refused(comfy_host, models, prompt) -> None:
    node_id = prompt[find_nodes(prompt, "MochiSampler")[0]]["inputs"]["positive"][0]
    prompt[node_id]["inputs"]["text"] = []
    rejected(comfy_host, prompt)


def test_denoise_without_latent_is_a_clear_execution_error(comfy_host, models, prompt) -> None:
    node(prompt, "MochiSampler")["inputs"]["denoise"] = 0.5
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "error"
    assert result.error["exception_type"].endswith("InvalidInputError")
    assert "denoise < 1 needs a latent" in result.error["exception_message"]


def test_server_keeps_serving_after_the_refusals(comfy_host, models, prompt) -> None:
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    assert comfy_host.alive()
