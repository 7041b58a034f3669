"""LoRA on every weight storage, with block streaming, and the refusals (tiny models written as real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import apply_loras, load_dit, load_lora, ops
from mochi_core.errors import InvalidInputError, UnsupportedCheckpointError
from mochi_core.lora import active_loras, loras_applied
from mochi_core.memory.streaming import block_nbytes, enable_block_streaming
from mochi_core.testing.dit import write_dit
from mochi_core.testing.lora import write_lora


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 12, 2, 4, 6, generator=g)
    feat = torch.randn(1, 16, 32, generator=g)
    mask = torch.arange(16)[None] < 7
    return x, torch.tensor([0.6]), feat, mask


def _run(dit: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return dit(*_inputs())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora")
    out = {fmt: write_dit(d / f"dit_{fmt}.safetensors", fmt) for fmt in ("official", "comfy_scaled_fp8", "gguf_q8_0")}
    out["genmo"] = write_lora(d / "model_100.lora.safetensors", "genmo", rank=4, alpha=8)
    out["diffusers"] = write_lora(d / "pytorch_lora_weights.safetensors", "diffusers", rank=4, alpha=8)
    return out


def test_writer_layouts_hold_the_same_update(files) -> None:
    a, b = load_lora(files["genmo"]), load_lora(files["diffusers"])
    assert (a.layout, b.layout) == ("genmo", "diffusers") and a.layers == b.layers
    pa = {p.layer: p for p in a.parts}
    for p in b.parts:
        assert p.scale == pa[p.layer].scale == 2.0
        assert torch.equal(p.up.float(), pa[p.layer].up.float()) and torch.equal(
            p.down.float(), pa[p.layer].down.float()
        )


@pytest.mark.parametrize("fmt", ["comfy_scaled_fp8", "gguf_q8_0"])
def test_quantized_storage_runtime_path_keeps_weights_as_stored(files, fmt: str) -> None:
    dit = load_dit(files[fmt])
    stored = {k: (v, v.clone()) for k, v in dit.state_dict().items()}
    base = _run(dit)
    apply_loras(dit, [(load_lora(files["genmo"]), 1.0)])
    layer = dit.blocks[0].attn.qkv_x
    assert layer.weight_format == ("scaled_fp8" if "fp8" in fmt else "q8_0")
    assert isinstance(layer.lora, ops.LowRankPath) and layer.lora.down.dtype == torch.float32
    for k, v in dit.state_dict().items():  # the low-rank factors are not in the state dict; weights untouched
        assert v.data_ptr() == stored[k][0].data_ptr() and torch.equal(v, stored[k][1]), k
    with_lora = _run(dit)
    assert (with_lora - base).abs().max().item() > 1e-3
    with pytest.raises(InvalidInputError, match=r"merge=True needs fp32, bf16 or fp16 .*merge=False"):
        apply_loras(dit, [(load_lora(files["genmo"]), 1.0)], merge=True)
    assert torch.equal(_run(dit), with_lora)  # the refused merge left the active LoRA as it was
    apply_loras(dit, [])
    assert torch.equal(_run(dit), base)


def test_linear_low_rank_path_on_q8_weight() -> None:
    """One Linear: output = x W^T (W dequantized) + x A^T B^T, W's bytes unchanged."""
    g = torch.Generator().manual_seed(1)
    lin = ops.Linear(64, 96, bias=True)
    w = torch.randn(96, 64, generator=g)
    ops.set_weight(lin, ops.quantize_q8_0(w), fmt="q8_0", shape=(96, 64))
    lin.bias.data = torch.randn(96, generator=g)
    a, b = torch.randn(8, 64, generator=g), torch.randn(96, 8, generator=g)
    x = torch.randn(3, 5, 64, generator=g)
    base = lin(x)
    lin.add_module("lora", ops.LowRankPath(a, b))
    expected = torch.nn.functional.linear(x, ops.dequantize_q8_0(lin.weight, (96, 64)), lin.bias) + (x @ a.T) @ b.T
    torch.testing.assert_close(lin(x), expected, atol=1e-4, rtol=1e-5)  # float32 sums of 64 / 8 products of O(1)
    del lin._modules["lora"]
    assert torch.equal(lin(x), base)


