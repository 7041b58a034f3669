"""A NaN or inf in a weight file is found at load or at the weight's first use, and the message names the file and
the tensor; every model goes through its real loader from a real safetensors file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import finite, load_dit, load_text_encoder, load_vae, ops
from mochi_core.errors import NonFiniteWeightError, UnsupportedCheckpointError
from mochi_core.testing.dit import COMFY_PREFIX, write_dit
from mochi_core.testing.t5 import write_t5
from mochi_core.testing.vae import random_decoder_state_dict, random_encoder_state_dict, write_comfy_vae

LINEAR = "blocks.0.mlp_x.w1.weight"  # a cast-on-use weight: checked at its first use
NORM = "blocks.1.attn.q_norm_x.weight"  # a small high-precision tensor: checked at load


def _poison(path: Path, key: str, value: float = float("nan"), index: int = 3) -> None:
    """Rewrite ``path`` with one value of ``key`` replaced (through float32 for fp8 tensors)."""
    sd = load_file(str(path))
    t = sd[key].to(torch.float32) if sd[key].dtype.itemsize == 1 else sd[key].clone()
    t.view(-1)[index] = value
    sd[key] = t.to(sd[key].dtype)
    save_file(sd, str(path))


def _forward(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(
            torch.randn(1, 12, 1, 4, 6), torch.full((1,), 0.5), torch.randn(1, 16, 32), torch.ones(1, 16).bool()
        )


@pytest.mark.parametrize(
    "fmt, prefix",
    [("official", ""), ("comfy_bf16", COMFY_PREFIX), ("comfy_scaled_fp8", COMFY_PREFIX), ("kijai_fp8", "")],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_dit_linear_weight_is_caught_at_first_use_naming_file_and_tensor(
    tmp_path: Path, fmt: str, prefix: str, value: float
) -> None:
    path = write_dit(tmp_path / f"damaged_{fmt}.safetensors", fmt)
    if "fp8" in fmt:
        value = float("nan")  # e4m3fn has no inf (torch's cast saturates it): NaN is its only non-finite value
    _poison(path, prefix + LINEAR, value)
    model = load_dit(path)  # cast-on-use weights stay as stored (memory-mapped): not read at load
    with pytest.raises(NonFiniteWeightError) as err:
        _forward(model)
    msg = str(err.value)
    assert path.name in msg and prefix + LINEAR in msg and str(tmp_path) not in msg, msg
    assert "1 NaN" in msg or "1 infinite" in msg, msg


def test_dit_small_tensor_and_fp8_scale_are_caught_at_load(tmp_path: Path) -> None:
    path = write_dit(tmp_path / "norm.safetensors", "official")
    _poison(path, NORM)
    with pytest.raises(NonFiniteWeightError, match=rf"norm\.safetensors, tensor {NORM}"):
        load_dit(path)
    path = write_dit(tmp_path / "scale.safetensors", "comfy_scaled_fp8")
    scale_key = COMFY_PREFIX + LINEAR.replace(".weight", ".scale_weight")
    _poison(path, scale_key, index=0)
    with pytest.raises(NonFiniteWeightError, match="scale_weight"):
        load_dit(path)


def test_dit_converted_storage_is_caught(tmp_path: Path) -> None:
    """Converted at load to fp8 (a per-tensor scale from the values) or Q8_0: the NaN is still found and named."""
    path = write_dit(tmp_path / "conv.safetensors", "official")
    _poison(path, LINEAR)
    with pytest.raises(NonFiniteWeightError, match=LINEAR):
        load_dit(path, storage_dtype="fp8_e4m3fn")
    with pytest.raises(NonFiniteWeightError, match=LINEAR):
        _forward(load_dit(path, storage_dtype="q8_0"))


def test_gguf_block_scale_is_caught(tmp_path: Path) -> None:
    path = write_dit(tmp_path / "q8.safetensors", "gguf_q8_0")
    key = LINEAR.replace(".weight", ".Q8_0_qweight")
    sd = load_file(str(path))
    raw = sd[key].clone()
    raw[0, 0:2] = torch.tensor([float("nan")], dtype=torch.float16).view(torch.uint8)  # first block's fp16 scale
    sd[key] = raw
    save_file(sd, str(path))
    with pytest.raises(NonFiniteWeightError, match=rf"q8\.safetensors, tensor {key}"):
        _forward(load_dit(path))


def test_each_weight_is_checked_once_without_a_sync_per_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first forward computes one finiteness flag per weight on the compute device and reads them all at the end
    (one host sync for the model, none inside blocks); later forwards compute none."""
    model = load_dit(write_dit(tmp_path / "ok.safetensors", "comfy_scaled_fp8"))
    calls: list[int] = []
    real = ops.finite_flag
    monkeypatch.setattr(ops, "finite_flag", lambda t: calls.append(t.numel()) or real(t))
    _forward(model)
    first = len(calls)
    assert first == sum(1 for _ in ops.cast_modules(model))
    assert all(m.weight_checked and m.weight_finite is None for _, m in ops.cast_modules(model))
    _forward(model)
    assert len(calls) == first


