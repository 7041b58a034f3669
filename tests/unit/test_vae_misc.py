"""Latent normalisation, the memory tracker, encoder input checks, the VAE object."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import mochi_core
from mochi_core.errors import InvalidInputError
from mochi_core.testing.memory import PeakMemoryTracker
from mochi_core.vae import LATENTS_MEAN, LATENTS_STD, latent_preview, load_vae


@pytest.mark.numerics
def test_normalization_matches_official_sampler(golden_dir):
    s = load_file(golden_dir / "sampler_tiny.safetensors")
    # bit-exact by construction: element-wise x * std + mean, the official operations in the official order
    assert torch.equal(mochi_core.denormalize_latent(s["final_latent"]), s["final_vae_latent"])
    back = mochi_core.normalize_latent(s["final_vae_latent"])
    # element-wise (no reduction: the same on any vector width): three roundings (x * std + mean, - mean, / std) of
    # values up to 4.43 / min std = 5.4, each within u = 6e-8 of it: 3 * 5.4 * u = 9.7e-7
    assert (back - s["final_latent"]).abs().max().item() <= 3 * (4.43 / min(LATENTS_STD)) * 2.0**-24


def test_normalization_constants():
    assert len(LATENTS_MEAN) == len(LATENTS_STD) == 12
    assert LATENTS_MEAN[0] == -0.06730895953510081 and LATENTS_STD[7] == 1.3720942357788521
    z = torch.zeros(1, 12, 1, 1, 1)
    assert torch.allclose(mochi_core.denormalize_latent(z).flatten(), torch.tensor(LATENTS_MEAN, dtype=torch.float32))


@pytest.mark.parametrize(
    "bad", [torch.zeros(1, 4, 1, 2, 2), torch.zeros(12, 1, 2, 2), torch.zeros(1, 12, 1, 2, 2, dtype=torch.int32)]
)
def test_normalization_rejects_bad_shapes(bad):
    with pytest.raises(InvalidInputError, match="latent"):
        mochi_core.normalize_latent(bad)


def test_latent_preview_shape_and_range():
    rgb = latent_preview(torch.randn(1, 12, 2, 3, 4))
    assert rgb.shape == (1, 2, 3, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_tracker_counts_live_bytes():
    with PeakMemoryTracker() as tr:
        a = torch.empty(1000, dtype=torch.float32)
        b = torch.empty(500, dtype=torch.float32)
        del a
        c = torch.empty(200, dtype=torch.float64)
        v = c.view(10, 20)  # a view allocates nothing
        del b
    assert tr.peak_bytes == 6000
    assert tr.current_bytes == 1600
    del c, v


def test_encoder_input_checks(golden_dir):
    vae = load_vae(golden_dir / "vae_encoder_tiny.safetensors")
    with pytest.raises(InvalidInputError, match="6k\\+1"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(InvalidInputError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 7, 12, 16))
    with pytest.raises(InvalidInputError, match=r"\(B, 3, F, H, W\)"):
        vae.encode(torch.zeros(1, 4, 7, 16, 16))
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        vae.encode(torch.full((1, 3, 1, 8, 8), float("nan")))
    with pytest.raises(InvalidInputError, match="no decoder"):
        vae.decode(torch.zeros(1, 12, 1, 1, 1))


def test_decoder_only_file_cannot_encode(golden_dir):
    vae = load_vae(golden_dir / "vae_decoder_tiny.safetensors")
    with pytest.raises(InvalidInputError, match="no encoder"):
        vae.encode(torch.zeros(1, 3, 1, 8, 8))


def test_vae_to_and_attributes(golden_dir):
    vae = mochi_core.load_vae(golden_dir / "vae_decoder_tiny.safetensors", device="cpu")
    assert vae.device == torch.device("cpu") and vae.dtype == torch.float32
    assert vae.to("cpu", torch.float32) is vae
    assert vae.weight_bytes() == 303_299 * 4
    assert "decoder=True" in repr(vae)


def test_plan_decode_takes_budgets_of_any_number_kind() -> None:
    np = pytest.importorskip("numpy")
    from mochi_core.testing.vae import random_decoder_state_dict
    from mochi_core.vae.loader import build_from_state_dict

    vae = build_from_state_dict(random_decoder_state_dict(), None)
    shape = (1, 12, 2, 8, 8)
    ref = vae.plan_decode(shape, 10**8)
    assert vae.plan_decode(shape, 1e8) == ref and vae.plan_decode(shape, np.int64(10**8)) == ref
    with pytest.raises(InvalidInputError, match="memory_budget"):
        vae.plan_decode(shape, -1)