@pytest.mark.parametrize("resident", [0, 1])
def test_block_streaming_carries_the_lora(files, resident: int) -> None:
    """Applied before streaming, the low-rank factors are tensors of their block: streamed with it (meta while the
    block is away) and counted in its bytes; the output equals the unstreamed model's (same tensors and kernels)."""
    dit = load_dit(files["official"])
    plain_bytes = block_nbytes(dit.blocks[1])
    apply_loras(dit, [(load_lora(files["diffusers"]), 0.7)])
    expected = _run(dit)
    lora_bytes = sum(t.numel() * t.element_size() for t in dit.blocks[1].attn.qkv_x.lora.buffers())
    assert block_nbytes(dit.blocks[1]) > plain_bytes + lora_bytes - 1
    handle = enable_block_streaming(dit, resident, device="cpu", prefetch=True)
    try:
        assert dit.blocks[1].attn.qkv_x.lora.down.is_meta  # block 1 is streamed: its LoRA went with it
        with pytest.raises(InvalidInputError, match="block streaming is installed"):
            apply_loras(dit, [])
        assert torch.equal(_run(dit), expected)
        assert handle.stats.loads >= 2 - resident
    finally:
        handle.remove()
    apply_loras(dit, [])
    assert active_loras(dit).layers == ()


def test_loras_applied_restores_previous_state(files) -> None:
    dit = load_dit(files["official"])
    base = _run(dit)
    lora = load_lora(files["genmo"])
    with loras_applied(dit, [(lora, 1.0)]):
        assert not torch.equal(_run(dit), base)
    assert torch.equal(_run(dit), base) and active_loras(dit).entries == ()
    with pytest.raises(RuntimeError, match="boom"), loras_applied(dit, [(lora, 1.0), (files["diffusers"], 0.5)]):
        raise RuntimeError("boom")
    assert torch.equal(_run(dit), base)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1.0", True, None])
def test_bad_strength_is_refused(files, strength) -> None:
    dit = load_dit(files["official"])
    with pytest.raises(InvalidInputError, match=r"loras\[0\] strength"):
        apply_loras(dit, [(load_lora(files["genmo"]), strength)])


def test_bad_list_is_refused(files) -> None:
    dit = load_dit(files["official"])
    lora = load_lora(files["genmo"])
    for bad in (lora, str(files["genmo"]), [(lora,)], [("not a lora object", 1.0)], [(42, 1.0)]):
        with pytest.raises((InvalidInputError, UnsupportedCheckpointError)):
            apply_loras(dit, bad)
    with pytest.raises(InvalidInputError, match="needs a DiT"):
        apply_loras(torch.nn.Linear(2, 2), [])


# ----------------------------------------------------------------------------------------------
# refusals, each naming the file
# ----------------------------------------------------------------------------------------------


def test_pickle_is_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "model_100.lora.pt"
    torch.save({"blocks.0.attn.qkv_x.lora_A": torch.zeros(4, 96)}, p)
    with pytest.raises(UnsupportedCheckpointError, match=r"model_100\.lora\.pt.*never unpickled"):
        load_lora(p)


def test_sd_style_lora_is_another_model(tmp_path: Path) -> None:
    p = tmp_path / "sdxl_style.safetensors"
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 320), f"{base}.lora_up.weight": torch.zeros(320, 4),
               f"{base}.alpha": torch.tensor(4.0)}, str(p))  # fmt: skip
    with pytest.raises(UnsupportedCheckpointError, match=r"sdxl_style\.safetensors: this is a LoRA for another model"):
        load_lora(p)


def test_flux_style_lora_is_another_model(tmp_path: Path) -> None:
    p = tmp_path / "flux_lora.safetensors"
    base = "transformer.single_transformer_blocks.0.attn.to_q"
    save_file({f"{base}.lora_A.weight": torch.zeros(4, 64), f"{base}.lora_B.weight": torch.zeros(64, 4)}, str(p))
    with pytest.raises(UnsupportedCheckpointError, match=r"flux_lora\.safetensors: this is a LoRA for another model.*"
                       r"single_transformer_blocks"):  # fmt: skip
        load_lora(p)


