"""Structure, configuration inference, RoPE geometry, input validation and hooks of the DiT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mochi_core import DiTConfig, load_dit
from mochi_core.dit.config import swiglu_hidden
from mochi_core.dit.embeddings import AttentionPool, masked_mean
from mochi_core.dit.model import AsymmDiT
from mochi_core.dit.rope import apply_rope, rope_frequencies, rope_positions
from mochi_core.testing.dit import random_dit_state_dict, write_dit
from tests.numerics import TINY_DIT_TOL


def test_full_size_meta_model_has_the_official_keys(reference_dir: Path) -> None:
    ref = json.loads((reference_dir / "official_keys.json").read_text())["dit"]
    model = AsymmDiT(DiTConfig(), device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: tuple(s) for k, s in ref["keys"]}
    assert len(official) == 879
    assert ours == official
    assert sum(v.numel() for v in model.parameters()) == 10_027_677_744
    assert DiTConfig().num_parameters() == 10_027_677_744
    assert DiTConfig().expected_shapes() == official


def test_config_derived_sizes() -> None:
    cfg = DiTConfig()
    assert (cfg.head_dim, cfg.mlp_hidden_x, cfg.mlp_hidden_y, cfg.patch_out) == (128, 8192, 4096, 48)
    tiny = DiTConfig.tiny()
    assert (tiny.head_dim, tiny.mlp_hidden_x, tiny.mlp_hidden_y) == (48, 256, 256)
    assert swiglu_hidden(100, 4.0) == 512  # int(2*400/3) = 266 -> rounded up to 512
    with pytest.raises(Exception, match="frozen|cannot assign"):
        cfg.depth = 3  # type: ignore[misc]


def test_config_inferred_from_tensor_shapes(golden_dir: Path, tmp_path: Path) -> None:
    model = load_dit(golden_dir / "dit_tiny.safetensors")
    assert model.config == DiTConfig.tiny().with_(t5_token_length=256)  # token length has no tensor
    odd = DiTConfig(depth=3, num_heads=4, hidden_size_x=64, hidden_size_y=40, t5_feat_dim=16, mlp_hidden_x_override=96)
    m2 = load_dit(write_dit(tmp_path / "odd.safetensors", "official", random_dit_state_dict(odd)))
    assert m2.config == odd and len(m2.blocks) == 3
    x = torch.randn(1, 12, 2, 4, 6)
    with torch.inference_mode():
        out = m2(x, torch.tensor([0.5]), torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_model_is_frozen_eval(golden_dir: Path) -> None:
    model = load_dit(golden_dir / "dit_tiny.safetensors")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert isinstance(model.blocks, torch.nn.ModuleList)


def test_rope_positions_full_resolution() -> None:
    """480x848 -> pH 30, pW 53, s = sqrt(36864 / 1590) = 4.81507 (docs/numerics.md §2.3)."""
    pos = rope_positions(2, 30, 53)
    assert pos.shape == (2 * 30 * 53, 3)
    s = math.sqrt(36864 / (30 * 53))
    assert abs(s - 4.81507) < 1e-5
    torch.testing.assert_close(pos[0], torch.tensor([0.0, -14.5 * s, -26.0 * s]))
    assert abs(pos[:, 1].max().item() - 69.818) < 1e-2 and abs(pos[:, 2].max().item() - 125.19) < 1e-2
    assert pos[-1, 0].item() == 1.0  # frame index, T slowest


def test_rope_rotates_interleaved_pairs() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # (B, N, H, D) = (1, 1, 1, 4)
    angle = torch.tensor([[[math.pi / 2, 0.0]]])
    rot = torch.polar(torch.ones_like(angle), angle)
    out = apply_rope(x, rot)
    torch.testing.assert_close(out, torch.tensor([[[[-2.0, 1.0, 3.0, 4.0]]]]), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def tiny(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


def _inputs(b: int = 1, t: int = 1, h: int = 4, w: int = 6, length: int = 16) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(b, 12, t, h, w),
        torch.full((b,), 0.5),
        torch.randn(b, length, 32),
        torch.ones(b, length, dtype=torch.bool),
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: (a[0][0], *a[1:]), r"x must be a floating \(B, 12, T, H, W\) latent"),
        (lambda a: (a[0][:, :8], *a[1:]), r"x must be a floating \(B, 12, T, H, W\) latent; got \(1, 8,"),
        (lambda a: (torch.randn(1, 12, 1, 5, 6), *a[1:]), r"multiples of 2.*\(1, 12, 1, 5, 6\)"),
        (lambda a: (torch.randn(1, 12, 1, 4, 7), *a[1:]), r"multiples of 2.*\(1, 12, 1, 4, 7\)"),
        (lambda a: (a[0], torch.tensor([0.1, 0.2, 0.3]), *a[2:]), r"sigma must be a number or a \(B,\) = \(1,\)"),
        (lambda a: (*a[:2], a[2][..., :16], a[3]), r"t5_feat must be floating \(1, L, 32\)"),
        (lambda a: (*a[:3], a[3][:, :10]), r"t5_mask must be bool \(1, 16\) like t5_feat; got \(1, 10\)"),
        (lambda a: (*a[:3], a[3][0]), r"t5_mask must be bool"),
        (lambda a: (*a[:2], a[2].repeat(2, 1, 1), a[3].repeat(2, 1)), r"t5_feat must be floating \(1, L, 32\)"),
        (lambda a: (*a[:3], a[3].float() * 0.5), "t5_mask must be bool"),
        (lambda a: (a[0][:0], a[1][:0], a[2][:0], a[3][:0]), r"B, T >= 1"),
        (lambda a: (a[0][:, :, :0], *a[1:]), r"B, T >= 1.*\(1, 12, 0, 4, 6\)"),
        (lambda a: (a[0].to(torch.int64), *a[1:]), "x must be a floating"),
        (lambda a: (*a[:2], a[2].to(torch.int64), a[3]), "t5_feat must be floating"),
    ],
)
def test_broken_invariants_are_asserted(tiny, change, match: str) -> None:
    """The forward pass asserts its invariants cheaply (shapes and dtypes, no host sync) with a message that says
    what is wrong; values (sigma range, NaN) are the entry points' business: ``sample`` checks its schedule and
    conditioning, so the DiT never sees them broken."""
    args = change(_inputs())
    with pytest.raises(AssertionError, match=match):
        tiny(*args)


def test_scalar_sigma_and_int_mask_accepted(tiny) -> None:
    x, s, f, m = _inputs()
    with torch.inference_mode():
        ref = tiny(x, s, f, m)
        # bit-exact by construction: 0.5 and the int mask become the same float32 sigma and bool mask, and the same
        # buffers go through the same kernels
        torch.testing.assert_close(tiny(x, 0.5, f, m.to(torch.int64)), ref, atol=0, rtol=0)


@pytest.mark.numerics
def test_text_length_other_than_256_is_fine(tiny) -> None:
    """Only valid tokens matter: extra padding (L = 16 -> 40) changes nothing."""
    x, s, f, m = _inputs()
    m[:, 7:] = False
    f2 = torch.cat([f, torch.randn(1, 24, 32)], dim=1)
    m2 = torch.cat([m, torch.zeros(1, 24, dtype=torch.bool)], dim=1)
    with torch.inference_mode():
        a, b = tiny(x, s, f, m), tiny(x, s, f2, m2)
    # the caption pooler sums and softmaxes over 16 vs 40 positions (zeros / -inf at the padding): other reduction
    # lengths may split the same terms differently, hence the summation-order bound rather than equality
    assert torch.isfinite(b).all() and (a - b).abs().max().item() <= TINY_DIT_TOL


def test_block_hooks_see_every_block(tiny) -> None:
    """Streaming helpers wrap each entry of ``model.blocks`` with forward pre/post hooks."""
    seen: list[int] = []
    handles = [
        blk.register_forward_pre_hook(lambda mod, args, i=i: seen.append(i)) for i, blk in enumerate(tiny.blocks)
    ]
    try:
        with torch.inference_mode():
            tiny(*_inputs())
    finally:
        for h in handles:
            h.remove()
    assert seen == [0, 1]


def test_rope_angles_use_no_matmul_and_are_fp32_exact() -> None:
    """Angles are elementwise products summed in fp32 (an einsum / matmul could run in TF32 on a GPU)."""
    from torch.overrides import TorchFunctionMode

    matmuls = {torch.einsum, torch.matmul, torch.mm, torch.bmm, torch.tensordot, torch.Tensor.__matmul__}
    called: list[str] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls:
                called.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    freqs = torch.randn(3, 24, 64, generator=g) * 0.1
    with Spy():
        rot = rope_frequencies(freqs, 3, 30, 53)
    assert called == []
    pos = rope_positions(3, 30, 53).double()
    ref = (pos[:, :, None, None] * freqs.double()[None]).sum(1)  # (N, H, F) in float64
    assert rot.dtype == torch.complex64
    torch.testing.assert_close(rot.to(torch.complex128), torch.polar(torch.ones_like(ref), ref), atol=1e-5, rtol=0)


def test_masked_mean_is_fp32_and_ignores_non_finite_padding() -> None:
    x = torch.randn(2, 6, 8, dtype=torch.bfloat16)
    mask = torch.tensor([[True, True, True, False, False, False], [False] * 6])
    x[0, 3] = float("nan")
    x[0, 4] = float("inf")
    x[1] = float("nan")
    out = masked_mean(x, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], x[0, :3].float().mean(0), atol=1e-6, rtol=0)
    assert torch.equal(out[1], torch.zeros(8))  # no valid token: mean 0 (official), even over NaN padding


def test_caption_pool_takes_the_mean_from_the_fp32_features(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With a bf16 compute dtype the caption mean is still taken from the fp32 T5 features, as Genmo's code does."""
    from mochi_core.dit import embeddings

    seen: list[torch.dtype] = []
    real = embeddings.masked_mean
    monkeypatch.setattr(embeddings, "masked_mean", lambda x, m: seen.append(x.dtype) or real(x, m))
    model = load_dit(write_dit(tmp_path / "b.safetensors", "comfy_bf16"), dtype="bf16")
    with torch.inference_mode():
        out = model(*_inputs())
    assert seen == [torch.float32] and torch.isfinite(out).all()


def test_attention_pool_output_unchanged_by_nan_padding() -> None:
    pool = AttentionPool(32, 8, 16)
    for p in pool.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    clean = pool(x, mask)
    x[0, 2:] = float("nan")
    assert torch.equal(pool(x, mask), clean)  # bit-exact by construction: same buffer, NaN only where never read


@pytest.mark.numerics
def test_nan_in_padded_t5_positions_does_not_poison_the_output(tiny) -> None:
    """Padding is never read: NaN there gives the same (finite) prediction as clean padding, batched or not."""
    x, s, f, m = _inputs(b=2)
    m[0, 5:] = False
    m[1, 9:] = False
    with torch.inference_mode():
        clean = tiny(x, s, f, m)
        f[~m] = float("nan")
        dirty = tiny(x, s, f, m)
    assert torch.isfinite(dirty).all()
    assert torch.equal(dirty, clean)  # bit-exact by construction: the same buffers, padding selected away


def test_rope_theta_is_not_a_config_field() -> None:
    """The official rope_theta is unused (RoPE frequencies are learned): no dead field in our config."""
    assert not hasattr(DiTConfig(), "rope_theta")
