"""TeaCache against a run of the reference code (../shared/golden/teacache, tiny official DiT, 12 steps, CFG 4.5).

The reference decided per step from block 0's modulated inputs of cond and uncond together and reused per-stream
residuals on skipped steps. Checked here, through ``mochi_core.load_dit`` on the golden DiT file and
``mochi_core.sample`` with CFG as two calls (the reference's arrangement) and as one batch:

- the compute/skip flags equal the reference's exactly at both thresholds. Margin: the smallest distance
  between an accumulated value and the threshold in the reference run is 1.4e-3, while our accumulated values
  differ from the reference's only by float32 rounding of the means (relative ~1e-6 of values below 0.2, i.e.
  < 1e-6 absolute after the polynomial, whose slope is below 2 on [0, 0.11]), so a flag cannot flip;
- the rule's values (rel L1, rescaled, accumulated) within 1e-5 relative (float32 means vs float64 sums);
- the final latent within 1e-5: every computed DiT call agrees with the official forward to ~1.5e-6 (the DiT
  golden test's figure), skipped calls add one Linear on the cached residual, and the 12 Euler steps scale
  those differences by at most sum(dsigma · cfg) = 4.5 (the reference saw 2.6e-6 between machines and
  thread counts on the same loop).
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit, sample
from mochi_core.sampling import SamplingStats
from mochi_core.teacache import COEFFICIENTS, rescale

TOL_LATENT = 1e-5
TOL_REL = 1e-5


@pytest.fixture(scope="module")
def ref(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "teacache" / "teacache_tiny.safetensors"))


@pytest.fixture(scope="module")
def dit(golden_dir) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


def _run(dit, ref, threshold: float, *, batch_cfg: bool, **kw) -> tuple[torch.Tensor, SamplingStats]:
    stats = SamplingStats()
    with torch.inference_mode():
        z = sample(
            dit,
            ref["noise"],
            (ref["cond_t5_feat"], ref["cond_t5_mask"]),
            (ref["uncond_t5_feat"], ref["uncond_t5_mask"]),
            steps=12,
            cfg=None,
            sigmas=ref["sigma_schedule"].tolist(),
            cfg_schedule=ref["cfg_schedule"].tolist(),
            batch_cfg=batch_cfg,
            teacache_threshold=threshold,
            stats=stats,
            **kw,
        )
    return z, stats


def test_coefficients_are_the_reference_ones(ref) -> None:
    assert list(COEFFICIENTS) == ref["coefficients"].tolist()
    for x in (0.0, 0.0209, 0.1073):  # Horner in float64, as numpy.poly1d
        want = sum(c * x ** (4 - i) for i, c in enumerate(ref["coefficients"].tolist()))
        assert math.isclose(rescale(x), want, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["two-calls", "batched"])
@pytest.mark.parametrize("k", [0, 1])
def test_flags_and_latent_match_reference(dit, ref, k: int, batch_cfg: bool) -> None:
    threshold = ref["thresholds"][k].item()
    z, stats = _run(dit, ref, threshold, batch_cfg=batch_cfg)
    want = "".join("C" if f else "s" for f in ref[f"tc{k}_compute"].tolist())
    assert stats.teacache_pattern == want
    skipped = want.count("s")
    assert stats.dit_passes_skipped == 2 * skipped and stats.dit_passes == 2 * (12 - skipped)
    for name in ("rel_l1", "rescaled", "accumulated"):
        got, exp = stats.teacache[name], ref[f"tc{k}_{name}"].tolist()
        for i, (g, e) in enumerate(zip(got, exp)):
            if math.isnan(e):
                assert g is None, f"{name}[{i}]"
            else:
                assert g is not None and abs(g - e) <= TOL_REL * abs(e), f"{name}[{i}]: {g} vs {e}"
    err = (z - ref[f"tc{k}_final_latent"]).abs().max().item()
    assert err <= TOL_LATENT, f"final latent differs by {err:.2e}"
    # the cache really changed the result (the reference: 3.0e-3 and 8.1e-2 from the no-cache latent)
    assert (z - ref["nocache_final_latent"]).abs().max().item() > 100 * TOL_LATENT


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["two-calls", "batched"])
def test_threshold_zero_is_the_uncached_run(dit, ref, batch_cfg: bool) -> None:
    """Threshold 0 runs the plain loop (no probe, no cache): bit-identical to a run without the argument."""
    z0, stats = _run(dit, ref, 0.0, batch_cfg=batch_cfg)
    with torch.inference_mode():
        plain = sample(
            dit,
            ref["noise"],
            (ref["cond_t5_feat"], ref["cond_t5_mask"]),
            (ref["uncond_t5_feat"], ref["uncond_t5_mask"]),
            steps=12,
            cfg=4.5,
            sigmas=ref["sigma_schedule"].tolist(),
            batch_cfg=batch_cfg,
        )
    assert torch.equal(z0, plain)
    assert stats.dit_passes == 24 and stats.dit_passes_skipped == 0 and stats.teacache_pattern == ""
    assert (z0 - ref["nocache_final_latent"]).abs().max().item() <= TOL_LATENT


def test_max_skip_steps_limits_runs_of_skips(dit, ref) -> None:
    """tc1 skips steps 4, 5, 6 in a row; with max_skip_steps=2 step 6 must compute, and nothing else changes
    before it."""
    _, stats = _run(dit, ref, ref["thresholds"][1].item(), batch_cfg=False, max_skip_steps=2)
    assert stats.teacache_pattern[:7] == "CssCssC"
    assert "sss" not in stats.teacache_pattern
