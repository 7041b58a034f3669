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
    """ComfyUI reads ``"text": []`` as a malformed link; the pack's own check says what the input must be."""
    node_id = prompt[find_nodes(prompt, "MochiSampler")[0]]["inputs"]["positive"][0]
    prompt[node_id]["inputs"]["text"] = []
    body = rejected(comfy_host, prompt)
    assert "text must be a prompt string" in body and "an empty list" in body, body


def test_batch_size_above_the_maximum_is_refused_by_the_pack(comfy_host, models, prompt) -> None:
    """``VALIDATE_INPUTS`` takes ``batch_size``, so ComfyUI skips its own max check: the pack must refuse it."""
    (sampler,) = find_nodes(prompt, "MochiSampler")
    prompt["90"] = {
        "class_type": "MochiEmptyLatent",
        "inputs": {"width": 32, "height": 32, "frames": 7, "batch_size": 65},
    }
    prompt[sampler]["inputs"]["latent"] = ["90", 0]
    body = rejected(comfy_host, prompt)
    assert "batch_size=65 is not allowed" in body and "from 1 to 64" in body, body


def test_linked_latent_size_is_accepted_and_checked_when_it_runs(comfy_host, models, prompt) -> None:
    """A linked width reaches ``VALIDATE_INPUTS`` as None: queued, then refused at run time with our message."""
    (sampler,) = find_nodes(prompt, "MochiSampler")
    prompt["91"] = {"class_type": "PrimitiveInt", "inputs": {"value": 40}}
    prompt["90"] = {
        "class_type": "MochiEmptyLatent",
        "inputs": {"width": ["91", 0], "height": 32, "frames": 7, "batch_size": 1},
    }
    prompt[sampler]["inputs"]["latent"] = ["90", 0]
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "error", result.status
    assert result.error["node_type"] == "MochiEmptyLatent"
    assert "width=40 is not allowed" in result.error["exception_message"], result.error
    prompt["91"]["inputs"]["value"] = 48
    ok = comfy_host.client.run(prompt, timeout=120)
    assert ok.status == "success", ok.error


def test_partly_valid_prompt_is_queued_not_reported_as_rejected(comfy_host, models, prompt) -> None:
    """ComfyUI answers 200 with non-empty node_errors when it queues the valid outputs and drops invalid ones: the
    client returns the prompt id (the valid output runs) and reports the dropped node."""
    (vae_loader,) = find_nodes(prompt, "MochiVAELoader")
    prompt["90"] = {
        "class_type": "MochiEmptyLatent",
        "inputs": {"width": 32, "height": 32, "frames": 30, "batch_size": 1},
    }
    prompt["91"] = {
        "class_type": "MochiVAEDecodeTiled",
        "inputs": {"vae": [vae_loader, 0], "samples": ["90", 0], "memory_budget_gb": 0.0},
    }
    prompt["92"] = {"class_type": "PreviewImage", "inputs": {"images": ["91", 0]}}
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    assert "90" in result.node_errors and "frames=30" in json.dumps(result.node_errors["90"])
    assert any(f["filename"].endswith(".mp4") for f in result.files()), result.outputs()


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


def test_nan_budget_on_the_dit_loader_is_refused_naming_the_input(comfy_host, models, prompt) -> None:
    """NaN passes ComfyUI's own range check (every comparison with NaN is false): the loader refuses it itself,
    before reading the file, instead of failing inside a conversion."""
    node(prompt, "MochiDiTLoader")["inputs"]["memory_budget_gb"] = float("nan")
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "error", result.status
    assert result.error["node_type"] == "MochiDiTLoader"
    message = result.error["exception_message"]
    assert "memory_budget_gb=nan is not allowed" in message and "from 0.0 to 1024.0" in message, message
    assert "cannot convert" not in message


def _decode_node(prompt: dict) -> dict:
    return node(prompt, "MochiVAEDecodeTiled")["inputs"]


def test_nan_budget_on_the_decode_is_refused_when_queued(comfy_host, models, prompt) -> None:
    _decode_node(prompt)["memory_budget_gb"] = float("nan")
    body = rejected(comfy_host, prompt)
    assert "memory_budget_gb=nan is not allowed: memory_budget_gb must be a number from 0.0 to 1024.0" in body, body


def test_tile_height_off_the_8_pixel_grid_is_refused_naming_the_nearest(comfy_host, models, prompt) -> None:
    _decode_node(prompt)["tile_height"] = 12
    body = rejected(comfy_host, prompt)
    assert "tile_height=12 is not allowed: tile_height must be a multiple of 8 pixels" in body, body
    assert "nearest valid: 8 or 16" in body, body


def test_messages_name_model_files_relative_to_the_model_folders(comfy_host, models, prompt) -> None:
    """A link to a file that no longer exists, and a truncated download in a subfolder: the messages name the files
    as ``models/<folder>/...``; the server's absolute paths stay on the server."""
    dangling = comfy_host.model_path("diffusion_models", "test_errors_dangling.safetensors")
    truncated = comfy_host.model_path("vae", "sub/test_errors_truncated_vae.safetensors")
    try:
        dangling.symlink_to(comfy_host.base_dir / "no_such_target.safetensors")
        node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = dangling.name
        body = rejected(comfy_host, prompt)
        assert "test_errors_dangling.safetensors" in body and "models/diffusion_models" in body, body
        assert str(comfy_host.base_dir) not in body and str(comfy_host.models_dir) not in body, body

        data = models["mochi_vae.safetensors"].read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = "mochi_preview_fp8_scaled.safetensors"
        node(prompt, "MochiVAELoader")["inputs"]["vae_name"] = "sub/test_errors_truncated_vae.safetensors"
        body = rejected(comfy_host, prompt)
        assert "test_errors_truncated_vae.safetensors" in body and "truncated" in body, body
        assert str(comfy_host.base_dir) not in body, body
    finally:
        dangling.unlink(missing_ok=True)
        truncated.unlink(missing_ok=True)


def test_nan_weight_in_the_dit_file_is_named_at_the_first_step(comfy_host, models, prompt) -> None:
    """A DiT file with a NaN-filled tensor loads (its weights stay memory-mapped) and fails at the first sampling
    step with a message naming the file (relative: no server path) and the tensor; the next prompt runs."""
    import torch
    from safetensors.torch import load_file, save_file

    damaged = comfy_host.model_path("diffusion_models", "test_errors_nan_dit.safetensors")
    sd = load_file(str(models["mochi_preview_bf16.safetensors"]))
    key = "model.diffusion_model.blocks.1.mlp_x.w2.weight"
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_file(sd, str(damaged))
    node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = damaged.name
    result = comfy_host.client.run(prompt, timeout=120)
    assert result.status == "error", result.status
    assert result.error["node_type"] == "MochiSampler", result.error
    msg = result.error["exception_message"]
    assert f"{damaged.name}, tensor {key}" in msg and "NaN" in msg, msg
    assert str(comfy_host.models_dir) not in msg, msg
    node(prompt, "MochiDiTLoader")["inputs"]["dit_name"] = "mochi_preview_bf16.safetensors"
    ok = comfy_host.client.run(prompt, timeout=120)
    assert ok.status == "success", ok.error
