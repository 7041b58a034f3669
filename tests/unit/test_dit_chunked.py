"""The chunked DiT forward (long sequences, ``AsymmDiT.token_chunk``) equals the whole-sequence one.

Error analysis (float32): chunking changes which rows a matrix product sees at once, never which numbers are
added or multiplied: every visual-stream operation of a block (modulated RMSNorm, qkv / output / MLP
projections, q/k norms, RoPE, gated residuals) acts on each token alone, and the attention kernel runs once on
the same joint q/k/v in both paths. The only possible change is the summation order a BLAS kernel picks for a
dot product of length K (K <= 256 here) when the number of rows differs. A reordered K-term float32 sum moves the
result by a few units in the last place of its partial sums (relative ~2^-24 each, random signs, so ~sqrt(K)
of them, ~1e-6 relative in the worst GEMM output); the following RMS norms are scale-free, the tanh gates are
below 1 in magnitude and the two blocks and the final layer add ~10 such roundings per output element, whose
magnitude is below 2 (ulp 2.4e-7). 1e-6 (about 4 ulps of the largest output) is the bound asked for; the unchunked
path itself differs from Genmo's by ~1.5e-6 (tests/golden/test_dit_golden.py), so this is well inside the
model's own tolerance. Chunks of 16+ rows keep BLAS on its matrix kernels (a single row would switch to a
matrix-vector kernel with yet another order).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit
from mochi_core.dit.block import DEFAULT_TOKEN_CHUNK
from mochi_core.dit.config import DiTConfig
from mochi_core.testing.dit import random_dit_state_dict, write_dit
from mochi_core.testing.memory import track_memory

TOL = 1e-6


@pytest.fixture(scope="module")
def model(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "dit_tiny_cases.safetensors"))


def _out(model, cases, case: str, chunk: int | None, **kw) -> torch.Tensor:
    model.token_chunk = chunk
    try:
        with torch.inference_mode():
            return model(*(cases[f"{case}_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")), **kw)
    finally:
        model.token_chunk = DEFAULT_TOKEN_CHUNK


@pytest.mark.parametrize("case", ["case_a", "case_b", "case_c"])  # 5 / 0 valid tokens, and a B = 2 mixed batch
@pytest.mark.parametrize("chunk", [16, 20, 32])  # 72 or 288 visual tokens: exact and ragged last chunks
def test_chunked_equals_whole_sequence(model, cases, case: str, chunk: int) -> None:
    whole = _out(model, cases, case, None)
    chunked = _out(model, cases, case, chunk)
    assert chunked.shape == whole.shape
    err = (chunked - whole).abs().max().item()
    assert err <= TOL, f"{case} chunk {chunk}: {err:.2e}"
    # and still the official output (the golden DiT test's tolerance)
    assert (chunked - cases[f"{case}_out"]).abs().max().item() <= 1e-5


def test_chunking_only_applies_beyond_the_chunk(model, cases) -> None:
    """A sequence no longer than the chunk runs the whole-sequence code: bit-identical by construction."""
    n = 3 * 8 * 12 // 4  # case_a: 3 latent frames of 8x12, patch 2
    assert torch.equal(_out(model, cases, "case_a", n), _out(model, cases, "case_a", None))


def test_skip_blocks_pass_the_stream_through(model, cases) -> None:
    """Skipping every block leaves the final layer on the embedded input; skipping none is the plain forward."""
    args = [cases[f"case_a_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")]
    with torch.inference_mode():
        plain = model(*args)
        assert torch.equal(model(*args, skip_blocks=()), plain)
        none = model(*args, skip_blocks=(0, 1))
        x, sigma, feat, mask = args
        c = torch.nn.functional.silu(
            model.t_embedder(1.0 - sigma, torch.float32) + model.t5_y_embedder(feat, mask, torch.float32)
        )
        want = model._unpatchify(model.final_layer(model.x_embedder(x), c), *x.shape[:1], *x.shape[2:])
    assert torch.equal(none, want)
    assert not torch.equal(none, plain)


@torch.no_grad()
def test_chunked_forward_needs_less_memory(tmp_path) -> None:
    """Mid-sized model, 768 visual tokens: the chunked forward's tensor peak is well below the whole one's
    (whole: ~15 B·N·D_x plus the 2·F_x-wide MLP hidden; chunked: ~5 B·N·D_x plus chunk temporaries)."""
    torch.set_num_threads(2)
    cfg = DiTConfig(depth=2, num_heads=4, hidden_size_x=256, hidden_size_y=128, t5_feat_dim=64, t5_token_length=16)
    model = load_dit(write_dit(tmp_path / "d.safetensors", "official", random_dit_state_dict(cfg)))
    x = torch.randn(1, 12, 3, 32, 32)  # 3 * 16 * 16 = 768 tokens
    feat, mask = torch.randn(1, 16, 64), torch.ones(1, 16, dtype=torch.bool)
    peaks = {}
    outs = {}
    for chunk in (None, 128):
        model.token_chunk = chunk
        outs[chunk] = model(x, torch.tensor([0.7]), feat, mask)  # warm-up
        with track_memory(rss=False) as rep:
            model(x, torch.tensor([0.7]), feat, mask)
        peaks[chunk] = rep.tensor_peak_bytes
    assert (outs[128] - outs[None]).abs().max().item() <= TOL * max(1.0, outs[None].abs().max().item())
    assert peaks[128] < 0.75 * peaks[None], peaks