def test_full_checkpoint_is_not_a_lora(files) -> None:
    with pytest.raises(UnsupportedCheckpointError, match=r"dit_official\.safetensors: this is not a LoRA file.*dit"):
        load_lora(files["official"])


def test_unknown_key_in_a_mochi_lora_names_it(files, tmp_path: Path) -> None:
    tensors = load_file(str(files["diffusers"]))
    tensors["transformer.transformer_blocks.0.attn1.to_q.extra_scale"] = torch.ones(1)
    p = tmp_path / "odd.safetensors"
    save_file(tensors, str(p))
    with pytest.raises(
        UnsupportedCheckpointError, match=r"odd\.safetensors: key '.*to_q\.extra_scale' matches no layer"
    ):
        load_lora(p)
    tensors.pop("transformer.transformer_blocks.0.attn1.to_q.extra_scale")
    tensors["transformer.transformer_blocks.0.attn1.to_qq.lora_A.weight"] = torch.zeros(4, 96)
    tensors["transformer.transformer_blocks.0.attn1.to_qq.lora_B.weight"] = torch.zeros(96, 4)
    save_file(tensors, str(p))
    with pytest.raises(UnsupportedCheckpointError, match=r"odd\.safetensors: key '.*to_qq\.lora_A\.weight' matches no"):
        load_lora(p)


