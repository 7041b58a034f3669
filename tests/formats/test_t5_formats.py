"""A tiny random T5 written in every supported layout loads through load_text_encoder and encodes like the
plain transformers T5EncoderModel holding the same (dequantized) weights; lossless layouts agree bit for bit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import load_text_encoder
from mochi_core.errors import UnsupportedCheckpointError
from mochi_core.formats.io import open_checkpoint
from mochi_core.formats.t5 import inspect_t5
from mochi_core.ops import CastWeights
from mochi_core.testing.t5 import T5_LAYOUTS, effective_state_dict, reference_t5, write_t5
from tests.numerics import TINY_T5_TOL

PROMPTS = ["A cat walks on the grass, realistic style.", "", "a red fox jumps over the snow at dusk"]
STORED = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_scaled": torch.float8_e4m3fn,
    "hf_sharded": torch.float32,
    "all_in_one": torch.float16,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t5_layouts")
    return {lay: write_t5(root / (lay if lay == "hf_sharded" else f"{lay}.safetensors"), lay) for lay in T5_LAYOUTS}


@pytest.fixture(scope="module")
def encoded(files, t5_tokenizer_dir) -> dict[str, tuple[torch.Tensor, torch.Tensor, object]]:
    out = {}
    for lay, path in files.items():
        enc = load_text_encoder(path, tokenizer=t5_tokenizer_dir)
        feat, mask = enc.encode(PROMPTS)
        out[lay] = (feat, mask, enc)
    return out


@pytest.mark.parametrize("layout", T5_LAYOUTS)
def test_layout_matches_transformers_with_the_same_weights(layout, files, encoded) -> None:
    feat, mask, enc = encoded[layout]
    assert feat.shape == (3, 256, 32) and feat.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [11, 0, int(mask[2].sum())]
    # storage kept as in the file; Linear weights cast on use
    q = enc.model.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(q, CastWeights) and q.weight.dtype == STORED[layout]
    assert q.weight_format == ("scaled_fp8" if layout.endswith("_scaled") else "plain")
    ids, m = enc.tokenize(PROMPTS)
    with torch.no_grad():
        ref = reference_t5(effective_state_dict(files[layout]))(input_ids=ids, attention_mask=m.long())
    err = (feat - ref.last_hidden_state).abs().max().item()
    assert err <= TINY_T5_TOL, err  # same math, weights in other buffers


def test_lossless_layouts_are_identical(encoded) -> None:
    base = encoded["fp32"][0]
    # the same values from other files (other buffers, other alignment): the summation-order bound
    assert (encoded["hf_sharded"][0] - base).abs().max().item() <= TINY_T5_TOL
    assert (encoded["all_in_one"][0] - encoded["fp16"][0]).abs().max().item() <= TINY_T5_TOL


def test_lossy_layouts_stay_close_to_fp32(encoded) -> None:
    base = encoded["fp32"][0]
    scale = base.abs().max().item()
    # bounds from the storage precision: fp16 ~1e-3 relative, bf16 ~1e-2, fp8 ~1e-1 on random tiny weights
    for layout, bound in (("fp16", 5e-3), ("bf16", 5e-2), ("fp8_e4m3fn_scaled", 0.3), ("fp8_e4m3fn", 0.4)):
        rel = (encoded[layout][0] - base).abs().max().item() / scale
        assert 0 < rel < bound, (layout, rel)


def test_format_names_and_index_path(files, encoded, t5_tokenizer_dir) -> None:
    names = {lay: enc.format_name for lay, (_, _, enc) in encoded.items()}
    assert names["fp16"] == "fp16" and names["fp8_e4m3fn"] == "fp8_e4m3fn"
    assert names["fp8_e4m3fn_scaled"] == "fp8_e4m3fn_scaled" and names["hf_sharded"] == "fp32"
    enc = load_text_encoder(files["hf_sharded"] / "model.safetensors.index.json", tokenizer=t5_tokenizer_dir)
    assert enc.shape.num_layers == 2 and enc.shape.d_model == 32


def test_scaled_fp8_converted_to_another_storage_keeps_its_values(files, encoded, t5_tokenizer_dir) -> None:
    enc = load_text_encoder(files["fp8_e4m3fn_scaled"], tokenizer=t5_tokenizer_dir, storage_dtype="fp32")
    wo = enc.model.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight_format == "plain" and wo.weight.dtype == torch.float32
    expected = effective_state_dict(files["fp8_e4m3fn_scaled"])["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    assert torch.equal(wo.weight, expected)  # bit-exact by construction: one fp32 product per element, as expected
    feat, _ = enc.encode(PROMPTS)
    assert (feat - encoded["fp8_e4m3fn_scaled"][0]).abs().max().item() <= TINY_T5_TOL


def test_non_scalar_t5_scale_refused(tmp_path: Path) -> None:
    """A scaled-fp8 T5 whose scale_weight is not one value is refused from the header, naming the key."""
    path = write_t5(tmp_path / "s.safetensors", "fp8_e4m3fn_scaled")
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if k.endswith(".scale_weight"))
    tensors[key] = torch.ones(2, 2)
    save_file(tensors, str(path))
    with (
        open_checkpoint(path) as ckpt,
        pytest.raises(
            UnsupportedCheckpointError,
            match=rf"'{re.escape(key)}' must be a single floating-point scale.*shape \[2, 2\]",
        ),
    ):
        inspect_t5(ckpt)
