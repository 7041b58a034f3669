"""The Mochi LoRA node without ComfyUI: chaining, the cached base model left as loaded, refusals naming the file.

Outside ComfyUI the file inputs take paths (``nodes.host.full_path``); the real-host run of the shipped LoRA workflow
is in ``tests/host/test_lora_host.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from nodes.lora import MochiLoRA  # noqa: E402

SIZE = {"width": 32, "height": 32, "frames": 7, "steps": 2, "cfg": 4.5, "seed": 3, "threshold_noise": 0.025}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, t5_tokenizer_dir: Path) -> dict:
    from tiny_models import LORA_FILE, write_all

    from mochi_core.testing.lora import write_lora

    d = tmp_path_factory.mktemp("models")
    files = write_all(d, readme=False, which=("dit", "t5", "lora"))
    files["diffusers"] = write_lora(d / "loras" / "pytorch_lora_weights.safetensors", "diffusers", seed=9, std=0.2)
    dit = NODE_CLASS_MAPPINGS["MochiDiTLoader"]().load(
        str(files["mochi_preview_fp8_scaled.safetensors"]), "default", "sdpa", "auto", 0.0
    )[0]
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(
        str(files["t5xxl_fp16.safetensors"]), "default", "fp32", str(t5_tokenizer_dir)
    )[0]
    enc = NODE_CLASS_MAPPINGS["MochiTextEncode"]()
    return {
        "dit": dit,
        "lora": str(files[LORA_FILE]),
        "diffusers": str(files["diffusers"]),
        "pos": enc.encode(t5, "a red fox")[0],
        "neg": enc.encode(t5, "")[0],
        "dir": d,
    }


def _sample(tiny: dict, model: object) -> torch.Tensor:
    return NODE_CLASS_MAPPINGS["MochiSampler"]().sample(model, tiny["pos"], tiny["neg"], linear_steps=0, **SIZE)[0][
        "samples"
    ]


def test_chained_loras_change_the_video_and_leave_the_base_model_alone(tiny: dict) -> None:
    base_handle = tiny["dit"]
    weights = {k: v.clone() for k, v in base_handle.model.state_dict().items()}
    base = _sample(tiny, base_handle)
    one = MochiLoRA().apply(base_handle, tiny["lora"], 1.0)[0]
    two = MochiLoRA().apply(one, tiny["diffusers"], -0.5)[0]
    assert base_handle.loras == () and len(one.loras) == 1 and [s for _, s in two.loras] == [1.0, -0.5]
    assert one.model is base_handle.model  # the same cached model, never a copy
    with_one, with_two = _sample(tiny, one), _sample(tiny, two)
    assert not torch.equal(with_one, base) and not torch.equal(with_two, with_one)
    # a graph without the LoRA, run after the ones with it, samples the base model bit for bit
    assert torch.equal(_sample(tiny, base_handle), base)
    assert not any(name.endswith(".lora") for name, _ in base_handle.model.named_modules())
    for key, value in base_handle.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # strength 0 is the base model too
    assert torch.equal(_sample(tiny, MochiLoRA().apply(base_handle, tiny["lora"], 0.0)[0]), base)


def test_queue_time_refusals_name_the_file(tiny: dict, tmp_path: Path) -> None:
    assert MochiLoRA.VALIDATE_INPUTS(tiny["lora"], 1.0) is True
    assert MochiLoRA.VALIDATE_INPUTS(None, 1.0) is True  # linked: checked when the node runs
    pickle = tmp_path / "my_lora.pt"
    torch.save({"a": torch.zeros(1)}, pickle)
    assert "my_lora.pt" in MochiLoRA.VALIDATE_INPUTS(str(pickle), 1.0)
    sd = tmp_path / "sd15_style.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(sd))
    msg = MochiLoRA.VALIDATE_INPUTS(str(sd), 1.0)
    assert "sd15_style.safetensors" in msg and "another model" in msg
    dit_file = tiny["dir"] / "diffusion_models" / "mochi_preview_fp8_scaled.safetensors"
    assert "not a LoRA file" in MochiLoRA.VALIDATE_INPUTS(str(dit_file), 1.0)
    assert "strength=11.0 is not allowed" in MochiLoRA.VALIDATE_INPUTS(tiny["lora"], 11.0)


def test_lora_for_another_width_is_refused_when_the_node_runs(tiny: dict, tmp_path: Path) -> None:
    from mochi_core.errors import InvalidInputError

    tensors = load_file(tiny["lora"])
    tensors["blocks.0.attn.proj_x.lora_A"] = torch.zeros(4, 3072, dtype=torch.bfloat16)
    wide = tmp_path / "full_size.lora.safetensors"
    save_file(tensors, str(wide))
    with pytest.raises(InvalidInputError, match=r"full_size\.lora\.safetensors: shapes do not fit layer "):
        MochiLoRA().apply(tiny["dit"], str(wide), 1.0)
    assert tiny["dit"].loras == ()


def test_sampling_plan_counts_the_chain_s_loras(tiny: dict) -> None:
    """The sampler's placement plan counts the LoRA factors in the DiT's weights (they are applied before placement
    and stream with their blocks); the bytes are what applying them adds to the model."""
    from mochi_core.memory.streaming import block_nbytes
    from nodes.lora import lora_scope
    from nodes.placement import plan_sampling

    def sampling_weights(handle: object) -> int:
        job = plan_sampling(handle, (1, 12, 2, 4, 4), torch.device("cpu"), memory="auto", budget_bytes=0, cfg_pass=True)
        return job.plan.phase("sampling").weights_bytes

    handle = MochiLoRA().apply(tiny["dit"], tiny["lora"], 1.0)[0]
    before = block_nbytes(handle.model)
    with lora_scope(handle):
        applied = block_nbytes(handle.model) - before
    assert applied > 0
    assert sampling_weights(handle) - sampling_weights(tiny["dit"]) == applied
    assert block_nbytes(handle.model) == before
