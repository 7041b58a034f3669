"""Every published DiT layout (docs/formats.md), written as real files from the golden tiny weights, loads
through ``load_dit`` and gives the official layout's outputs.

Two checks per format:
1. exact loading: the output equals (1e-5) that of the official-format model built from the same *stored*
   values (weights rounded to bf16 / fp8·scale / Q8_0 / Q4_0 and expanded back to fp32 independently here);
2. quantization error vs the exact fp32 weights, with the bound stated per format (measured on this tiny model:
   bf16 ~6e-3, Kijai fp8 ~4e-2, scaled fp8 ~8e-2, Q8_0 ~8e-3, Q4_0 ~0.14; output scale ~1.8).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit, ops
from mochi_core.testing.dit import DIT_FORMATS, write_dit
from tests.numerics import TINY_DIT_TOL

QUANT_BOUND = {
    "official": 0.0,
    "diffusers": 0.0,
    "diffusers_sharded": 0.0,
    "comfy_bf16": 0.02,
    "kijai_bf16": 0.02,
    "gguf_q8_0": 0.03,
    "kijai_fp8": 0.12,
    "comfy_scaled_fp8": 0.2,
    "comfy_all_in_one": 0.2,
    "gguf_q4_0": 0.4,
}
EXPECTED_LAYOUT = {"diffusers_sharded": "diffusers"}


def _stored_values(fmt: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each layout stores, expanded back to fp32 (independent of the loader)."""
    out = {}
    for k, v in sd.items():
        linear = k.endswith(".weight") and v.dim() == 2
        if fmt in ("comfy_bf16",) or (fmt == "kijai_bf16" and k != "pos_frequencies" and "_norm_" not in k):
            v = v.to(torch.bfloat16).float()
        elif fmt in ("comfy_scaled_fp8", "comfy_all_in_one"):
            if linear:
                q, s = ops.quantize_scaled_fp8(v)
                v = q.float() * s
            else:
                v = v.to(torch.bfloat16).float()
        elif fmt == "kijai_fp8" and linear and k.startswith("blocks."):
            v = v.to(torch.float8_e4m3fn).float()
        elif fmt.startswith("gguf") and linear and k.startswith("blocks.") and v.shape[1] % 32 == 0:
            if fmt == "gguf_q8_0":
                v = ops.dequantize_q8_0(ops.quantize_q8_0(v), tuple(v.shape))
            else:
                v = ops.dequantize_q4_0(ops.quantize_q4_0(v), tuple(v.shape))
        out[k] = v
    return out


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "sd": load_file(str(golden_dir / "dit_tiny.safetensors")),
        "cases": load_file(str(golden_dir / "dit_tiny_cases.safetensors")),
    }


def _forward(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*(cases[f"case_c_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")))


def _target(tmp: Path, fmt: str) -> Path:
    return tmp / (fmt if fmt.startswith("diffusers") else f"{fmt}.safetensors")


@pytest.mark.numerics
@pytest.mark.parametrize("fmt", DIT_FORMATS)
def test_format_round_trip(tmp_path: Path, golden, fmt: str) -> None:
    sd, cases = golden["sd"], golden["cases"]
    model = load_dit(write_dit(_target(tmp_path, fmt), fmt, sd))
    assert model.checkpoint_format == EXPECTED_LAYOUT.get(fmt, fmt)
    assert model.config == load_dit(write_dit(tmp_path / "ref.safetensors", "official", sd)).config
    out = _forward(model, cases)
    exact = load_dit(write_dit(tmp_path / "stored.safetensors", "official", _stored_values(fmt, sd)))
    assert (out - _forward(exact, cases)).abs().max().item() <= TINY_DIT_TOL  # same values, other buffers
    err = (out - cases["case_c_out"]).abs().max().item()
    assert err <= QUANT_BOUND[fmt] + TINY_DIT_TOL, f"{fmt}: {err:.3e}"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("comfy_scaled_fp8", {"scaled_fp8", "plain"}),  # plain: the Conv2d patch embedding
        ("gguf_q8_0", {"q8_0", "plain"}),
        ("gguf_q4_0", {"q4_0", "plain"}),
        ("kijai_fp8", {"plain"}),
    ],
)
def test_weights_stay_in_their_storage_format(tmp_path: Path, golden, fmt: str, expected: set[str]) -> None:
    model = load_dit(write_dit(_target(tmp_path, fmt), fmt, golden["sd"]))
    formats = {m.weight_format for _, m in ops.cast_modules(model)}
    assert formats == expected
    qkv = model.blocks[0].attn.qkv_x
    if fmt == "comfy_scaled_fp8":
        assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.weight_format == "scaled_fp8"
    elif fmt.startswith("gguf"):
        assert qkv.weight.dtype == torch.uint8 and qkv.weight_shape == (288, 96)
        # the 48-wide text input is not a multiple of 32: kept as float, as in Kijai's files
        assert model.blocks[0].attn.qkv_y.weight_format == "plain"
    else:
        assert qkv.weight.dtype == torch.float8_e4m3fn
    if fmt != "comfy_scaled_fp8":  # Comfy's file stores the non-Linear tensors in bf16: kept as stored
        assert model.pos_frequencies.dtype == torch.float32


