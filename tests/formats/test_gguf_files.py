"""Real ``.gguf`` files (written by the ``gguf`` package's ``GGUFWriter``) load through ``load_dit`` /
``load_text_encoder`` like every other layout, keep their own types, and compute what the same models compute
from the dequantized weights.

Reference: the same tensors expanded by ``gguf.quants.dequantize`` (gguf-py's numpy code, not ours), saved as an
fp32 file of the ordinary layout and loaded the ordinary way. Our torch dequantization equals that reference bit
for bit in fp32 (``tests/unit/test_quants.py``) and both models run the same fp32 kernels on the same values;
only the order of a few float additions may differ (a cast-on-use weight is a fresh tensor, the plain one the
file's), so outputs must agree to 1e-5 on outputs of magnitude ~1-3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import load_dit, load_text_encoder, ops
from mochi_core.dit.config import DiTConfig
from mochi_core.errors import UnsupportedCheckpointError
from mochi_core.formats.io import open_checkpoint
from mochi_core.formats.t5 import T5Shape
from mochi_core.testing.dit import random_dit_state_dict, write_dit
from mochi_core.testing.gguf import GGUF_TYPES, gguf_state_dict, write_dit_gguf, write_gguf, write_t5_gguf
from mochi_core.testing.t5 import reference_t5, tiny_t5_state_dict

gguf = pytest.importorskip("gguf")

#: Widths that are whole 256-value K super-blocks, so every type quantizes every Linear.
K_DIT = DiTConfig(depth=2, num_heads=2, hidden_size_x=256, hidden_size_y=256, t5_feat_dim=256, t5_token_length=8)
#: A small vocabulary (driven by the tiny character tokenizer) keeps the 13 files small; the host test uses T5's.
K_T5 = T5Shape(vocab_size=512, d_model=256, d_kv=64, num_heads=4, d_ff=512, num_layers=2, num_buckets=32, gated=True)
PROMPTS = ["A cat walks on the grass, realistic style.", "", "a red fox jumps over the snow at dusk"]


def _inputs(cfg: DiTConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 2, 4, 6, generator=g)
    feat = torch.randn(2, cfg.t5_token_length, cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(2, cfg.t5_token_length, dtype=torch.bool)
    mask[0, :5], mask[1, :8] = True, True
    return x, torch.tensor([0.9, 0.3]), feat, mask


def _forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*inputs)


@pytest.fixture(scope="module")
def dit_sd() -> dict[str, torch.Tensor]:
    return random_dit_state_dict(K_DIT, seed=3)


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_dit_gguf_equals_the_dequantized_model(tmp_path: Path, dit_sd, qtype: str) -> None:
    path = write_dit_gguf(tmp_path / f"mochi-{qtype.lower()}.gguf", dit_sd, qtype)
    model = load_dit(path)
    assert model.checkpoint_format.startswith("gguf (")
    w1 = model.blocks[0].mlp_x.w1
    if qtype in ("F32", "F16", "BF16"):
        assert w1.weight_format == "plain" and w1.weight.dtype == {"F32": torch.float32}.get(qtype, w1.weight.dtype)
        assert w1.weight.dtype == {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[qtype]
    else:  # kept in the file's own blocks, expanded on use
        assert w1.weight_format == qtype.lower() and w1.weight.dtype == torch.uint8
        assert model.t5_yproj.weight_format == qtype.lower()  # embedders as the file stores them
    save_file(gguf_state_dict(path), str(tmp_path / "reference.safetensors"))
    reference = load_dit(tmp_path / "reference.safetensors")
    inputs = _inputs(K_DIT)
    out, ref = _forward(model, inputs), _forward(reference, inputs)
    assert out.abs().max() > 0.1 and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= 1e-5


def test_k_m_mix_under_comfy_prefix_without_architecture(tmp_path: Path, dit_sd) -> None:
    """A *_K_M-like file (Q4_K with Q6_K for some layers), the Comfy prefix and no architecture field; a tensor
    flattened to rows of 256 carries its real shape in ``comfy.gguf.orig_shape``."""
    mix = {r"mlp_x\.w2|attn\.proj_x": "Q6_K"}
    path = write_dit_gguf(
        tmp_path / "mochi-q4_k_m.gguf", dit_sd, "Q4_K", arch=None, prefix="model.diffusion_model.", mix=mix
    )
    with open_checkpoint(path) as ckpt:
        assert "general.architecture" not in ckpt.metadata
        info = ckpt.infos["model.diffusion_model.x_embedder.proj.weight"]
        assert info.shape == (256, 12, 2, 2) and info.quant == "q4_k"  # flattened in the file, real shape here
    model = load_dit(path)
    assert model.blocks[1].mlp_x.w2.weight_format == "q6_k" and model.blocks[1].mlp_x.w1.weight_format == "q4_k"
    assert model.x_embedder.proj.weight_format == "plain"  # rows of 48 are not whole blocks: expanded at load
    reference = {k.removeprefix("model.diffusion_model."): v for k, v in gguf_state_dict(path).items()}
    save_file(reference, str(tmp_path / "reference.safetensors"))
    inputs = _inputs(K_DIT)
    out = _forward(model, inputs)
    assert (out - _forward(load_dit(tmp_path / "reference.safetensors"), inputs)).abs().max().item() <= 1e-5


def test_storage_dtype_converts_a_gguf(tmp_path: Path, dit_sd) -> None:
    path = write_dit_gguf(tmp_path / "mochi-q6_k.gguf", dit_sd, "Q6_K")
    inputs = _inputs(K_DIT)
    kept = _forward(load_dit(path), inputs)
    bf16 = load_dit(path, storage_dtype="bf16")
    assert bf16.blocks[0].mlp_x.w1.weight.dtype == torch.bfloat16
    q8 = load_dit(path, storage_dtype="q8_0")
    assert q8.blocks[0].mlp_x.w1.weight_format == "q8_0"
    scale = kept.abs().max().item()
    # bf16 / Q8_0 re-rounding of weights ~0.05: relative 2^-9 / 1/254 per weight -> well under 2 % of the output
    for other in (bf16, q8):
        assert (_forward(other, inputs) - kept).abs().max().item() <= 0.02 * scale


def test_golden_dit_as_q8_0_gguf(tmp_path: Path, golden_dir: Path) -> None:
    """Genmo's tiny DiT written as a Q8_0 .gguf (gguf-py's own quantizer) stays close to Genmo's output.

    Bound: Q8_0 rounds each weight to a step of max|w|/127 of its 32-value block, an error of at most 1/254 of
    the block's largest weight (~0.4 %), uniform and independent, so a layer's output moves by ~0.4 %/sqrt(3) of
    its typical size (~0.25 %). The tiny model chains ~6 matmuls per block over 2 blocks plus the embedders;
    relative errors add in quadrature to ~1 %, and the largest of the 2x12x2x8x8 outputs (scale ~1.8) can sit
    ~4 standard deviations out: 0.03 (= 1.8 x 1 % x 1.7 margin) is the same bound this suite states for the
    GGUF-in-safetensors Q8_0 layout, with every 2-D tensor quantized here (embedders too), not only the blocks.
    """
    sd = load_file(str(golden_dir / "dit_tiny.safetensors"))
    cases = load_file(str(golden_dir / "dit_tiny_cases.safetensors"))
    path = write_dit_gguf(tmp_path / "mochi-q8_0.gguf", sd, "Q8_0")
    model = load_dit(path)
    assert model.blocks[0].attn.qkv_x.weight_format == "q8_0"
    assert model.blocks[0].attn.qkv_y.weight_format == "plain"  # rows of 48 values: F32 in the file
    out = _forward(model, tuple(cases[f"case_c_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")))
    err = (out - cases["case_c_out"]).abs().max().item()
    assert 0 < err <= 0.03, err


@pytest.fixture(scope="module")
def t5_sd() -> dict[str, torch.Tensor]:
    return tiny_t5_state_dict(seed=4, shape=K_T5)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from mochi_core.testing.tiny_files import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_t5_gguf_equals_the_dequantized_model(tmp_path: Path, t5_sd, tiny_tokenizer: Path, qtype: str) -> None:
    path = write_t5_gguf(tmp_path / f"t5-v1_1-xxl-encoder-{qtype}.gguf", t5_sd, qtype)
    enc = load_text_encoder(path, tokenizer=tiny_tokenizer)
    q = enc.model.encoder.block[0].layer[0].SelfAttention.q
    if qtype in ("F32", "F16", "BF16"):
        assert q.weight_format == "plain"
    else:
        assert q.weight_format == qtype.lower() and enc.format_name == "gguf_" + qtype.lower()
        assert enc.model.get_input_embeddings().quant == qtype.lower()  # embedding rows expanded on lookup
    feat, mask = enc.encode(PROMPTS)
    ids, m = enc.tokenize(PROMPTS)
    with torch.no_grad():
        ref = reference_t5(gguf_state_dict(path, t5=True), K_T5)(input_ids=ids, attention_mask=m.long())
    assert torch.isfinite(feat).all() and feat.abs().max() > 0.1
    assert (feat - ref.last_hidden_state).abs().max().item() <= 1e-5


def _tiny_file(path: Path, arch: str | None, names: list[str], qtype: str = "F32") -> Path:

    from mochi_core.testing.gguf import encode_tensor

    t = torch.randn(4, 256)
    return write_gguf(path, {n: (encode_tensor(t, qtype), qtype) for n in names}, arch=arch)


@pytest.mark.parametrize(
    ("arch", "names", "kind"),
    [
        ("llama", ["token_embd.weight", "blk.0.attn_q.weight"], "a language model"),
        ("ltxv", ["transformer_blocks.0.attn1.to_q.weight"], "another image or video diffusion model"),
        ("wan", ["blocks.0.self_attn.q.weight"], "another image or video diffusion model"),
    ],
)
def test_other_architectures_are_refused(
    tmp_path: Path, t5_tokenizer_dir: Path, arch: str, names: list[str], kind: str
) -> None:
    path = _tiny_file(tmp_path / f"{arch}-q8_0.gguf", arch, names)
    for load in (load_dit, lambda p: load_text_encoder(p, tokenizer=t5_tokenizer_dir)):
        with pytest.raises(UnsupportedCheckpointError, match=rf"{arch}-q8_0\.gguf: .*architecture '{arch}' \(.*{kind}"):
            load(path)


def test_unsupported_quant_type_is_named(tmp_path: Path) -> None:
    import numpy as np

    raw = np.zeros((4, 256 // 256 * 136), dtype=np.uint8)  # IQ4_XS: 136 bytes per 256 values
    path = write_gguf(tmp_path / "mochi-iq4_xs.gguf", {"t5_yproj.weight": (raw, "IQ4_XS")})
    with pytest.raises(
        UnsupportedCheckpointError,
        match=r"mochi-iq4_xs\.gguf: tensor 't5_yproj\.weight' is stored as "
        r"IQ4_XS.*supported GGUF types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, "
        r"Q4_K, Q5_K, Q6_K",
    ):
        open_checkpoint(path)


def test_unknown_type_id_is_named(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path / "odd.gguf", "mochi", ["t5_yproj.weight"], "Q8_0")
    data = bytearray(path.read_bytes())
    name = b"t5_yproj.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8  # after the name: n_dims (u32), two dims (u64), then the type
    assert int.from_bytes(data[at : at + 4], "little") == int(gguf.GGMLQuantizationType.Q8_0)
    data[at : at + 4] = (250).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedCheckpointError, match=r"odd\.gguf: .*type id 250, unknown.*supported types: F32"):
        open_checkpoint(path)


def test_truncated_file_is_refused(tmp_path: Path, dit_sd) -> None:
    path = write_dit_gguf(tmp_path / "mochi-q4_k_m.gguf", dit_sd, "Q4_K")
    data = path.read_bytes()
    for cut in (len(data) - 1000, 2000, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(UnsupportedCheckpointError, match=r"mochi-q4_k_m\.gguf: .*truncated"):
            load_dit(path)


def test_wrong_component_is_refused(tmp_path: Path, dit_sd, t5_sd, t5_tokenizer_dir: Path) -> None:
    t5 = write_t5_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf", t5_sd, "Q8_0")
    dit = write_dit_gguf(tmp_path / "mochi-q8_0.gguf", dit_sd, "Q8_0")
    with pytest.raises(UnsupportedCheckpointError, match="not a dit checkpoint; it holds t5"):
        load_dit(t5)
    with pytest.raises(UnsupportedCheckpointError, match="not a t5 checkpoint; it holds dit"):
        load_text_encoder(dit, tokenizer=t5_tokenizer_dir)


def test_gguf_in_safetensors_uses_the_same_block_code(tmp_path: Path) -> None:
    """Kijai's Q8_0-in-safetensors file and a .gguf holding the very same block bytes load to the same model."""
    sd = random_dit_state_dict(K_DIT, seed=5)
    st_path = write_dit(tmp_path / "k.safetensors", "gguf_q8_0", sd)
    tensors = {}
    for key, t in load_file(str(st_path)).items():
        if key.endswith(".Q8_0_qweight"):
            tensors[key.removesuffix(".Q8_0_qweight") + ".weight"] = (t.numpy(), "Q8_0")
        else:
            tensors[key] = (t.float().numpy(), "F32")
    st, gg = load_dit(st_path), load_dit(write_gguf(tmp_path / "g.gguf", tensors))
    assert st.blocks[0].mlp_x.w1.weight_format == gg.blocks[0].mlp_x.w1.weight_format == "q8_0"
    inputs = _inputs(K_DIT)
    assert torch.equal(_forward(st, inputs), _forward(gg, inputs))  # same bytes, same code path, same kernels
    assert ops.WEIGHT_FORMATS[:4] == ("plain", "scaled_fp8", "q8_0", "q4_0")


