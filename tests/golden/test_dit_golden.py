"""The DiT reproduces Genmo's own outputs (shared/golden, README §1) within 1e-5 in float32.

Golden tensors were produced by genmoai/mochi's AsymmDiTJoint on tiny random weights; the weight file is loaded
through ``load_dit`` exactly as a user's checkpoint would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit

TOL = 1e-5  # observed: <= 1.5e-6; official run-to-run variation (threads, SDPA backend) is 6e-7


@pytest.fixture(scope="module")
def model(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "dit_tiny_cases.safetensors"))


def _run(model: torch.nn.Module, cases: dict[str, torch.Tensor], case: str, **override: torch.Tensor) -> torch.Tensor:
    args = {n: override.get(n, cases[f"{case}_{n}"]) for n in ("x", "sigma", "t5_feat", "t5_mask")}
    with torch.inference_mode():
        return model(args["x"], args["sigma"], args["t5_feat"], args["t5_mask"])


@pytest.mark.parametrize("case", ["case_a", "case_b", "case_c", "case_d"])
def test_matches_official_output(model: torch.nn.Module, cases: dict[str, torch.Tensor], case: str) -> None:
    out = _run(model, cases, case)
    ref = cases[f"{case}_out"]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"{case}: max abs diff {err:.3e} > {TOL}"


def test_empty_prompt_ignores_features(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> None:
    """case_b (all-False mask): the official output does not depend on t5_feat; ours neither (bit-identical)."""
    assert not cases["case_b_t5_mask"].any()
    base = _run(model, cases, "case_b")
    other = _run(model, cases, "case_b", t5_feat=torch.randn_like(cases["case_b_t5_feat"]) * 3)
    assert torch.equal(base, other)


def test_mixed_mask_batch_equals_per_sample(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> None:
    """case_c (B = 2, 3 and 16 valid tokens) equals the two samples run one at a time (official: 7.2e-7)."""
    batched = _run(model, cases, "case_c")
    for i in range(2):
        single = _run(
            model, cases, "case_c", **{n: cases[f"case_c_{n}"][i : i + 1] for n in ("x", "sigma", "t5_feat", "t5_mask")}
        )
        assert (single - batched[i : i + 1]).abs().max().item() <= 2e-6


def test_cond_uncond_batch_matches_separate_calls(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> None:
    """The sampler's batched CFG call (cond + empty uncond, B = 2) equals two B = 1 calls (golden case_a / case_b x)."""
    x = torch.cat([cases["case_a_x"], cases["case_b_x"]])
    sigma = torch.tensor([0.7, 0.7])
    feat = torch.cat([cases["case_a_t5_feat"], cases["case_b_t5_feat"]])
    mask = torch.cat([cases["case_a_t5_mask"], cases["case_b_t5_mask"]])
    with torch.inference_mode():
        both = model(x, sigma, feat, mask)
    torch.testing.assert_close(both[:1], cases["case_a_out"], atol=TOL, rtol=0)
    with torch.inference_mode():
        uncond = model(cases["case_b_x"], torch.tensor([0.7]), cases["case_b_t5_feat"], cases["case_b_t5_mask"])
    assert (both[1:] - uncond).abs().max().item() <= 2e-6


def test_padded_features_are_never_read(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> None:
    """Changing T5 features at padded positions changes nothing (official: 0)."""
    feat = cases["case_a_t5_feat"].clone()
    feat[~cases["case_a_t5_mask"]] = 123.0
    assert torch.equal(_run(model, cases, "case_a"), _run(model, cases, "case_a", t5_feat=feat))


def test_sensitivity_one_token_less_is_caught(model: torch.nn.Module, cases: dict[str, torch.Tensor]) -> None:
    """The tolerance is meaningful: dropping one valid token moves the output far beyond it (official: 7.6e-2)."""
    mask = cases["case_a_t5_mask"].clone()
    mask[0, 4] = False
    err = (_run(model, cases, "case_a", t5_mask=mask) - cases["case_a_out"]).abs().max().item()
    assert err > 100 * TOL