def test_scaled_fp8_scales_are_applied(tmp_path: Path, golden) -> None:
    """Ignoring scale_weight (Kijai's loader on Comfy's file: 'pink noise') would be far off; we apply it."""
    sd, cases = golden["sd"], golden["cases"]
    path = write_dit(tmp_path / "s.safetensors", "comfy_scaled_fp8", sd)
    good = (_forward(load_dit(path), cases) - cases["case_c_out"]).abs().max().item()
    raw = {k: v for k, v in load_file(str(path)).items() if not k.endswith((".scale_weight", "scaled_fp8"))}
    from safetensors.torch import save_file

    save_file(raw, str(tmp_path / "noscale.safetensors"))
    bad = (_forward(load_dit(tmp_path / "noscale.safetensors"), cases) - cases["case_c_out"]).abs().max().item()
    assert good < 0.2 < bad


@pytest.mark.parametrize(
    ("storage", "weight_dtype", "fmt", "bound"),
    [
        ("bf16", torch.bfloat16, "plain", 0.02),
        ("fp8_e4m3fn", torch.float8_e4m3fn, "scaled_fp8", 0.2),
        ("q8_0", torch.uint8, "q8_0", 0.03),
        ("q4_0", torch.uint8, "q4_0", 0.4),
    ],
)
def test_storage_conversion(tmp_path: Path, golden, storage: str, weight_dtype, fmt: str, bound: float) -> None:
    sd, cases = golden["sd"], golden["cases"]
    model = load_dit(write_dit(tmp_path / "o.safetensors", "official", sd), storage_dtype=storage)
    w1 = model.blocks[0].mlp_x.w1
    assert w1.weight.dtype == weight_dtype and w1.weight_format == fmt
    # skip list stays high precision
    assert model.x_embedder.proj.weight.dtype == torch.float32
    assert model.final_layer.linear.weight.dtype == torch.float32
    assert model.blocks[0].attn.q_norm_x.weight.dtype == torch.float32
    err = (_forward(model, cases) - cases["case_c_out"]).abs().max().item()
    assert 0 < err <= bound


def test_quantized_file_to_bf16_storage(tmp_path: Path, golden) -> None:
    sd, cases = golden["sd"], golden["cases"]
    path = write_dit(tmp_path / "q.safetensors", "gguf_q8_0", sd)
    model = load_dit(path, storage_dtype="bf16")
    assert model.blocks[0].attn.qkv_x.weight.dtype == torch.bfloat16
    ref = _forward(load_dit(path), cases)
    assert (_forward(model, cases) - ref).abs().max().item() <= 0.02


def test_compute_dtype_bf16_runs_and_returns_float32(tmp_path: Path, golden) -> None:
    sd, cases = golden["sd"], golden["cases"]
    model = load_dit(write_dit(tmp_path / "b.safetensors", "comfy_bf16", sd), dtype="bf16")
    assert model.compute_dtype == torch.bfloat16
    out = _forward(model, cases)
    assert out.dtype == torch.float32
    assert (out - cases["case_c_out"]).abs().max().item() <= 0.1


@pytest.mark.numerics
def test_diffusers_pipeline_folder_uses_transformer_subfolder(tmp_path: Path, golden) -> None:
    pipe = tmp_path / "mochi-1-preview"
    write_dit(pipe / "transformer", "diffusers_sharded", golden["sd"])
    (pipe / "model_index.json").write_text("{}")
    model = load_dit(pipe)
    assert model.checkpoint_format == "diffusers"
    assert (_forward(model, golden["cases"]) - golden["cases"]["case_c_out"]).abs().max().item() <= TINY_DIT_TOL


def test_storage_kept_as_stored_by_default(tmp_path: Path, golden) -> None:
    model = load_dit(write_dit(tmp_path / "b.safetensors", "comfy_bf16", golden["sd"]))
    assert model.blocks[0].mlp_x.w1.weight.dtype == torch.bfloat16
    assert model.x_embedder.proj.weight.dtype == torch.bfloat16  # not upcast: no second copy in fp32
    assert model.compute_dtype == torch.float32
