"""Sampler behaviour with a small fake DiT: CFG rule, batching, callbacks, interrupt, denoise, validation."""

from __future__ import annotations

import pytest
import torch

from mochi_core import MochiInterrupted, latent_shape, linear_quadratic_schedule, make_noise, sample
from mochi_core.errors import InvalidInputError
from mochi_core.sampling import nearest_frame_counts, validate_sigmas


class FakeDiT:
    """v = x0 - eps for a fixed clean latent `target` when conditioned, a different one unconditioned.

    The output depends on the text (mask count) and on sigma, so wrong batching or wrong CFG shows up.
    """

    def __init__(self, target: torch.Tensor, other: torch.Tensor) -> None:
        self.target, self.other = target, other
        self.batches: list[int] = []

    def __call__(self, x, sigma, feat, mask):
        self.batches.append(x.shape[0])
        s = sigma.view(-1, 1, 1, 1, 1)
        goal = torch.where(mask.any(dim=1).view(-1, 1, 1, 1, 1), self.target, self.other)
        goal = goal + feat[:, :1, :1].view(-1, 1, 1, 1, 1)  # features matter too
        eps = (x - (1 - s) * goal) / s.clamp(min=1e-6)
        return goal - eps


def _setup(batch: int = 1):
    g = torch.Generator().manual_seed(1)
    shape = latent_shape(13, 32, 48)
    target = torch.randn((1, *shape), generator=g)
    other = torch.randn((1, *shape), generator=g)
    noise = make_noise(7, frames=13, height=32, width=48, batch=batch)
    pos = (torch.randn(1, 8, 4, generator=g), torch.tensor([[True] * 5 + [False] * 3]))
    neg = (torch.zeros(1, 8, 4), torch.zeros(1, 8, dtype=torch.bool))
    return FakeDiT(target, other), noise, pos, neg


def test_latent_shape_and_noise() -> None:
    assert latent_shape(163, 480, 848) == (12, 28, 60, 106)
    assert latent_shape(1, 16, 16) == (12, 1, 2, 2)
    a = make_noise(3, frames=7, height=16, width=32, batch=2)
    assert a.shape == (2, 12, 2, 2, 4) and a.dtype == torch.float32
    assert torch.equal(a, make_noise(3, frames=7, height=16, width=32, batch=2))
    assert not torch.equal(a, make_noise(4, frames=7, height=16, width=32, batch=2))


def test_cfg_one_recovers_the_conditional_target_and_skips_uncond() -> None:
    dit, noise, pos, _ = _setup()
    z = sample(dit, noise, pos, None, steps=6, cfg=1.0)
    expected = dit.target + pos[0][0, 0, 0]
    # a perfect predictor lands exactly on its clean latent (up to float rounding)
    assert torch.allclose(z, expected, atol=1e-4)
    assert dit.batches == [1] * 6


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_cfg_extrapolates_between_cond_and_uncond(batch_cfg: bool) -> None:
    dit, noise, pos, neg = _setup()
    cfg = 3.0
    z = sample(dit, noise, pos, neg, steps=5, cfg=cfg, batch_cfg=batch_cfg)
    cond = dit.target + pos[0][0, 0, 0]
    expected = dit.other + cfg * (cond - dit.other)
    assert torch.allclose(z, expected, atol=1e-4)
    assert dit.batches == ([2] * 5 if batch_cfg else [1] * 10)


def test_batched_and_separate_cfg_agree_and_batch_of_two_noises() -> None:
    dit, noise, pos, neg = _setup(batch=2)
    a = sample(dit, noise, pos, neg, steps=4, cfg=4.5, batch_cfg=True)
    b = sample(dit, noise, pos, neg, steps=4, cfg=4.5, batch_cfg=False)
    assert a.shape == noise.shape
    assert torch.allclose(a, b, atol=1e-6)
    assert dit.batches[:4] == [4] * 4


def test_cfg_schedule_with_ones_skips_uncond_on_those_steps() -> None:
    dit, noise, pos, neg = _setup()
    sample(dit, noise, pos, neg, steps=4, cfg=0, cfg_schedule=[1.0, 4.0, 1.0, 2.0])
    assert dit.batches == [1, 2, 1, 2]