def test_layer_the_model_lacks_is_refused_at_apply(files, tmp_path: Path) -> None:
    """A block beyond the model's depth (a LoRA for the 48-block model on a 2-block one): named, model unchanged."""
    tensors = load_file(str(files["genmo"]))
    tensors["blocks.47.attn.qkv_x.lora_A"] = tensors["blocks.0.attn.qkv_x.lora_A"].clone()
    tensors["blocks.47.attn.qkv_x.lora_B"] = tensors["blocks.0.attn.qkv_x.lora_B"].clone()
    p = tmp_path / "deep.lora.safetensors"
    save_file(tensors, str(p), metadata={"kwargs": json.dumps({"qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 8})})
    dit = load_dit(files["official"])
    apply_loras(dit, [(load_lora(files["genmo"]), 1.0)])
    before = _run(dit)
    with pytest.raises(InvalidInputError, match=r"deep\.lora\.safetensors: key 'blocks\.47\.attn\.qkv_x\.lora_A' "
                       r"matches no layer"):  # fmt: skip
        apply_loras(dit, [(load_lora(p), 1.0)])
    assert torch.equal(_run(dit), before)


def test_shape_mismatch_names_layer_and_shapes(files, tmp_path: Path) -> None:
    tensors = load_file(str(files["genmo"]))
    tensors["blocks.1.attn.qkv_x.lora_A"] = torch.zeros(4, 80, dtype=torch.bfloat16)
    p = tmp_path / "other_width.lora.safetensors"
    save_file(tensors, str(p))
    dit = load_dit(files["official"])
    with pytest.raises(InvalidInputError, match=r"other_width\.lora\.safetensors: shapes do not fit layer "
                       r"'blocks\.1\.attn\.qkv_x': its weight is \[288, 96\].*lora_A \[4, 80\] and lora_B \[288, 4\]"):  # fmt: skip
        apply_loras(dit, [(load_lora(p), 1.0)])


def test_missing_partner_and_rank_mismatch(files, tmp_path: Path) -> None:
    tensors = load_file(str(files["genmo"]))
    b = tensors.pop("blocks.0.attn.proj_x.lora_B")
    p = tmp_path / "half.lora.safetensors"
    save_file(tensors, str(p))
    with pytest.raises(
        UnsupportedCheckpointError, match=r"half\.lora\.safetensors: .*proj_x\.lora_A' has no matching lora_B"
    ):
        load_lora(p)
    tensors["blocks.0.attn.proj_x.lora_B"] = torch.cat([b, b], dim=1)
    save_file(tensors, str(p))
    with pytest.raises(UnsupportedCheckpointError, match=r"lora_A \[4, 96\] and lora_B \[96, 8\] do not form"):
        load_lora(p)
    tensors["blocks.0.attn.proj_x.lora_B"] = b
    save_file(tensors, str(p), metadata={"kwargs": json.dumps({"out_proj_lora_rank": 16})})
    with pytest.raises(
        UnsupportedCheckpointError, match=r"has rank 4 but its kwargs metadata says out_proj_lora_rank=16"
    ):
        load_lora(p)
    save_file(tensors, str(p), metadata={"kwargs": "{not json"})
    with pytest.raises(UnsupportedCheckpointError, match=r"'kwargs' metadata is not valid JSON"):
        load_lora(p)


def test_genmo_mask_key_is_skipped_and_missing_file_named(files, tmp_path: Path) -> None:
    tensors = load_file(str(files["genmo"]))
    tensors["blocks.0.attn.qkv_proj_lora_mask"] = torch.ones(288)
    p = tmp_path / "old.lora.safetensors"
    save_file(tensors, str(p))
    assert load_lora(p).layers == load_lora(files["genmo"]).layers
    with pytest.raises(InvalidInputError, match=r"nope\.safetensors does not exist"):
        load_lora(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("layout", ["genmo", "diffusers"])
def test_header_estimate_equals_the_bytes_a_block_gains(files, layout: str) -> None:
    """The planner's header-only count equals what apply_loras adds to each block (shared q/k/v lora_A aside: the
    estimate counts a diffusers q/k/v triple as three rank-r parts at the fused height, so for this file it is an upper
    bound by 2 x r x (in + 3 D) x itemsize per fused layer)."""
    from mochi_core.lora.estimate import lora_runtime_bytes

    dit = load_dit(files["official"])
    before = [block_nbytes(b) for b in dit.blocks]
    apply_loras(dit, [(load_lora(files[layout]), 1.0), (load_lora(files["genmo"]), 0.5)])
    gained = [block_nbytes(b) - n for b, n in zip(dit.blocks, before)]
    other, blocks = lora_runtime_bytes([files[layout], files["genmo"]], depth=2, itemsize=4)
    assert other == 0
    if layout == "genmo":
        assert blocks == gained
    else:
        extra = 2 * 4 * (96 + 288) * 4 + 2 * 4 * (48 + 288) * 4  # qkv_x (in 96) and qkv_y (in 48), out 3 x 96
        fused_extra = [extra, extra]
        assert [b - g for b, g in zip(blocks, gained)] == fused_extra


def test_planner_counts_lora_bytes_in_the_blocks(tmp_path: Path) -> None:
    """A rank-8 LoRA for the full-size DiT (header only: written as a real file, Genmo's layout) adds its factors,
    in the compute dtype, to the sampling phase's weights; the plan says how much."""
    from mochi_core.dit.config import DiTConfig
    from mochi_core.memory import plan

    full = DiTConfig()
    path = write_lora(tmp_path / "full.lora.safetensors", "genmo", full, rank=8, std=0.0)
    base = plan(848, 480, 31, budget_bytes="40GB", device="cuda", dit_storage="fp8_e4m3fn")
    with_lora = plan(848, 480, 31, budget_bytes="40GB", device="cuda", dit_storage="fp8_e4m3fn", loras=[path])
    # per block: qkv_x r(3072 + 9216), qkv_y r(1536 + 9216), proj_x r(3072 + 3072), proj_y r(3072 + 1536) in bf16
    per_block = 8 * ((3072 + 9216) + (1536 + 9216) + (3072 + 3072) + (3072 + 1536)) * 2
    expected = 48 * per_block - 8 * (3072 + 1536) * 2  # the last block has no proj_y
    assert with_lora.lora_bytes == expected
    grown = with_lora.phase("sampling").weights_bytes - base.phase("sampling").weights_bytes
    assert grown == expected
    assert "LoRA factors" in with_lora.summary()
    with pytest.raises(UnsupportedCheckpointError, match="not a LoRA file"):
        plan(848, 480, 31, budget_bytes="40GB", loras=[write_dit(tmp_path / "d.safetensors", "official")])
