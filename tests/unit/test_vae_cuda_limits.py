"""VAE calls stay inside CUDA kernel limits: the encoder's attention batch (grid axis of 65,535 blocks) and the
decoder's convolution inputs (32-bit indexing), measured by recording every call of a full-size model run on the
``meta`` device (shapes only, no arithmetic), so the checks hold on a CPU-only machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mochi_core import plan
from mochi_core.testing.vae import random_encoder_state_dict
from mochi_core.vae import TilePlan, choose_tiles
from mochi_core.vae import layers as vae_layers
from mochi_core.vae.config import DecoderConfig, EncoderConfig
from mochi_core.vae.decoder import Decoder
from mochi_core.vae.encoder import Encoder
from mochi_core.vae.layers import AttentionBlock, add_fourier_features, row_chunks
from mochi_core.vae.tiling import CONV_INPUT_LIMIT, max_conv_input_elements, tiled_decode

GRID_LIMIT = 65_535  # CUDA's limit on gridDim.y / gridDim.z, where attention kernels put the batch
GB = 10**9


def _sdpa_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch (first dimension of q) of every scaled_dot_product_attention call."""
    seen: list[int] = []
    real = F.scaled_dot_product_attention

    def recording(q, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(int(q.shape[0]))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


def test_encoder_attention_batch_at_848x480_stays_under_the_grid_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _sdpa_batches(monkeypatch)
    with torch.device("meta"):
        encoder = Encoder(EncoderConfig())
    # 7 frames keep t > 1 at the first attention (its stage has no temporal reduction), where the batch is
    # 424 * 240 = 101,760 locations
    mean, _ = encoder(torch.empty(1, 15, 7, 480, 848, device="meta"))
    assert tuple(mean.shape) == (1, 12, 2, 60, 106)
    assert seen, "the encoder made no attention call"
    assert max(seen) <= GRID_LIMIT, f"largest SDPA batch {max(seen)}"
    # the first attention stage covers its 101,760 rows exactly once
    assert sum(s for s in seen[:4]) >= 101_760


def test_row_chunks_cover_every_row_once() -> None:
    for rows, limit in ((1, 4), (7, 7), (8, 7), (101_760, 2**15), (65_536, 2**15)):
        chunks = row_chunks(rows, limit)
        assert chunks[0][0] == 0 and chunks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        assert all(0 < e - s <= limit for s, e in chunks)
        assert len(chunks) == -(-rows // limit)


def test_chunked_encoder_attention_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each location attends only over its own frames, so splitting the rows changes no math; what may change is
    the blocking of the qkv / out matmuls over rows. Error analysis: each output element is a dot product of
    C = 32 float32 terms (|terms| ≲ 1 here), whose rounding differs by at most C·u·Σ|a·b| (u = 2**-24) under
    another summation order, through two linears and a softmax over 5 frames: below 1e-5 absolute on outputs of
    order 1."""
    torch.manual_seed(0)
    block = AttentionBlock(32)
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    x = torch.randn(2, 32, 5, 6, 7)
    whole = block(x)
    batches = _sdpa_batches(monkeypatch)
    monkeypatch.setattr(vae_layers, "ATTENTION_MAX_ROWS", 10)
    split = block(x)
    assert max(batches) <= 10 and len(batches) == -(-2 * 6 * 7 // 10)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


def test_chunked_tiny_encoder_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden tiny encoder with attention rows split 7 at a time equals the single-call encode (same error
    analysis as above, carried through its res blocks and output projection: 1e-4 absolute on latents of
    order 1)."""
    torch.manual_seed(1)
    encoder = Encoder(EncoderConfig.tiny())
    encoder.load_state_dict(random_encoder_state_dict(EncoderConfig.tiny()))
    video = torch.rand(1, 3, 7, 32, 48) * 2 - 1
    x = add_fourier_features(video)
    whole = encoder(x)
    batches = _sdpa_batches(monkeypatch)
    monkeypatch.setattr(vae_layers, "ATTENTION_MAX_ROWS", 7)
    split = encoder(x)
    assert batches and max(batches) <= 7
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ decode

LATENT_163 = (1, 12, 28, 60, 106)  # 848x480, 163 frames


def _conv_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = F.conv3d

    def recording(x, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(x.numel())
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv3d", recording)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_plans_up_to_80gb_keep_conv_inputs_under_2_31(dtype: torch.dtype) -> None:
    cfg = DecoderConfig()
    for gb in (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80):
        tile = choose_tiles(LATENT_163, gb * GB, cfg, dtype)
        assert max_conv_input_elements(LATENT_163, tile, cfg) < CONV_INPUT_LIMIT, (gb, tile)


def test_planner_decode_tiles_keep_conv_inputs_under_2_31() -> None:
    cfg = DecoderConfig()
    for gb in (8, 12, 20, 40, 80):
        job = plan(848, 480, 163, budget_bytes=gb * GB, device="cuda", vae_dtype="bf16", compute_dtype="bf16")
        tile = TilePlan(*job.decode_tile)
        assert max_conv_input_elements(LATENT_163, tile, cfg) < CONV_INPUT_LIMIT, (gb, tile)


@pytest.mark.parametrize("gb", [20, 80])
def test_measured_conv_inputs_of_a_full_size_decode(monkeypatch: pytest.MonkeyPatch, gb: int) -> None:
    """Every conv3d call of a full-size decode of 848x480x163 (on ``meta``) gets fewer than 2**31 input elements,
    and the planner's formula is the largest of them."""
    cfg = DecoderConfig()
    tile = choose_tiles(LATENT_163, gb * GB, cfg, torch.bfloat16)
    with torch.device("meta"):
        decoder = Decoder(cfg)
    seen = _conv_inputs(monkeypatch)
    out = tiled_decode(decoder, torch.empty(LATENT_163, device="meta", dtype=torch.bfloat16), tile)
    assert tuple(out.shape) == (1, 3, 163, 480, 848)
    assert max(seen) < CONV_INPUT_LIMIT
    assert max(seen) == max_conv_input_elements(LATENT_163, tile, cfg)