def test_planner_counts_the_bytes_of_each_gguf_type(tmp_path: Path, dit_sd, t5_sd) -> None:
    from mochi_core.memory import dit_weight_bytes
    from mochi_core.memory.planning.files import inspect_model_files
    from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae

    vae = write_comfy_vae(tmp_path / "mochi_vae.safetensors", random_decoder_state_dict(seed=1), None)
    t5 = write_t5_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q5_K_M.gguf", t5_sd, "Q5_K", mix={r"\.wo\.": "Q6_K"})
    for qtype in ("Q2_K", "Q4_K", "Q8_0", "Q5_1"):
        path = write_dit_gguf(tmp_path / f"mochi-{qtype.lower()}.gguf", dit_sd, qtype)
        files = inspect_model_files(path, t5, vae)
        assert files.dit_storage == qtype.lower() and files.t5_storage == "q6_k"  # a mix: its widest type
        _, blocks = dit_weight_bytes(files.dit_config, files.dit_storage)
        with open_checkpoint(path) as ckpt:
            in_file = [sum(i.nbytes for k, i in ckpt.infos.items() if k.startswith(f"blocks.{b}.")) for b in range(2)]
        assert blocks == in_file  # each type's real bytes per block (F32 norms and biases included)


def test_generate_plans_and_runs_with_gguf_files(tmp_path: Path, dit_sd, t5_sd, tiny_tokenizer: Path) -> None:
    """The Python API with a budget: both .gguf headers are planned (their own types) and the job runs."""
    import mochi_core
    from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae

    dit = write_dit_gguf(tmp_path / "mochi-q4_k_m.gguf", dit_sd, "Q4_K", mix={r"mlp_x\.w2": "Q6_K"})
    t5 = write_t5_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q5_K_M.gguf", t5_sd, "Q5_K")
    vae = write_comfy_vae(tmp_path / "mochi_vae.safetensors", random_decoder_state_dict(seed=1), None)
    result = mochi_core.generate(
        "a fox",
        dit=str(dit),
        vae=str(vae),
        text_encoder=str(t5),
        tokenizer=str(tiny_tokenizer),
        width=32,
        height=32,
        frames=7,
        steps=2,
        seed=1,
        device="cpu",
        budget="8GB",
    )
    assert tuple(result.frames.shape) == (7, 32, 32, 3) and torch.isfinite(torch.as_tensor(result.frames)).all()
    formats = result.summary["formats"]
    assert formats["t5"] == "gguf_q5_k" and formats["dit"].startswith("gguf (F32 x") and "Q6_K x2)" in formats["dit"]
    assert result.summary["plan"]["dit_storage"] == "q6_k" and result.summary["plan"]["t5_storage"] == "q5_k"


