"""Tiled / chunked / budgeted decoding: exactness of temporal chunks, spatial error bounds, budgets, callbacks."""

from __future__ import annotations

import math

import pytest
import torch

from mochi_core.errors import DoesNotFitError, InvalidInputError, MochiInterrupted
from mochi_core.testing.memory import PeakMemoryTracker
from mochi_core.vae import (
    TilePlan,
    choose_tiles,
    decode_working_set_bytes,
    load_vae,
    min_decode_bytes,
)
from mochi_core.vae.layers import CausalConv3d
from mochi_core.vae.tiling import _axis_weights, axis_tiles, count_tiles, smallest_tile
from tests.numerics import TINY_DECODER_TOL

# a chunk or tile runs the same convolutions as the whole decode on smaller inputs (other blocking, other summation
# order): the bound of tests/numerics.py; a lost, repeated or seamed frame moves outputs by > 0.1
TOL = TINY_DECODER_TOL

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def vae(golden_dir):
    return load_vae(golden_dir / "vae_decoder_tiny.safetensors")


@pytest.fixture(scope="module")
def small(vae):
    z = torch.randn(2, 12, 4, 3, 4, generator=torch.Generator().manual_seed(1))
    return z, vae.decode(z)


@pytest.fixture(scope="module")
def wide(vae):
    z = torch.randn(1, 12, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    return z, vae.decode(z)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_temporal_chunks_are_exact(vae, small, frames):
    z, ref = small
    out = vae.decode(z, tile=frames)
    assert out.shape == ref.shape == (2, 3, 6 * (4 - 1) + 1, 24, 32)
    assert (out - ref).abs().max().item() <= TOL


def test_single_latent_frame(vae):
    z = torch.randn(1, 12, 1, 2, 3)
    assert vae.decode(z, tile=1).shape == (1, 3, 1, 16, 24)


def test_spatial_tiles_error_bounds(vae, wide):
    """Measured on the golden tiny decoder (random weights, strong border sensitivity): 2 x 2 tiles of 8 x 8
    latents with overlap 4. The shared frame statistics lower the error; neither reaches zero (borders)."""
    z, ref = wide
    glob = vae.decode(z, tile=TilePlan(2, 8, 8, 4, "global"))
    tile = vae.decode(z, tile=TilePlan(2, 8, 8, 4, "tile"))
    assert glob.shape == ref.shape
    p_glob, p_tile = _psnr(glob, ref), _psnr(tile, ref)
    assert p_glob > p_tile
    assert p_glob > 31.5 and p_tile > 30.0
    assert (glob - ref).abs().max().item() < 0.5


def test_whole_tile_plan_is_exact(vae, wide):
    z, ref = wide
    out = vae.decode(z, tile=TilePlan(1, 100, 100, 4))
    assert (out - ref).abs().max().item() <= TOL


def _cache_probe(vae):
    """Forward hook on the decoder recording, after each call, how many causal convs hold a carried cache."""
    convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv3d)]
    seen: list[int] = []
    handle = vae.decoder.register_forward_hook(
        lambda mod, args, out: seen.append(sum(c.cache is not None for c in convs))
    )
    return convs, seen, handle


def test_single_chunk_decodes_keep_no_causal_caches(vae, small, wide):
    """One chunk per tile: nothing follows, so no conv may keep its last frames (memory held for nothing); several
    chunks carry them (negative control) and every cache is freed when the decode ends."""
    convs, seen, handle = _cache_probe(vae)
    try:
        z, ref = small
        out = vae.decode(z)  # whole decode: one chunk
        zw, refw = wide
        tiled = vae.decode(zw, tile=TilePlan(2, 8, 8, 4))  # 2 x 2 spatial tiles, one chunk each
        assert seen and all(n == 0 for n in seen), seen
        seen.clear()
        chunked = vae.decode(z, tile=2)  # two chunks: the first carries its context into the second
        assert seen[0] == len(convs), seen
    finally:
        handle.remove()
    assert all(c.cache is None and not c.streaming for c in convs)
    assert (out - ref).abs().max().item() <= TOL and (chunked - ref).abs().max().item() <= TOL
    assert tiled.shape == refw.shape


def test_whole_frame_chunks_are_written_straight_into_the_output(vae, small):
    """The decoded video exists once on the device: for whole frames the decoder writes into the output accumulator
    (its result shares the accumulator's storage) instead of returning a second copy; blended tiles cannot."""
    z, _ = small
    results: list[torch.Tensor] = []
    handle = vae.decoder.register_forward_hook(lambda mod, args, out: results.append(out))
    try:
        for tile in (None, 2):
            results.clear()
            out = vae.decode(z, tile=tile)
            assert results and all(r.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for r in results)
        results.clear()
        out = vae.decode(z, tile=TilePlan(4, 2, 4, 1))
        assert results and all(r.untyped_storage().data_ptr() != out.untyped_storage().data_ptr() for r in results)
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_estimate_counts_the_decoded_video_once(vae, dtype):
    """One more latent frame adds exactly its 6 output frames of float32 accumulator to the estimate: the decoded
    video is counted once (not scaled by the safety factor, not once per copy)."""
    cfg = vae.decoder.config
    for tile in (TilePlan(1, 60, 106, 0), TilePlan(2, 20, 30, 4)):
        grow = decode_working_set_bytes((1, 12, 9, 60, 106), tile, cfg, dtype) - decode_working_set_bytes(
            (1, 12, 8, 60, 106), tile, cfg, dtype
        )
        assert grow == 6 * 3 * (60 * 8) * (106 * 8) * 4


