"""Sampler behaviour with a small fake DiT: CFG rule, batching, callbacks, interrupt, denoise, validation."""

from __future__ import annotations

import types

import pytest
import torch

from mochi_core import MochiInterrupted, latent_shape, linear_quadratic_schedule, make_noise, sample
from mochi_core.errors import InvalidInputError
from mochi_core.sampling import check_sampling_args, nearest_frame_counts, validate_sigmas


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


# ----------------------------------------------------------------------------------------------
# Step by step against a hand computation, with a model that is NOT a perfect predictor
# ----------------------------------------------------------------------------------------------


def _velocity(x: torch.Tensor, sigma: torch.Tensor, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A smooth, nonlinear fake prediction: depends on x, sigma and each sample's own text (masked features)."""
    s = sigma.to(x.dtype).view(-1, 1, 1, 1, 1)
    text = (feat.to(x.dtype) * mask.unsqueeze(-1).to(x.dtype)).sum(dim=(1, 2)).view(-1, 1, 1, 1, 1)
    ramp = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype).view(1, 1, 1, 1, -1)
    return -(0.6 + s) * x + 0.2 * torch.tanh(x) * (1.0 - s) + 0.3 * text * ramp + 0.1 * s


class RecordingDiT:
    """Returns :func:`_velocity` in float32; records what the sampler fed it (x, sigma, batch size)."""

    def __init__(self) -> None:
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, sigma, feat, mask):
        assert sigma.dtype == torch.float32 and sigma.shape == (x.shape[0],)
        self.inputs.append((x.clone(), sigma.clone()))
        return _velocity(x, sigma, feat, mask)


def _hand_run(noise, sched, cfgs, pos, neg):
    """The CFG Euler loop written out in float64 (docs/numerics.md §3.1): the trajectory z_k, x0 estimates, sigmas."""
    z = noise.double()
    zs, x0s = [z], []
    for i, cfg in enumerate(cfgs):
        sigma = torch.full((z.shape[0],), sched[i], dtype=torch.float64)
        v_cond = _velocity(z, sigma, pos[0].double().expand(z.shape[0], -1, -1), pos[1].expand(z.shape[0], -1))
        if cfg == 1.0:
            v = v_cond
        else:
            v_unc = _velocity(z, sigma, neg[0].double().expand(z.shape[0], -1, -1), neg[1].expand(z.shape[0], -1))
            v = v_unc + cfg * (v_cond - v_unc)
        x0s.append(z + sched[i] * v)
        z = z + (sched[i] - sched[i + 1]) * v
        zs.append(z)
    return zs, x0s


def _conds(batch: int):
    g = torch.Generator().manual_seed(3)
    pos = (
        torch.randn(batch, 8, 4, generator=g),
        torch.tensor([[True] * (5 + b) + [False] * (3 - b) for b in range(batch)]),
    )
    neg = (torch.randn(1, 8, 4, generator=g) * 0.5, torch.tensor([[True] * 2 + [False] * 6]))
    return pos, neg


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_every_euler_step_matches_a_hand_computation(batch_cfg: bool) -> None:
    noise = make_noise(21, frames=7, height=16, width=32)
    pos, neg = _conds(1)
    sched = linear_quadratic_schedule(5, 0.3)
    cfgs = [4.0, 1.0, 2.5, 3.0, 1.5]
    dit, seen = RecordingDiT(), []
    z = sample(
        dit, noise, pos, neg, steps=5, cfg=0.0, sigmas=sched, cfg_schedule=cfgs, batch_cfg=batch_cfg,
        callback=lambda i, n, x0: seen.append((i, n, x0.clone())),
    )  # fmt: skip
    zs, x0s = _hand_run(noise, sched, cfgs, pos, neg)
    # DiT calls per step: cfg 1 runs the conditional pass alone
    sizes = [x.shape[0] for x, _ in dit.inputs]
    assert sizes == ([2, 1, 2, 2, 2] if batch_cfg else [1, 1, 1, 1, 1, 1, 1, 1, 1])
    step_of_call = [0, 1, 2, 3, 4] if batch_cfg else [0, 0, 1, 2, 2, 3, 3, 4, 4]
    for (x, sigma), k in zip(dit.inputs, step_of_call):
        assert torch.equal(sigma, torch.full_like(sigma, sched[k]))  # sigma_k as float32, not sigma_{k+1}
        for row in x:  # every row is the current latent z_k (cond and uncond see the same z)
            assert torch.allclose(row.double(), zs[k][0], atol=1e-5), f"step {k}: wrong latent fed to the DiT"
    assert [(i, n) for i, n, _ in seen] == [(k, 5) for k in range(5)]
    for k, (_, _, x0) in enumerate(seen):
        assert torch.allclose(x0.double(), x0s[k], atol=1e-5), f"step {k}: wrong x0 estimate"
    assert z.dtype == torch.float32 and torch.allclose(z.double(), zs[-1], atol=1e-5)
    # the model is not a perfect predictor: the trajectory is not a straight line, so each step matters
    assert not torch.allclose(x0s[0], x0s[-1], atol=1e-2)


