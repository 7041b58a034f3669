"""``load_dit`` refuses what it cannot load, with a message that names what it found (never a torch trace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import load_dit
from mochi_core.errors import InvalidInputError, MissingBackendError, UnsupportedCheckpointError
from mochi_core.testing.dit import write_dit, write_t5_like, write_vae_like


@pytest.fixture(scope="module")
def sd(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "dit_tiny.safetensors"))


def test_vae_file_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCheckpointError, match=r"not a dit checkpoint.*vae_decoder.*load_vae"):
        load_dit(write_vae_like(tmp_path / "vae.safetensors"))


def test_t5_file_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCheckpointError, match=r"not a dit checkpoint.*t5.*load_text_encoder"):
        load_dit(write_t5_like(tmp_path / "t5.safetensors"))


def test_unknown_layout_refused(tmp_path: Path) -> None:
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match=r"unknown checkpoint layout.*('foo\.weight'|'bar\.bias')"):
        load_dit(tmp_path / "x.safetensors")


def test_truncated_file_refused(tmp_path: Path, sd) -> None:
    path = write_dit(tmp_path / "t.safetensors", "official", sd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UnsupportedCheckpointError, match="truncated"):
        load_dit(path)


@pytest.mark.parametrize("name", ["dit.pt", "dit.ckpt", "dit_pickle.safetensors"])
def test_pickle_refused_and_never_unpickled(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Trap()}, tmp_path / name)
    with pytest.raises(UnsupportedCheckpointError, match="pickle"):
        load_dit(tmp_path / name)
    assert not marker.exists()


def test_missing_tensor_refused(tmp_path: Path, sd) -> None:
    broken = {k: v for k, v in sd.items() if k != "blocks.0.attn.proj_x.bias"}
    with pytest.raises(
        UnsupportedCheckpointError, match=r"inconsistent with any Mochi DiT.*blocks\.0\.attn\.proj_x\.bias"
    ):
        load_dit(write_dit(tmp_path / "m.safetensors", "official", broken))


def test_inconsistent_shapes_refused(tmp_path: Path, sd) -> None:
    broken = dict(sd)
    broken["blocks.1.mlp_x.w1.weight"] = torch.zeros(384, 96)  # block 0 says MLP width 256
    with pytest.raises(UnsupportedCheckpointError, match=r"wrong shapes.*blocks\.1\.mlp_x\.w1\.weight \[384, 96\]"):
        load_dit(write_dit(tmp_path / "s.safetensors", "official", broken))


def test_heads_inconsistent_with_width_refused(tmp_path: Path, sd) -> None:
    broken = dict(sd)
    broken["pos_frequencies"] = torch.zeros(3, 3, 24)
    with pytest.raises(UnsupportedCheckpointError, match=r"3 heads of 48.*visual width 96"):
        load_dit(write_dit(tmp_path / "h.safetensors", "official", broken))


def test_missing_block_refused(tmp_path: Path, sd) -> None:
    broken = {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(UnsupportedCheckpointError, match=r"blocks \[0\] are missing"):
        load_dit(write_dit(tmp_path / "b.safetensors", "official", broken))


def test_bad_options_refused(tmp_path: Path, sd) -> None:
    path = write_dit(tmp_path / "o.safetensors", "official", sd)
    with pytest.raises(InvalidInputError, match="allowed: sdpa, flash, sage"):
        load_dit(path, attention="xformers")
    with pytest.raises(InvalidInputError, match="storage_dtype.*q8_0"):
        load_dit(path, storage_dtype="int4")
    with pytest.raises(InvalidInputError, match="compute dtype"):
        load_dit(path, dtype="fp8_e4m3fn")


@pytest.mark.parametrize(("backend", "package"), [("flash", "flash-attn"), ("sage", "sageattention")])
def test_missing_backend_names_package(tmp_path: Path, sd, backend: str, package: str) -> None:
    import importlib.util

    module = {"flash": "flash_attn", "sage": "sageattention"}[backend]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"checks the message when {module} is missing; runs on machines without it (as here)")
    with pytest.raises(MissingBackendError, match=f"pip install {package}"):
        load_dit(write_dit(tmp_path / "o.safetensors", "official", sd), attention=backend)


def test_two_file_keys_for_one_tensor_refused(tmp_path: Path, sd) -> None:
    """A file holding both a GGUF and a plain copy of one layer is refused, not silently resolved (last one wins)."""
    path = write_dit(tmp_path / "q.safetensors", "gguf_q8_0", sd)
    mixed = load_file(str(path))
    mixed["blocks.0.attn.qkv_x.weight"] = sd["blocks.0.attn.qkv_x.weight"]
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(
        UnsupportedCheckpointError,
        match=r"('blocks\.0\.attn\.qkv_x\.weight' and 'blocks\.0\.attn\.qkv_x\.Q8_0_qweight'"
        r"|'blocks\.0\.attn\.qkv_x\.Q8_0_qweight' and 'blocks\.0\.attn\.qkv_x\.weight')"
        r" both give the DiT tensor 'blocks\.0\.attn\.qkv_x\.weight'",
    ):
        load_dit(tmp_path / "mixed.safetensors")


def test_two_diffusers_names_for_one_tensor_refused(tmp_path: Path, sd) -> None:
    """diffusers' norm1_context.linear and .linear_1 both map to mod_y: a file with both is refused."""
    folder = write_dit(tmp_path / "d", "diffusers", sd)
    file = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    tensors["transformer_blocks.0.norm1_context.linear_1.bias"] = tensors[
        "transformer_blocks.0.norm1_context.linear.bias"
    ].clone()
    save_file(tensors, str(file))
    with pytest.raises(UnsupportedCheckpointError, match=r"both give the DiT tensor 'blocks\.0\.mod_y\.bias'"):
        load_dit(folder)


def test_non_scalar_scale_weight_refused(tmp_path: Path, sd) -> None:
    path = write_dit(tmp_path / "s.safetensors", "comfy_scaled_fp8", sd)
    tensors = load_file(str(path))
    key = "model.diffusion_model.blocks.0.mlp_x.w1.scale_weight"
    tensors[key] = torch.ones(4)
    save_file(tensors, str(path))
    with pytest.raises(
        UnsupportedCheckpointError,
        match=r"'model\.diffusion_model\.blocks\.0\.mlp_x\.w1\.scale_weight' must be a single",
    ):
        load_dit(path)


@pytest.mark.parametrize("device", ["gpu", "GPU:0", "tpu", "cuda:x"])
def test_unknown_device_refused_before_loading(tmp_path: Path, device: str) -> None:
    # the path does not exist: the device is checked first
    with pytest.raises(InvalidInputError, match=rf"device='{re.escape(device)}' is not a device.*allowed: cpu"):
        load_dit(tmp_path / "none.safetensors", device=device)


def test_cuda_without_cuda_refused(tmp_path: Path, sd, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dit(tmp_path / "o.safetensors", "official", sd)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(InvalidInputError, match=r"device='cuda(:0)?' but CUDA is not available.*allowed: cpu"):
            load_dit(path, device=device)
