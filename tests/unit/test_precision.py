"""The one precision policy (mochi_core.precision) and where the DiT applies it: compute-dtype validation and
default, fp8 never for biases, scales applied in fp32."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit, ops, precision
from mochi_core.errors import InvalidInputError
from mochi_core.testing.dit import write_dit

# ------------------------------------------------------------------ compute dtype


@pytest.mark.parametrize(
    ("value", "expected"),
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)],
)
def test_check_compute_dtype_accepts(value, expected) -> None:
    assert precision.check_compute_dtype("dtype", value) == expected


@pytest.mark.parametrize("value", ["fp8_e4m3fn", torch.float8_e5m2, "int8", torch.float64, "q8_0"])
def test_check_compute_dtype_refuses_naming_the_argument(value) -> None:
    with pytest.raises(
        InvalidInputError, match=r"^compute_dtype=.* cannot be a compute dtype.*allowed: fp32, bf16, fp16"
    ):
        precision.check_compute_dtype("compute_dtype", value)


def test_check_compute_dtype_restricted_set() -> None:
    """T5 forbids fp16 (it overflows): the same function, a narrower ``allowed``."""
    with pytest.raises(InvalidInputError, match=r"t5_dtype=fp16 cannot be a compute dtype; allowed: fp32, bf16 or"):
        precision.check_compute_dtype("t5_dtype", "fp16", allowed=("fp32", "bf16"))


def test_default_compute_dtype_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert precision.check_compute_dtype("dtype", None, device="cpu") == torch.float32
    assert precision.check_compute_dtype("dtype", "auto", device="cuda") == torch.bfloat16


def test_pre_ampere_gpu_falls_back_to_fp32_with_a_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """No native bf16 (compute capability 7.5, a T4): fp32 (fp16 is unstable for Mochi), and the user is told.
    torch < 2.4 reports emulated bf16 as supported: the answer comes from the capability, not from that."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counted
    with caplog.at_level(logging.WARNING, logger="mochi_core.precision"):
        assert precision.default_compute_dtype("cuda") == torch.float32
    assert "no native bf16" in caplog.text and "fp32" in caplog.text
    assert precision.default_compute_dtype("cpu") == torch.float32


def test_planning_for_cuda_without_a_gpu_keeps_bf16(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Without CUDA here the GPU's bf16 support cannot be asked: the default stays bf16 and nothing is logged."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mochi_core.precision"):
        assert precision.default_compute_dtype("cuda") == torch.bfloat16
    assert caplog.text == ""


def test_dit_loader_uses_the_shared_check(tmp_path: Path, golden_dir: Path) -> None:
    path = write_dit(tmp_path / "o.safetensors", "official", load_file(str(golden_dir / "dit_tiny.safetensors")))
    with pytest.raises(InvalidInputError, match=r"^dtype=fp8_e4m3fn cannot be a compute dtype.*allowed: fp32, bf16"):
        load_dit(path, dtype="fp8_e4m3fn")
    assert load_dit(path, dtype="bfloat16").compute_dtype == torch.bfloat16


# ------------------------------------------------------------------ storage


@pytest.mark.parametrize("requested", precision.FLOAT8_DTYPES)
def test_biases_never_stored_in_fp8(requested: torch.dtype) -> None:
    assert precision.storage_dtype_for("blocks.0.attn.proj_x.bias", torch.float32, requested) == torch.bfloat16
    assert precision.storage_dtype_for("blocks.0.mod_x.bias", torch.bfloat16, requested) == torch.bfloat16
    assert precision.storage_dtype_for("blocks.0.mod_x.bias", torch.float16, requested) == torch.float16
    assert precision.storage_dtype_for("blocks.0.mod_x.bias", requested, None) == torch.bfloat16  # a file's fp8 bias
    assert precision.storage_dtype_for("blocks.0.attn.q_norm_x.weight", torch.float32, requested) == torch.float32
    assert precision.storage_dtype_for("blocks.0.attn.proj_x.weight", torch.float32, requested) == requested


def test_fp8_storage_keeps_biases_in_bf16(tmp_path: Path, golden_dir: Path) -> None:
    sd = load_file(str(golden_dir / "dit_tiny.safetensors"))
    model = load_dit(write_dit(tmp_path / "o.safetensors", "official", sd), storage_dtype="fp8_e4m3fn")
    proj = model.blocks[0].attn.proj_x
    assert proj.weight.dtype == torch.float8_e4m3fn and proj.weight_format == "scaled_fp8"
    assert proj.bias.dtype == torch.bfloat16
    assert torch.equal(proj.bias, sd["blocks.0.attn.proj_x.bias"].to(torch.bfloat16))
    fp8 = [n for n, p in model.named_parameters() if p.dtype in precision.FLOAT8_DTYPES]
    assert fp8 and all(n.endswith(".weight") for n in fp8)


# ------------------------------------------------------------------ scales in fp32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scaled_fp8_weight_is_scaled_in_fp32(dtype: torch.dtype) -> None:
    """W = round_dtype(W_fp8 · scale) with the fp32 scale; a scale rounded to bf16 first gives other values."""
    g = torch.Generator().manual_seed(0)
    w8 = (torch.randn(64, 64, generator=g) * 100).to(torch.float8_e4m3fn)
    scale = torch.tensor(1.005859375 * 0.003, dtype=torch.float32)  # far from any bf16 value
    lin = ops.Linear(64, 64, bias=False)
    ops.set_weight(lin, w8, fmt="scaled_fp8", scale=scale)
    got = lin.compute_weight(dtype, torch.device("cpu"))
    once = (w8.to(torch.float32) * scale).to(dtype)
    assert got.dtype == dtype and torch.equal(got, once)


def test_non_scalar_scale_refused_by_set_weight() -> None:
    lin = ops.Linear(4, 4, bias=False)
    with pytest.raises(InvalidInputError, match=r"scale_weight must be a single value; got shape \(4,\)"):
        ops.set_weight(lin, torch.zeros(4, 4, dtype=torch.float8_e4m3fn), fmt="scaled_fp8", scale=torch.ones(4))