def _poison_first_block(path: Path, name: str) -> None:
    """Set the fp16 scale ``d`` of the first block of tensor ``name`` (Q8_0 / Q4_K: bytes 0-1) to NaN, in place."""
    reader = gguf.GGUFReader(str(path))
    (t,) = [t for t in reader.tensors if t.name == name]
    offset = int(t.data_offset)
    del reader
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = bytes.fromhex("007e")  # fp16 NaN, little-endian
    path.write_bytes(bytes(data))


def test_nan_block_scale_is_named(tmp_path: Path, dit_sd, t5_sd, tiny_tokenizer: Path) -> None:
    from mochi_core.finite import NonFiniteWeightError

    dit = write_dit_gguf(tmp_path / "mochi-q4_k_m.gguf", dit_sd, "Q4_K")
    _poison_first_block(dit, "blocks.1.mlp_x.w1.weight")
    model = load_dit(dit)  # stays memory-mapped: read at its first use
    with pytest.raises(NonFiniteWeightError, match=r"mochi-q4_k_m\.gguf, tensor blocks\.1\.mlp_x\.w1\.weight"):
        _forward(model, _inputs(K_DIT))
    t5 = write_t5_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf", t5_sd, "Q8_0")
    _poison_first_block(t5, "token_embd.weight")
    with pytest.raises(NonFiniteWeightError, match=r"t5-v1_1-xxl-encoder-Q8_0\.gguf, tensor shared\.weight"):
        load_text_encoder(t5, tokenizer=tiny_tokenizer)  # the quantized embedding is checked at load
