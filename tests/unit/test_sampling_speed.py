"""Presets, spatiotemporal skip guidance and TeaCache in ``sample`` (the tiny golden DiT, loaded from its file).

Exactness by construction: ``stg_scale`` 0 and ``teacache_threshold`` 0 run the plain loop (no extra call, no
cache), so their results equal a run without the arguments bit for bit. The STG arithmetic is checked against a
hand composition of the same DiT calls (the same kernels in the same order: equal bit for bit too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mochi_core import linear_quadratic_schedule, load_dit, make_noise, sample
from mochi_core.errors import InvalidInputError
from mochi_core.guidance import PRESETS, parse_blocks, stg_combine
from mochi_core.memory import enable_block_streaming
from mochi_core.sampling import SamplingStats, check_sampling_args


@pytest.fixture(scope="module")
def dit(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


def _conds():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 16, 32, generator=g)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :6] = True
    return (feat, mask), (torch.zeros(1, 16, 32), torch.zeros(1, 16, dtype=torch.bool))


def _sample(dit, **kw) -> torch.Tensor:
    pos, neg = _conds()
    noise = make_noise(7, frames=13, height=32, width=48)
    kw.setdefault("steps", 4)
    kw.setdefault("cfg", 4.5)
    with torch.inference_mode():
        return sample(dit, noise, pos, neg, **kw)


class Recorder:
    """The real DiT, recording the sigmas and batch sizes it is called with."""

    def __init__(self, dit) -> None:
        self.dit, self.calls = dit, []
        self.config, self.blocks, self.token_chunk = dit.config, dit.blocks, dit.token_chunk

    def __call__(self, x, sigma, feat, mask, **kw):
        self.calls.append((round(sigma[0].item(), 6), x.shape[0], tuple(sorted(kw))))
        return self.dit(x, sigma, feat, mask, **kw)


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_off_switches_are_the_plain_loop_bit_for_bit(dit, batch_cfg: bool) -> None:
    plain = _sample(dit, batch_cfg=batch_cfg)
    off = _sample(dit, batch_cfg=batch_cfg, stg_scale=0.0, stg_rescale=0.7, teacache_threshold=0.0, max_skip_steps=3)
    assert torch.equal(plain, off)


@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_stg_is_cfg_plus_the_perturbed_difference(dit, batch_cfg: bool, rescale: float) -> None:
    pos, neg = _conds()
    noise = make_noise(7, frames=13, height=32, width=48)
    sched = linear_quadratic_schedule(3)
    stats = SamplingStats()
    rec = Recorder(dit)
    with torch.inference_mode():
        got = sample(
            rec, noise, pos, neg, steps=3, cfg=4.5, batch_cfg=batch_cfg, stg_scale=1.5, stg_blocks=[1],
            stg_rescale=rescale, stats=stats,
        )  # fmt: skip
        z = noise.clone()
        for i in range(3):
            s = torch.full((1,), sched[i], dtype=torch.float32)
            if batch_cfg:
                out = dit(torch.cat([z, z]), s.expand(2), torch.cat([pos[0], neg[0]]), torch.cat([pos[1], neg[1]]))
                vc, vu = out[:1], out[1:]
            else:
                vc, vu = dit(z, s, *pos), dit(z, s, *neg)
            vp = dit(z, s, *pos, skip_blocks=(1,))
            v = stg_combine(vu + 4.5 * (vc - vu), vc, vp, 1.5, rescale)
            z = z + (sched[i] - sched[i + 1]) * v
    assert torch.equal(got, z)
    assert stats.dit_passes == 3 * 3 and stats.dit_passes_skipped == 0
    assert sum(1 for c in rec.calls if c[2] == ("skip_blocks",)) == 3


def test_fast_preset_sets_steps_cfg_and_schedule(dit) -> None:
    rec = Recorder(dit)
    pos, neg = _conds()
    noise = make_noise(7, frames=13, height=32, width=48)
    with torch.inference_mode():
        fast = sample(rec, noise, pos, neg, preset="fast", batch_cfg=True)
        by_hand = sample(dit, noise, pos, neg, steps=8, cfg=1.5, threshold_noise=0.1, linear_steps=6)
    assert torch.equal(fast, by_hand)
    want = linear_quadratic_schedule(8, threshold_noise=0.1, linear_steps=6)
    assert [c[0] for c in rec.calls] == [round(torch.tensor(s).float().item(), 6) for s in want[:-1]]
    assert PRESETS["fast"].steps == 8 and PRESETS["fast"].cfg == 1.5
    args = check_sampling_args(steps=None, cfg=None, preset="fast")
    assert args.steps == 8 and args.cfgs == (1.5,) * 8 and list(args.sigmas) == want


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"preset": "fast", "steps": 64}, ["preset='fast' sets steps=8", "leave steps out"]),
        ({"preset": "fast", "cfg": 6.0, "steps": None}, ["leave cfg out"]),
        ({"preset": "turbo"}, ["preset='turbo'", "default, fast"]),
        ({"steps": None}, ["steps is required"]),
        ({"teacache_threshold": -0.1}, ["teacache_threshold=-0.1", ">= 0"]),
        ({"teacache_threshold": "a"}, ["teacache_threshold"]),
        ({"max_skip_steps": -1}, ["max_skip_steps=-1", "0 = no limit"]),
        ({"max_skip_steps": 1.5}, ["max_skip_steps"]),
        ({"stg_scale": -1}, ["stg_scale=-1"]),
        ({"stg_rescale": 1.5}, ["stg_rescale=1.5", "[0, 1]"]),
        ({"stg_scale": 1.0, "stg_blocks": "x"}, ["stg_blocks='x'", "e.g. '34'"]),
        ({"stg_scale": 1.0, "stg_blocks": [-1]}, ["stg_blocks=[-1]"]),
        ({"stg_scale": 1.0}, ["stg_blocks=[34]", "2 blocks (0..1)"]),
    ],
)
def test_bad_speed_options_are_refused_before_the_dit_runs(dit, kwargs, words) -> None:
    rec = Recorder(dit)
    kwargs = {"steps": 4, "cfg": 4.5, **kwargs}
    if kwargs.get("steps") is None:
        kwargs.pop("steps")
    pos, neg = _conds()
    with pytest.raises(InvalidInputError) as e:
        sample(rec, make_noise(7, frames=13, height=32, width=48), pos, neg, **kwargs)
    for w in words:
        assert w in str(e.value)
    assert rec.calls == []
    _sample(dit)  # the next run is unaffected


def test_stg_blocks_text_and_lists() -> None:
    assert parse_blocks("34") == (34,)
    assert parse_blocks("30, 34,34") == (30, 34)
    assert parse_blocks([5, 2]) == (2, 5)
    assert parse_blocks(torch.tensor([3])) == (3,)


def test_teacache_and_stg_need_the_mochi_dit() -> None:
    pos, neg = _conds()

    def plain(x, sigma, feat, mask):
        return torch.zeros_like(x)

    for kw in ({"teacache_threshold": 0.05}, {"stg_scale": 1.0, "stg_blocks": [0]}):
        with pytest.raises(InvalidInputError, match="needs the Mochi DiT"):
            sample(plain, make_noise(0, frames=7, height=16, width=16), pos, neg, steps=2, cfg=4.5, **kw)


def test_teacache_with_stg_and_a_skip_limit_counts_passes(dit) -> None:
    """Perturbed pass follows the cond/uncond decision; max_skip_steps=1 allows no two skips in a row."""
    stats = SamplingStats()
    _sample(dit, steps=12, batch_cfg=False, teacache_threshold=0.09, max_skip_steps=1, stg_scale=1.0,
            stg_blocks=[1], stats=stats)  # fmt: skip
    pattern = stats.teacache_pattern
    assert len(pattern) == 12 and pattern[0] == pattern[-1] == "C" and "ss" not in pattern
    skipped = pattern.count("s")
    assert skipped > 0
    assert stats.dit_passes == 3 * (12 - skipped) and stats.dit_passes_skipped == 3 * skipped


def test_teacache_and_stg_with_block_streaming(dit, golden_dir: Path) -> None:
    """Streamed blocks (0 resident): the probe and skipped blocks go through the block hooks; at most the
    current and the prefetched block are loaded, and the result equals the all-resident model's."""
    streamed = load_dit(golden_dir / "dit_tiny.safetensors")
    handle = enable_block_streaming(streamed, 0, device="cpu", copy_on_load=True)
    kw = dict(steps=6, batch_cfg=False, teacache_threshold=0.05, stg_scale=1.0, stg_blocks=[0])
    try:
        a = _sample(streamed, **kw)
        assert handle.stats.max_streamed_loaded <= 2
    finally:
        handle.remove()
    assert torch.equal(a, _sample(dit, **kw))