def test_t5_linear_and_embedding(tmp_path: Path, t5_tokenizer_dir: Path) -> None:
    path = write_t5(tmp_path / "t5_damaged.safetensors", "fp16")
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    _poison(path, key)
    enc = load_text_encoder(path, tokenizer=t5_tokenizer_dir)
    with pytest.raises(NonFiniteWeightError, match=rf"t5_damaged\.safetensors, tensor {key}"):
        enc.encode(["a fox"])
    path = write_t5(tmp_path / "t5_embed.safetensors", "fp16")
    _poison(path, "shared.weight", float("inf"))
    with pytest.raises(NonFiniteWeightError, match=r"t5_embed\.safetensors, tensor shared\.weight"):
        load_text_encoder(path, tokenizer=t5_tokenizer_dir)


def test_vae_is_checked_whole_at_load(tmp_path: Path) -> None:
    path = write_comfy_vae(
        tmp_path / "vae_damaged.safetensors", random_decoder_state_dict(), random_encoder_state_dict()
    )
    key = next(k for k in load_file(str(path)) if k.startswith("decoder.") and k.endswith(".weight"))
    _poison(path, key, index=0)
    with pytest.raises(NonFiniteWeightError, match=rf"vae_damaged\.safetensors, tensor {key}") as err:
        load_vae(path)
    assert isinstance(err.value, UnsupportedCheckpointError)  # the loaders' error family


def test_generate_names_the_dit_file_before_decoding(tmp_path: Path, t5_tokenizer_dir: Path, monkeypatch) -> None:
    import mochi_core
    from mochi_core.vae.loader import VAE

    dit = write_dit(tmp_path / "dit_nan.safetensors", "comfy_bf16")
    _poison(dit, COMFY_PREFIX + "blocks.1.mlp_x.w2.weight")
    decoded: list[bool] = []
    real_decode = VAE.decode
    monkeypatch.setattr(VAE, "decode", lambda self, *a, **k: decoded.append(True) or real_decode(self, *a, **k))
    with pytest.raises(NonFiniteWeightError, match=r"dit_nan\.safetensors, tensor model\.diffusion_model\.blocks\.1"):
        mochi_core.generate(
            "a fox",
            dit=dit,
            vae=write_comfy_vae(tmp_path / "vae.safetensors", random_decoder_state_dict(), random_encoder_state_dict()),
            text_encoder=write_t5(tmp_path / "t5.safetensors", "fp16"),
            tokenizer=t5_tokenizer_dir,
            width=32,
            height=32,
            frames=7,
            steps=2,
        )
    assert not decoded


def test_fp8_values_and_overflowing_sums() -> None:
    """fp8 tensors are checked through a wider dtype; a finite tensor whose float32 sum overflows is not refused."""
    t = torch.zeros(8, dtype=torch.float8_e4m3fn)
    finite.check_finite(t, "x")
    t[2] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="x holds 1 NaN"):
        finite.check_finite(t, "x")
    finite.check_finite(torch.full((4,), 3e38), "big")
