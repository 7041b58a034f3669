"""LoRA outputs reproduce Genmo's own (shared/golden/lora): both file layouts, run-time path and merge, removal.

The golden folder holds a rank-4, alpha-8 LoRA for the tiny golden DiT in Genmo's fine-tuner format and the same
deltas in the diffusers / peft format (alpha only in the ``lora_adapter_metadata``), and the official forward
outputs with the LoRA active (unmerged), merged, and disabled. Files are loaded through ``load_lora`` /
``apply_loras`` exactly as a user's.

Tolerances: the summation-order bound of the tiny DiT (tests/numerics.py, 7.0e-5), which also covers comparisons
between runs whose merged weights were rounded differently: the LoRA adds rank-4 matmuls whose float32 rounding
(scale folded into lora_B before instead of after the product) is ~1e-7 relative on values below 2, far below it. The
LoRA itself moves outputs by > 1e-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mochi_core import apply_loras, load_dit, load_lora
from mochi_core.lora import active_loras
from tests.numerics import TINY_DIT_TOL

TOL = TINY_DIT_TOL

pytestmark = pytest.mark.numerics
CASES = ("case_a", "case_d")
LAYOUT_FILES = ("lora_genmo.safetensors", "lora_diffusers.safetensors")


@pytest.fixture(scope="module")
def lora_dir(golden_dir: Path) -> Path:
    d = golden_dir / "lora"
    if not d.is_dir():
        pytest.fail(f"LoRA golden folder not found at {d}")
    return d


@pytest.fixture(scope="module")
def cases(lora_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(lora_dir / "lora_cases.safetensors"))


@pytest.fixture()
def dit(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


def _run(dit: torch.nn.Module, cases: dict[str, torch.Tensor], case: str) -> torch.Tensor:
    with torch.inference_mode():
        return dit(*(cases[f"{case}_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")))


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("merge", [False, True], ids=["runtime", "merged"])
@pytest.mark.parametrize("file", LAYOUT_FILES)
def test_lora_matches_official(dit, cases, lora_dir: Path, file: str, merge: bool) -> None:
    lora = load_lora(lora_dir / file)
    assert lora.layout == ("genmo" if "genmo" in file else "diffusers")
    assert {p.scale for p in lora.parts} == {2.0}  # alpha 8 / rank 4, from the metadata
    apply_loras(dit, [(lora, 1.0)], merge=merge)
    for case in CASES:
        out = _run(dit, cases, case)
        assert _err(out, cases[f"{case}_out_lora"]) <= TOL, case
        assert _err(out, cases[f"{case}_out_lora_merged"]) <= TOL, case


def test_diffusers_shared_qkv_is_fused(lora_dir: Path) -> None:
    """q, k, v updates with one shared lora_A become one rank-4 update of the fused qkv weight (exact)."""
    lora = load_lora(lora_dir / "lora_diffusers.safetensors")
    assert sorted(p.layer for p in lora.parts) == list(lora.layers) and len(lora.parts) == 7
    assert all(p.third is None and p.rank == 4 for p in lora.parts)
    genmo = {p.layer: p for p in load_lora(lora_dir / "lora_genmo.safetensors").parts}
    for p in lora.parts:
        assert torch.equal(p.up.to(torch.float32), genmo[p.layer].up.to(torch.float32)), p.layer


def test_merged_weights_match_official(dit, lora_dir: Path) -> None:
    """The merge equals Genmo's W + (lora_B @ lora_A) * 2.0 (same float32 operations; 1e-6 covers a different
    matmul blocking on another CPU: |W| < 1 and the rank-4 products are accumulated in float32)."""
    ref = load_file(str(lora_dir / "lora_merged_weights.safetensors"))
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    apply_loras(dit, [(load_lora(lora_dir / "lora_genmo.safetensors"), 1.0)], merge=True)
    after = dit.state_dict()
    for key, value in after.items():
        if key in ref:
            torch.testing.assert_close(value, ref[key], atol=1e-6, rtol=0)
        else:
            assert torch.equal(value, before[key]), key


def test_runtime_vs_merge(dit, cases, lora_dir: Path) -> None:
    lora = load_lora(lora_dir / "lora_genmo.safetensors")
    apply_loras(dit, [(lora, 0.8)])
    runtime = [_run(dit, cases, c) for c in CASES]
    apply_loras(dit, [(lora, 0.8)], merge=True)
    merged = [_run(dit, cases, c) for c in CASES]
    for a, b in zip(runtime, merged):
        assert _err(a, b) <= TOL


@pytest.mark.parametrize("merge", [False, True], ids=["runtime", "merged"])
def test_strength_zero_and_removal_give_base_exactly(dit, cases, lora_dir: Path, merge: bool) -> None:
    """Bit-exact: strength 0 adds no path, and removal puts back the very weight tensors that were loaded, so the
    same kernels run on the same values in the same order."""
    weights = {k: (v, v.clone()) for k, v in dit.state_dict().items()}
    base = [_run(dit, cases, c) for c in CASES]
    lora = load_lora(lora_dir / "lora_genmo.safetensors")
    apply_loras(dit, [(lora, 0.0)], merge=merge)
    assert all(torch.equal(a, _run(dit, cases, c)) for a, c in zip(base, CASES))
    apply_loras(dit, [(lora, 1.0), (load_lora(lora_dir / "lora_diffusers.safetensors"), -0.5)], merge=merge)
    assert not torch.equal(base[0], _run(dit, cases, CASES[0]))
    apply_loras(dit, [])
    assert active_loras(dit).entries == ()
    assert not any(n.endswith(".lora") for n, _ in dit.named_modules())
    for key, value in dit.state_dict().items():
        original, copy = weights[key]
        assert value.data_ptr() == original.data_ptr() and torch.equal(value, copy), key
    assert all(torch.equal(a, _run(dit, cases, c)) for a, c in zip(base, CASES))
    for case in CASES:  # and the base is Genmo's LoRA-disabled output
        assert _err(_run(dit, cases, case), cases[f"{case}_out_base"]) <= TOL


def test_stacked_and_negative_strengths_add_up(dit, cases, lora_dir: Path) -> None:
    """Both files hold the same deltas: genmo at 0.7 stacked with diffusers at -0.3 equals genmo alone at 0.4."""
    genmo = load_lora(lora_dir / "lora_genmo.safetensors")
    diffusers = load_lora(lora_dir / "lora_diffusers.safetensors")
    apply_loras(dit, [(genmo, 0.7), (diffusers, -0.3)])
    assert dit.blocks[0].attn.qkv_x.lora.rank == 8
    stacked = _run(dit, cases, "case_a")
    apply_loras(dit, [(genmo, 0.4)])
    single = _run(dit, cases, "case_a")
    assert _err(stacked, single) <= TOL  # float32 rounding of two rank-4 products instead of one
    assert _err(single, cases["case_a_out_base"]) > 1e-2  # the LoRA really acts


def _rewrite(src: Path, dst: Path, *, metadata: dict[str, str] | None, extra: dict[str, torch.Tensor] | None = None):
    tensors = load_file(str(src))
    tensors.update(extra or {})
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_diffusers_alpha_from_alpha_keys_or_absent(dit, cases, lora_dir: Path, tmp_path: Path) -> None:
    """``.alpha`` tensors give the same scale as the metadata; without either, scale 1 (= strength 0.5 here)."""
    src = lora_dir / "lora_diffusers.safetensors"
    with safe_open(str(src), "pt") as f:
        modules = sorted({k.removesuffix(".lora_A.weight") for k in f.keys() if k.endswith(".lora_A.weight")})
    alphas = {m + ".alpha": torch.tensor(8.0) for m in modules}
    with_alpha = load_lora(_rewrite(src, tmp_path / "alpha_keys.safetensors", metadata=None, extra=alphas))
    assert {p.scale for p in with_alpha.parts} == {2.0}
    apply_loras(dit, [(with_alpha, 1.0)])
    assert _err(_run(dit, cases, "case_a"), cases["case_a_out_lora"]) <= TOL

    bare = load_lora(_rewrite(src, tmp_path / "no_alpha.safetensors", metadata=None))
    assert {p.scale for p in bare.parts} == {1.0}
    apply_loras(dit, [(bare, 1.0)])
    unscaled = _run(dit, cases, "case_a")
    assert _err(unscaled, cases["case_a_out_lora"]) > 1e-2  # the official scale matters (README: 0.066)
    apply_loras(dit, [(load_lora(src), 0.5)])
    assert _err(unscaled, _run(dit, cases, "case_a")) <= TOL


def test_genmo_scale_follows_kwargs(dit, cases, lora_dir: Path, tmp_path: Path) -> None:
    """alpha 16 instead of 8 in the kwargs doubles the scale (= strength 2 of the original file)."""
    src = lora_dir / "lora_genmo.safetensors"
    with safe_open(str(src), "pt") as f:
        kwargs = json.loads(f.metadata()["kwargs"])
    kwargs.update(qkv_proj_lora_alpha=16, out_proj_lora_alpha=16)
    doubled = load_lora(_rewrite(src, tmp_path / "alpha16.lora.safetensors", metadata={"kwargs": json.dumps(kwargs)}))
    assert {p.scale for p in doubled.parts} == {4.0}
    apply_loras(dit, [(doubled, 1.0)])
    a = _run(dit, cases, "case_a")
    apply_loras(dit, [(load_lora(src), 2.0)])
    assert _err(a, _run(dit, cases, "case_a")) <= TOL


def test_split_qkv_with_own_lora_a(dit, cases, lora_dir: Path, tmp_path: Path) -> None:
    """A diffusers LoRA whose q, k, v have their own lora_A acts as one update of the fused qkv weight:
    W + scale * block-diagonal(B_q, B_k, B_v) @ cat(A_q, A_k, A_v) (rank 3r)."""
    g = torch.Generator().manual_seed(3)
    src = lora_dir / "lora_diffusers.safetensors"
    tensors = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    prefix = "transformer.transformer_blocks.0.attn1."
    a = [torch.randn(4, 96, generator=g) * 0.05 for _ in range(3)]
    b = [tensors[f"{prefix}to_{n}.lora_B.weight"] for n in "qkv"]
    for n, a_n in zip("qkv", a):
        tensors[f"{prefix}to_{n}.lora_A.weight"] = a_n
    save_file(tensors, str(tmp_path / "split.safetensors"), metadata=meta)
    split = load_lora(tmp_path / "split.safetensors")
    assert sorted(p.third for p in split.parts if p.layer == "blocks.0.attn.qkv_x") == [0, 1, 2]
    apply_loras(dit, [(split, 1.0)])
    assert dit.blocks[0].attn.qkv_x.lora.rank == 12
    out_split = _run(dit, cases, "case_a")

    # the same model by hand: the other layers' LoRA at run time, block 0's qkv_x update added to its weight
    others = load_lora(src)
    keep = tuple(p for p in others.parts if p.layer != "blocks.0.attn.qkv_x")
    apply_loras(dit, [(type(others)(others.name, others.path, others.layout, keep), 1.0)])
    with torch.no_grad():
        dit.blocks[0].attn.qkv_x.weight += 2.0 * torch.block_diag(*b) @ torch.cat(a)
    assert _err(out_split, _run(dit, cases, "case_a")) <= TOL