def test_count_and_smallest_tile_agree_with_the_decode(vae, wide):
    z, _ = wide
    plan = TilePlan(1, 5, 6, 2)
    seen = []
    vae.decode(z, tile=plan, progress=lambda i, n: seen.append(n))
    assert seen[-1] == len(seen) == count_tiles(z.shape, plan) == 2 * 2 * 3
    assert smallest_tile((1, 12, 28, 60, 106)) == TilePlan(1, 8, 8, 2)
    assert smallest_tile((1, 12, 3, 4, 30)) == TilePlan(1, 4, 8, 1)
    assert min_decode_bytes(z.shape, vae.decoder.config) == decode_working_set_bytes(
        z.shape, smallest_tile(z.shape), vae.decoder.config
    )


def test_blend_weights_partition_unity():
    for length, size, ov in [(60, 30, 8), (106, 41, 8), (13, 5, 2), (8, 8, 2)]:
        tiles = axis_tiles(length, size, ov)
        assert tiles[0][0] == 0 and tiles[-1][1] == length
        assert all(e - s == min(size, length) for s, e in tiles)
        total = torch.zeros(length * 8, dtype=torch.float64)
        owned = []
        for (s, e), (w, o0, o1) in zip(tiles, _axis_weights(tiles, 8)):
            total[s * 8 : e * 8] += w
            owned.append((o0, o1))
        assert torch.allclose(total, torch.ones_like(total))
        assert owned[0][0] == 0 and owned[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(owned, owned[1:]))


# ------------------------------------------------------------------------------------------------ budgets


def test_budget_peaks_stay_within_budget(vae, wide):
    z, ref = wide
    with PeakMemoryTracker() as whole:
        vae.decode(z)
    minimum = min_decode_bytes(z.shape, vae.decoder.config)
    for budget in (int(whole.peak_bytes * 1.5), (whole.peak_bytes + minimum) // 2, int(minimum * 1.02)):
        plan = vae.plan_decode(z.shape, budget)
        assert decode_working_set_bytes(z.shape, plan, vae.decoder.config) <= budget
        with PeakMemoryTracker() as tr:
            out = vae.decode(z, memory_budget=budget)
        assert tr.peak_bytes <= budget, (plan, tr.peak_bytes, budget)
        assert out.shape == ref.shape
        if plan.height >= 8 and plan.width >= 12:
            assert (out - ref).abs().max().item() <= TOL  # whole frames: exact up to summation order
        else:
            assert _psnr(out, ref) > 25


def test_budget_below_minimum_refused_before_work(vae, wide):
    z, _ = wide
    minimum = min_decode_bytes(z.shape, vae.decoder.config)
    calls = []
    with pytest.raises(DoesNotFitError) as info:
        vae.decode(z, memory_budget=minimum - 1, progress=lambda i, n: calls.append(i))
    assert info.value.min_budget_bytes == minimum
    assert "at least" in str(info.value) and not calls
    assert choose_tiles(z.shape, minimum, vae.decoder.config).frames >= 1


def test_estimate_is_monotonic_in_tile_size(vae):
    cfg = vae.decoder.config
    shape = (1, 12, 28, 60, 106)
    sizes = [decode_working_set_bytes(shape, TilePlan(1, s, s, 4), cfg) for s in (8, 16, 32, 60)]
    assert sizes == sorted(sizes)
    more_frames = [decode_working_set_bytes(shape, TilePlan(n, 60, 106, 0), cfg) for n in (1, 2, 4, 28)]
    assert more_frames == sorted(more_frames)


# ------------------------------------------------------------------------------------------------ callbacks


def test_progress_once_per_tile_and_chunk(vae, small):
    z, _ = small
    seen = []
    vae.decode(z, tile=2, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    seen.clear()
    vae.decode(z, tile=TilePlan(4, 2, 4, 1, "global"), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 4) for i in range(1, 5)]  # 2 row tiles x 2 passes


def test_should_stop_interrupts(vae, small):
    z, _ = small
    seen = []
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(MochiInterrupted):
        vae.decode(z, tile=1, progress=lambda i, n: seen.append(i), should_stop=stop)
    assert seen == [1] and len(asked) == 2
    # the decoder is usable again afterwards (streams closed)
    assert vae.decode(z[:, :, :1]).shape[2] == 1


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "latent, match",
    [
        (torch.zeros(1, 16, 2, 4, 4), r"\(B, 12, T, H, W\)"),
        (torch.zeros(1, 12, 0, 4, 4), r"got shape \(1, 12, 0, 4, 4\)"),
        (torch.zeros(12, 2, 4, 4), r"\(B, 12, T, H, W\)"),
        (torch.zeros(1, 12, 2, 4, 4, dtype=torch.int64), "floating"),
        (torch.full((1, 12, 2, 4, 4), float("nan")), "NaN"),
        (torch.full((1, 12, 2, 4, 4), float("inf")), "NaN or inf"),
    ],
)
def test_bad_latents(vae, latent, match):
    with pytest.raises(InvalidInputError, match=match):
        vae.decode(latent)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile": (0, 4, 4)}, "frames must be a positive int"),
        ({"tile": "big"}, "tile must be"),
        ({"tile": TilePlan(1, 4, 4, 1), "memory_budget": 10**9}, "tile= cannot be combined with memory_budget="),
        ({"memory_budget": -5}, "positive number of bytes"),
        ({"memory_budget": "8GB"}, "positive number of bytes"),
    ],
)
def test_bad_options(vae, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        vae.decode(torch.zeros(1, 12, 1, 2, 2), **kwargs)


def test_bad_norm_mode():
    with pytest.raises(InvalidInputError, match="norm"):
        TilePlan(1, 4, 4, 1, "batch")
