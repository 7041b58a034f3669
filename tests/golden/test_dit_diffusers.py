"""Second oracle: diffusers' MochiTransformer3DModel with the same tiny weights, mapped to its names.

Where the two implementations agree (everything in the model maths), outputs match to float32 rounding.
Documented differences are pinned below: diffusers' SwiGLU width rule for the text stream, its timestep
convention ((1 - sigma)·1000 instead of sigma), its key layout (q/k/v split, halves swapped), and where it writes
the text attention outputs back for masks with holes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mochi_core import load_dit
from mochi_core.testing.dit import to_diffusers_state_dict
from tests.numerics import TINY_DIT_TOL

pytestmark = pytest.mark.numerics

diffusers = pytest.importorskip("diffusers")


def _diffusers_model(sd: dict[str, torch.Tensor], *, fix_text_mlp: bool = True) -> torch.nn.Module:
    from diffusers import MochiTransformer3DModel
    from diffusers.models.attention import FeedForward

    model = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=48,
        num_layers=2,
        pooled_projection_dim=48,
        in_channels=12,
        text_embed_dim=32,
        max_sequence_length=16,
    )
    if fix_text_mlp:
        # diffusers sizes the text SwiGLU as 4·d·2//3 = 128 without the official round-up to 256 (see test below)
        model.transformer_blocks[0].ff_context = FeedForward(48, inner_dim=256, activation_fn="swiglu", bias=False)
    model.load_state_dict(to_diffusers_state_dict(sd), strict=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def weights(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "dit_tiny.safetensors"))


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "dit_tiny_cases.safetensors"))


@pytest.fixture(scope="module")
def pair(golden_dir: Path, weights: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, torch.nn.Module]:
    return load_dit(golden_dir / "dit_tiny.safetensors"), _diffusers_model(weights)


def _diff_call(model: torch.nn.Module, x, sigma, feat, mask) -> torch.Tensor:
    with torch.inference_mode():
        return model(x, feat, (1 - sigma) * 1000, mask, return_dict=False)[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", ["case_a", "case_b", "case_c", "case_d"])
def test_agrees_with_diffusers(pair, cases, case: str) -> None:
    ours, theirs = pair
    args = [cases[f"{case}_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")]
    with torch.inference_mode():
        a = ours(*args)
    b = _diff_call(theirs, *args)
    assert (a - b).abs().max().item() <= TINY_DIT_TOL  # same math, other summation order


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_difference_non_prefix_mask(pair, cases) -> None:
    """A mask with holes (never produced by the T5 tokenizer, whose padding is on the right).

    Ours follows the official packed path: the valid tokens are gathered in order and their attention outputs go
    back to those tokens, so the result equals moving the valid tokens to the front. diffusers gathers them too but
    writes the text attention outputs back to the first sum(mask) positions (F.pad at the end), i.e. to other
    tokens, so it differs for such masks. (The official B = 1 path slices the first sum(mask) tokens instead.)
    """
    ours, theirs = pair
    x, sigma, feat = cases["case_c_x"], cases["case_c_sigma"], cases["case_c_t5_feat"]
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 4, 9]] = True
    mask[1, ::2] = True
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    front = feat.gather(1, order[..., None].expand_as(feat))
    prefix = torch.arange(16)[None] < mask.sum(1, keepdim=True)
    with torch.inference_mode():
        a = ours(x, sigma, feat, mask)
        b = ours(x, sigma, front, prefix)
    assert (a - b).abs().max().item() <= TINY_DIT_TOL
    assert (_diff_call(theirs, x, sigma, front, prefix) - b).abs().max().item() <= TINY_DIT_TOL  # prefix form: agree
    assert (_diff_call(theirs, x, sigma, feat, mask) - a).abs().max().item() > 1e-3  # holes: diffusers differs


def test_difference_text_mlp_width_rule(weights) -> None:
    """diffusers builds the text SwiGLU with 4·48·2//3 = 128 hidden units; the official rule rounds up to 256, so
    diffusers cannot hold official checkpoints whose text width is not a multiple of 384 (the full 1536 is)."""
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel(
        num_attention_heads=2, attention_head_dim=48, num_layers=2, pooled_projection_dim=48, text_embed_dim=32
    )
    assert model.transformer_blocks[0].ff_context.net[0].proj.weight.shape == (256, 48)  # 2 x 128
    assert weights["blocks.0.mlp_y.w1.weight"].shape == (512, 48)  # 2 x 256
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(to_diffusers_state_dict(weights), strict=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_difference_timestep_convention(pair, cases) -> None:
    """diffusers takes the timestep (1 - sigma)·1000; feeding it sigma like ours gives a different output."""
    ours, theirs = pair
    x, sigma, feat, mask = (cases[f"case_a_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask"))
    with torch.inference_mode():
        a = ours(x, sigma, feat, mask)
        wrong = theirs(x, feat, sigma, mask, return_dict=False)[0]
    assert (a - wrong).abs().max().item() > 1e-2


def test_difference_key_layout(weights) -> None:
    """Mapping facts (docs/formats.md): fused qkv = concat of to_q/to_k/to_v; SwiGLU w1 and final modulation
    have their halves swapped ([gate-multiplier | activated] and [scale | shift] in diffusers)."""
    dsd = to_diffusers_state_dict(weights)
    # bit-exact by construction: the mapping only slices, concatenates and reorders tensors (no arithmetic)
    qkv = weights["blocks.0.attn.qkv_x.weight"]
    torch.testing.assert_close(dsd["transformer_blocks.0.attn1.to_k.weight"], qkv[96:192], atol=0, rtol=0)
    w1 = weights["blocks.0.mlp_x.w1.weight"]
    torch.testing.assert_close(dsd["transformer_blocks.0.ff.net.0.proj.weight"][:256], w1[256:], atol=0, rtol=0)
    mod = weights["final_layer.mod.bias"]
    torch.testing.assert_close(dsd["norm_out.linear.bias"][:96], mod[96:], atol=0, rtol=0)
    assert "transformer_blocks.1.norm1_context.linear_1.weight" in dsd  # last block: single text scale