@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("per_sample_negative", [False, True])
def test_batch_of_two_with_different_conditioning_per_sample(batch_cfg: bool, per_sample_negative: bool) -> None:
    noise = make_noise(8, frames=7, height=16, width=32, batch=2)
    pos, neg = _conds(2)
    if per_sample_negative:
        neg = (torch.cat([neg[0], -neg[0]]), torch.cat([neg[1], neg[1].roll(3, dims=1)]))
    dit = RecordingDiT()
    z = sample(dit, noise, pos, neg, steps=4, cfg=3.5, batch_cfg=batch_cfg)
    assert [x.shape[0] for x, _ in dit.inputs] == ([4] * 4 if batch_cfg else [2] * 8)
    sched = linear_quadratic_schedule(4)
    for b in range(2):
        nb = (neg[0][b : b + 1], neg[1][b : b + 1]) if per_sample_negative else neg
        zs, _ = _hand_run(noise[b : b + 1], sched, [3.5] * 4, (pos[0][b : b + 1], pos[1][b : b + 1]), nb)
        assert torch.allclose(z[b : b + 1].double(), zs[-1], atol=1e-5), f"sample {b} used the wrong conditioning"
    # and the conditioning really differs per sample: sample 0 run with sample 1's text lands elsewhere
    swapped, _ = _hand_run(
        noise[:1],
        sched,
        [3.5] * 4,
        (pos[0][1:], pos[1][1:]),
        neg if not per_sample_negative else (neg[0][:1], neg[1][:1]),
    )
    assert not torch.allclose(z[:1].double(), swapped[-1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Argument checks: types and shapes of the tensors, one check for the scalar settings
# ----------------------------------------------------------------------------------------------


def _bad(name: str):
    """Arguments for sample() with one broken entry; the others valid (batch-1 noise, cfg 2)."""
    dit, noise, pos, neg = _setup()
    args = {"dit": dit, "noise": noise, "positive": pos, "negative": neg, "steps": 2, "cfg": 2.0}
    cases = {
        "noise_list": {"noise": noise.tolist()},
        "noise_int": {"noise": noise.to(torch.int64)},
        "noise_4d": {"noise": noise[0]},
        "noise_channels": {"noise": noise[:, :6]},
        "pos_not_pair": {"positive": pos[0]},
        "pos_feat_list": {"positive": (pos[0].tolist(), pos[1])},
        "pos_mask_float": {"positive": (pos[0], pos[1].float())},
        "pos_feat_int": {"positive": (pos[0].long(), pos[1])},
        "pos_lengths": {"positive": (pos[0], pos[1][:, :5])},
        "neg_batch": {"negative": (neg[0].expand(3, -1, -1), neg[1].expand(3, -1))},
        "widths": {"negative": (torch.zeros(1, 8, 5), neg[1])},
        "cfg_schedule_scalar": {"cfg_schedule": 2.0},
        "cfg_schedule_str": {"cfg_schedule": "22"},
        "cfg_schedule_nan": {"cfg_schedule": [2.0, float("nan")]},
        "cfg_schedule_2d": {"cfg_schedule": torch.ones(2, 1)},
        "cfg_string": {"cfg": "2"},
        "start_type": {"start_latent": noise.numpy(), "denoise": 0.5},
        "start_batch": {"start_latent": torch.zeros(2, *noise.shape[1:]), "denoise": 0.5},
        "start_size": {"start_latent": torch.zeros(1, 12, 2, 4, 6), "denoise": 0.5},
        "start_nan": {"start_latent": torch.full(noise.shape, float("nan")), "denoise": 0.5},
        "callback": {"callback": 3},
        "batch_cfg": {"batch_cfg": "yes"},
        "threshold": {"threshold_noise": 0.9, "steps": 4},
    }
    args.update(cases[name])
    return dit, args


@pytest.mark.parametrize(
    "case, words",
    [
        ("noise_list", ["noise must be a floating tensor (B, 12, T, H, W)", "got list"]),
        ("noise_int", ["noise must be a floating tensor", "got dtype torch.int64"]),
        ("noise_4d", ["noise must be a floating tensor (B, 12, T, H, W)", "= (*, 12, *, *, *); got shape"]),
        ("noise_channels", ["noise must be a floating tensor (B, 12, T, H, W)", "got shape (1, 6,"]),
        ("pos_not_pair", ["positive must be a (feat (B, L, D), mask (B, L)) pair", "Tensor"]),
        ("pos_feat_list", ["positive feat must be a floating tensor (B, L, D)", "got list"]),
        ("pos_mask_float", ["positive mask must be a bool (or integer 0/1) tensor (B, L)", "got dtype torch.float32"]),
        ("pos_feat_int", ["positive feat must be a floating tensor", "got dtype torch.int64"]),
        (
            "pos_lengths",
            [
                "positive mask must be a bool (or integer 0/1) tensor (B, L) matching the feat = (1, 8)",
                "got shape (1, 5)",
            ],
        ),
        ("neg_batch", ["negative feat must be a floating tensor (B, L, D)", "= (1, *, *); got shape (3,"]),
        ("widths", ["different widths", "4 vs 5"]),
        ("cfg_schedule_scalar", ["cfg_schedule must be a list of numbers", "float"]),
        ("cfg_schedule_str", ["cfg_schedule must be a list of numbers", "str"]),
        ("cfg_schedule_nan", ["cfg=nan", "finite number >= 0"]),
        ("cfg_schedule_2d", ["cfg_schedule must be a list of numbers (or a 1-D tensor)", "of shape (2, 1)"]),
        ("cfg_string", ["cfg='2' is not a number"]),
        ("start_type", ["start_latent must be a floating tensor (B, 12, T, H, W)", "got ndarray"]),
        ("start_batch", ["= (1, 12, 3, 4, 6); got shape (2, 12, 3, 4, 6)"]),
        ("start_size", ["= (1, 12, 3, 4, 6); got shape (1, 12, 2, 4, 6)"]),
        ("start_nan", ["start_latent must be a floating tensor", "it contains NaN or inf values"]),
        ("callback", ["callback must be callable"]),
        ("batch_cfg", ["batch_cfg='yes'", "True or False"]),
        ("threshold", ["threshold_noise=0.9", "too large"]),
    ],
)
def test_wrong_types_and_shapes_are_refused_before_the_dit_runs(case, words) -> None:
    dit, args = _bad(case)
    with pytest.raises(InvalidInputError) as exc:
        sample(**args)
    for w in words:
        assert w in str(exc.value), str(exc.value)
    assert dit.batches == []


def test_features_must_match_the_dit_width() -> None:
    dit, noise, pos, neg = _setup()
    dit.config = types.SimpleNamespace(t5_feat_dim=4096)  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError, match="positive has 4 features per token but this DiT expects 4096"):
        sample(dit, noise, pos, neg, steps=2, cfg=2.0)
    assert dit.batches == []


def test_check_sampling_args_is_the_one_check() -> None:
    args = check_sampling_args(steps=4, cfg=3, cfg_schedule=[1, 2.0, 3, 1.0])
    assert args.sigmas == tuple(linear_quadratic_schedule(4)) and args.cfgs == (1.0, 2.0, 3.0, 1.0)
    assert args.cfg == 3.0 and args.first == 0 and args.needs_uncond
    assert not check_sampling_args(steps=2, cfg=1.0).needs_uncond
    v2v = check_sampling_args(steps=10, cfg=1.0, denoise=0.5, has_start_latent=True)
    assert v2v.sigmas[v2v.first] <= 0.5 < v2v.sigmas[v2v.first - 1]
    # explicit sigmas: the schedule parameters are not used, so not checked against them
    assert check_sampling_args(steps=2, cfg=1.0, sigmas=[1.0, 0.5, 0.0], linear_steps=40).sigmas == (1.0, 0.5, 0.0)


def test_numpy_and_tensor_scalars_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    from mochi_core.memory import plan
    from mochi_core.sampling import check_sampling_args, linear_quadratic_schedule, make_noise
    from mochi_core.units import parse_bytes

    assert linear_quadratic_schedule(np.int64(4), np.float32(0.025)) == linear_quadratic_schedule(
        4, float(np.float32(0.025))
    )
    assert linear_quadratic_schedule(torch.tensor(4), 0.025, linear_steps=np.int16(2)) == linear_quadratic_schedule(
        4, 0.025, 2
    )
    torch.testing.assert_close(
        make_noise(np.uint64(5), frames=7, height=16, width=16, batch=np.int8(2)),
        make_noise(5, frames=7, height=16, width=16, batch=2),
    )
    a = check_sampling_args(steps=np.int64(3), cfg=torch.tensor(2.5), cfg_schedule=None, denoise=np.float64(1.0))
    assert a.steps == 3 and type(a.steps) is int and a.cfgs == (2.5, 2.5, 2.5)
    b = check_sampling_args(steps=2, cfg=None, cfg_schedule=(c for c in [4.5, 3.0]))
    assert b.cfgs == (4.5, 3.0)
    assert parse_bytes(np.int64(10**9)) == 10**9
    assert plan(848, 480, 31, budget_bytes=np.int64(20 * 10**9)).budget_bytes == 20 * 10**9
    for bad in (True, "4", 2.5, torch.tensor([1, 2])):
        with pytest.raises(InvalidInputError, match="steps="):
            check_sampling_args(steps=bad, cfg=1.0)