def test_callback_gets_x0_estimate_every_step() -> None:
    dit, noise, pos, _ = _setup()
    got = []
    sample(dit, noise, pos, None, steps=3, cfg=1.0, callback=lambda i, n, x0: got.append((i, n, x0)))
    assert [(i, n) for i, n, _ in got] == [(0, 3), (1, 3), (2, 3)]
    for _, _, x0 in got:  # the fake predictor is perfect, so every estimate is the clean latent
        assert torch.allclose(x0, dit.target + pos[0][0, 0, 0], atol=1e-4)


def test_should_stop_raises_interrupt_before_the_step() -> None:
    dit, noise, pos, neg = _setup()
    calls = iter([False, False, True])
    with pytest.raises(MochiInterrupted, match="step 3 of 8"):
        sample(dit, noise, pos, neg, steps=8, cfg=2.0, should_stop=lambda: next(calls))
    assert len(dit.batches) == 2


def test_denoise_starts_from_the_start_latent_at_the_right_sigma() -> None:
    dit, noise, pos, _ = _setup()
    start = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    sched = linear_quadratic_schedule(10)
    first = next(i for i, s in enumerate(sched) if s <= 0.5)
    seen_sigmas = []
    real_call = dit.__call__

    class Spy:
        def __call__(self, x, sigma, feat, mask):
            seen_sigmas.append(sigma[0].item())
            if len(seen_sigmas) == 1:
                s0 = sched[first]
                assert torch.allclose(x, (1 - s0) * start + s0 * noise, atol=1e-6)
            return real_call(x, sigma, feat, mask)

    z = sample(Spy(), noise, pos, None, steps=10, cfg=1.0, start_latent=start, denoise=0.5)
    assert len(seen_sigmas) == 10 - first
    assert seen_sigmas[0] == pytest.approx(sched[first], abs=1e-7) and sched[first] <= 0.5 < sched[first - 1]
    assert torch.allclose(z, dit.target + pos[0][0, 0, 0], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"steps": 0, "cfg": 1.0}, ["steps=0", ">= 1"]),
        ({"steps": 2, "cfg": -1.0}, ["cfg=-1.0", ">= 0"]),
        ({"steps": 2, "cfg": float("nan")}, ["cfg", ">= 0"]),
        ({"steps": 2, "cfg": 1.0, "denoise": 0.0}, ["denoise=0.0", "(0, 1]"]),
        ({"steps": 2, "cfg": 1.0, "denoise": 1.5}, ["denoise=1.5", "(0, 1]"]),
        ({"steps": 2, "cfg": 1.0, "denoise": 0.5}, ["start_latent"]),
        ({"steps": 2, "cfg": 1.0, "sigmas": [1.0, 0.5]}, ["2 entries", "steps + 1 = 3"]),
        ({"steps": 2, "cfg": 1.0, "sigmas": [1.0, 0.5, 0.1]}, ["end at 0.0"]),
        ({"steps": 2, "cfg": 1.0, "sigmas": [1.0, 1.0, 0.0]}, ["strictly decreasing"]),
        ({"steps": 2, "cfg": 1.0, "cfg_schedule": [1.0]}, ["cfg_schedule", "one per step"]),
        ({"steps": 2, "cfg": 2.0}, ["negative", "cfg != 1"]),
    ],
)
def test_bad_sampler_inputs_are_refused(kwargs, words) -> None:
    dit, noise, pos, _ = _setup()
    with pytest.raises(InvalidInputError) as exc:
        sample(dit, noise, pos, None, **kwargs)
    for w in words:
        assert w in str(exc.value)
    assert dit.batches == []


@pytest.mark.parametrize(
    "args, words",
    [
        ((30, 480, 848), ["frames=30", "6k+1", "25 or 31"]),
        ((0, 480, 848), ["frames=0", "6k+1", "1"]),
        ((31, 470, 848), ["height=470", "multiple of 16", "464 or 480"]),
        ((31, 480, 850), ["width=850", "multiple of 16", "848 or 864"]),
    ],
)
def test_bad_sizes_name_the_allowed_values(args, words) -> None:
    with pytest.raises(InvalidInputError) as exc:
        latent_shape(*args)
    for w in words:
        assert w in str(exc.value)


def test_helpers() -> None:
    assert nearest_frame_counts(30) == (25, 31)
    assert nearest_frame_counts(163) == (163, 169)
    assert validate_sigmas([1.0, 0.3, 0.0], 2) == [1.0, 0.3, 0.0]
    assert validate_sigmas(torch.tensor([0.8, 0.0], dtype=torch.float64)) == [0.8, 0.0]
