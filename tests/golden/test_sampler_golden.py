"""The sampler against Genmo's own 4-step CFG loop (../shared/golden/sampler_tiny.safetensors, README §2).

Two levels: (1) a replay DiT that returns the official per-step outputs checks the loop's arithmetic, inputs
and noise bit-exactly; (2) the real tiny DiT (mochi_core.load_dit on dit_tiny.safetensors) reproduces the whole
run within the summation-order bound of tests/numerics.py, through the separate (official) and the batched CFG paths.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import linear_quadratic_schedule, make_noise, sample
from tests.numerics import TINY_SAMPLER_TOL

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def run(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "sampler_tiny.safetensors"))


def _conds(run):
    return (run["cond_t5_feat"], run["cond_t5_mask"]), (run["uncond_t5_feat"], run["uncond_t5_mask"])


def test_noise_is_the_official_cpu_draw(run) -> None:
    noise = make_noise(1234, frames=13, height=32, width=48)
    assert noise.shape == (1, 12, 3, 4, 6) and noise.dtype == torch.float32
    # bit-exact: torch's CPU normal draw transforms uniform bits element by element (Box-Muller, no reduction),
    # with the same AVX2 code on AVX2 and AVX-512 machines, which is where the official draw was made
    assert torch.equal(noise, run["noise"])


def test_schedule_matches_the_run(run) -> None:
    assert linear_quadratic_schedule(4, 0.025) == run["sigma_schedule"].tolist()


class ReplayDiT:
    """Returns the official outputs of the step being replayed; checks what the sampler feeds it.

    The loop's arithmetic is element-wise (CFG mix, Euler update: no reduction), each element rounded once per
    operation whatever the vector width or thread count, so equality with the official latents is exact by
    construction, and so is the check of the inputs fed to the DiT."""

    def __init__(self, run: dict[str, torch.Tensor]) -> None:
        self.run = run
        self.sigmas = run["sigma_schedule"].tolist()
        self.calls: list[tuple[int, int]] = []
        #: per DiT call: (step, batch size, conditionings in batch order), to tell batched from separate CFG
        self.batches: list[tuple[int, int, tuple[str, ...]]] = []

    def _step(self, sigma: float) -> int:
        return [torch.tensor(s, dtype=torch.float32).item() for s in self.sigmas].index(sigma)

    def __call__(self, x, sigma, feat, mask):
        assert sigma.dtype == torch.float32 and sigma.shape == (x.shape[0],)
        i = self._step(sigma[0].item())
        z_in = self.run["noise"] if i == 0 else self.run[f"step{i - 1}_latent"]
        outs = []
        keys = tuple("cond" if bool(mask[b].any()) else "uncond" for b in range(x.shape[0]))
        self.batches.append((i, x.shape[0], keys))
        for b in range(x.shape[0]):
            assert torch.equal(x[b : b + 1], z_in), f"step {i}: latent fed to the DiT differs"
            cond = bool(mask[b].any())
            key = "cond" if cond else "uncond"
            assert torch.equal(mask[b : b + 1], self.run[f"{key}_t5_mask"])
            assert torch.equal(feat[b : b + 1], self.run[f"{key}_t5_feat"])
            outs.append(self.run[f"step{i}_out_{key}"])
            self.calls.append((i, b))
        return torch.cat(outs)


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_loop_arithmetic_is_bit_exact(run, batch_cfg) -> None:
    dit = ReplayDiT(run)
    pos, neg = _conds(run)
    seen = []
    z = sample(
        dit,
        run["noise"],
        pos,
        neg,
        steps=4,
        cfg=4.5,
        batch_cfg=batch_cfg,
        callback=lambda i, n, x0: seen.append((i, n)),
    )
    assert torch.equal(z, run["final_latent"])
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    # batched: one call of batch 2 (cond first) per step; separate: two calls of batch 1, cond then uncond
    assert len(dit.calls) == 8
    if batch_cfg:
        assert dit.batches == [(i, 2, ("cond", "uncond")) for i in range(4)]
    else:
        assert dit.batches == [(i, 1, (k,)) for i in range(4) for k in ("cond", "uncond")]


def test_explicit_schedules_give_the_same_run(run) -> None:
    pos, neg = _conds(run)
    z = sample(
        ReplayDiT(run),
        run["noise"],
        pos,
        neg,
        steps=4,
        cfg=0.0,
        sigmas=run["sigma_schedule"].tolist(),
        cfg_schedule=run["cfg_schedule"].tolist(),
    )
    assert torch.equal(z, run["final_latent"])


@pytest.fixture(scope="module")
def tiny_dit(golden_dir):
    pytest.importorskip("mochi_core.dit")
    from mochi_core import load_dit

    return load_dit(golden_dir / "dit_tiny.safetensors", device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_real_tiny_dit_reproduces_the_official_run(run, tiny_dit, batch_cfg) -> None:
    pos, neg = _conds(run)
    steps: dict[int, torch.Tensor] = {}
    z = sample(
        tiny_dit,
        make_noise(1234, frames=13, height=32, width=48),
        pos,
        neg,
        steps=4,
        cfg=4.5,
        batch_cfg=batch_cfg,
        callback=lambda i, n, x0: steps.__setitem__(i, x0),
    )
    err = (z - run["final_latent"]).abs().max().item()
    assert err < TINY_SAMPLER_TOL, err
    # the callback's x0 estimate of the last step is the final latent (sigma_4 = 0: z4 = z3 + sigma_3 * v3)
    assert torch.allclose(steps[3], run["final_latent"], atol=TINY_SAMPLER_TOL, rtol=0)
