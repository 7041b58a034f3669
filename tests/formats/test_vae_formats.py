"""Every published VAE layout written as a real safetensors file and loaded through load_vae; refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mochi_core.errors import InvalidInputError, UnsupportedCheckpointError
from mochi_core.formats.vae import to_diffusers, vae_key_map
from mochi_core.testing.vae import (
    random_decoder_state_dict,
    random_encoder_state_dict,
    write_all_vae_formats,
    write_comfy_vae,
)
from mochi_core.vae import DecoderConfig, EncoderConfig, build_from_state_dict, load_vae
from tests.numerics import TINY_DECODER_TOL, TINY_ENCODER_TOL

ENC_CFG = EncoderConfig(channels=(64, 32, 64, 32), num_res_blocks=(1, 1, 1, 1, 1))


@pytest.fixture(scope="module")
def weights():
    return random_decoder_state_dict(seed=11), random_encoder_state_dict(ENC_CFG, seed=12)


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    return write_all_vae_formats(tmp_path_factory.mktemp("vae_formats"), *weights)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 12, 2, 3, 4, generator=g), torch.rand(1, 3, 7, 16, 16, generator=g) * 2 - 1


def _rounded(sd, dtype):
    return {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}


EXPECT = {  # format -> (has decoder, has encoder, stored dtype, layout)
    "official_decoder": (True, False, torch.float32, "official"),
    "official_encoder": (False, True, torch.float32, "official"),
    "first_release_vae": (True, False, torch.float32, "official"),
    "comfy_vae": (True, True, torch.bfloat16, "comfy"),
    "kijai_decoder_bf16": (True, False, torch.bfloat16, "official"),
    "kijai_encoder_bf16": (False, True, torch.bfloat16, "official"),
    "diffusers": (True, True, torch.float32, "diffusers"),
}


@pytest.mark.numerics
@pytest.mark.parametrize("fmt", sorted(EXPECT))
def test_format_roundtrip(fmt, files, weights, inputs):
    has_dec, has_enc, stored, layout = EXPECT[fmt]
    vae = load_vae(files[fmt])
    assert (vae.decoder is not None, vae.encoder is not None) == (has_dec, has_enc)
    assert vae.layout == layout and vae.storage_dtype == stored and vae.dtype == torch.float32
    ref = build_from_state_dict(_rounded(weights[0], stored), _rounded(weights[1], stored))
    z, video = inputs
    if has_dec:
        assert vae.decoder.config == DecoderConfig.tiny()
        assert (vae.decode(z) - ref.decode(z)).abs().max().item() <= TINY_DECODER_TOL  # other buffers
    if has_enc:
        assert vae.encoder.config == ENC_CFG
        assert (vae.encode(video) - ref.encode(video)).abs().max().item() <= TINY_ENCODER_TOL


def test_bf16_storage_is_close_to_fp32(files, inputs):
    z, _ = inputs
    fp32 = load_vae(files["official_decoder"]).decode(z)
    bf16 = load_vae(files["kijai_decoder_bf16"]).decode(z)
    err = (fp32 - bf16).abs().max().item()
    assert 0 < err < 0.05


def test_storage_dtype_request_keeps_groupnorm_high(files):
    vae = load_vae(files["official_decoder"], dtype="bf16")
    assert vae.decoder.blocks[0][1].stack[2].weight.dtype == torch.bfloat16
    assert vae.decoder.blocks[0][1].stack[0].weight.dtype == torch.float32
    assert vae.storage_dtype == torch.bfloat16


def test_comfy_all_in_one_prefix(tmp_path, weights, inputs):
    path = write_comfy_vae(tmp_path / "aio.safetensors", weights[0], None, torch.float16, outer="vae.")
    vae = load_vae(path)
    assert vae.layout == "comfy" and vae.encoder is None and vae.storage_dtype == torch.float16


def test_full_size_config_inferred_from_official_shapes(reference_dir):
    import json

    ref = json.loads((reference_dir / "official_keys.json").read_text())
    dshapes = {k: s for k, s in ref["vae_decoder"]["keys"]}
    eshapes = {k: s for k, s in ref["vae_encoder"]["keys"]}
    assert DecoderConfig.from_shapes(dshapes) == DecoderConfig()
    assert EncoderConfig.from_shapes(eshapes) == EncoderConfig()
    from mochi_core.vae import Decoder, Encoder

    with torch.device("meta"):
        dec, enc = Decoder(DecoderConfig()), Encoder(EncoderConfig())
    assert {k: list(v.shape) for k, v in dec.state_dict().items()} == dshapes
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == eshapes
    assert sum(v.numel() for v in dec.state_dict().values()) == 362_526_595
    assert sum(v.numel() for v in enc.state_dict().values()) == 97_222_016
    # diffusers mapping covers every full-size key both ways
    meta = {k: torch.empty(s, device="meta") for k, s in dshapes.items()}
    emeta = {k: torch.empty(s, device="meta") for k, s in eshapes.items()}
    kmap = vae_key_map(to_diffusers(meta, emeta).keys())
    assert kmap.layout == "diffusers" and set(kmap.decoder) == set(dshapes) and set(kmap.encoder) == set(eshapes)


# ------------------------------------------------------------------------------------------------ refusals


def test_refuses_dit_file(tmp_path):
    p = tmp_path / "dit.safetensors"
    save_file({"t5_yproj.weight": torch.zeros(4, 4), "blocks.0.attn.qkv_x.weight": torch.zeros(6, 2)}, str(p))
    with pytest.raises(UnsupportedCheckpointError, match="not a Mochi VAE.*load_dit"):
        load_vae(p)


def test_refuses_t5_file(tmp_path):
    p = tmp_path / "t5.safetensors"
    save_file({"encoder.final_layer_norm.weight": torch.zeros(4), "shared.weight": torch.zeros(4, 4)}, str(p))
    with pytest.raises(UnsupportedCheckpointError, match="load_text_encoder"):
        load_vae(p)


def test_refuses_unknown_layout(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(p))
    with pytest.raises(UnsupportedCheckpointError, match="unknown VAE checkpoint layout"):
        load_vae(p)


def test_refuses_truncated_file(files, tmp_path):
    data = files["official_decoder"].read_bytes()
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UnsupportedCheckpointError, match="truncated"):
        load_vae(p)


def test_refuses_pickle(tmp_path, weights):
    p = tmp_path / "decoder.pt"
    torch.save(weights[0], p)
    with pytest.raises(UnsupportedCheckpointError, match="pickle"):
        load_vae(p)


def test_refuses_missing_and_misshapen_tensors(tmp_path, weights):
    sd = dict(weights[0])
    sd.pop("blocks.2.blocks.0.stack.5.bias")
    p = tmp_path / "missing.safetensors"
    save_file(sd, str(p))
    with pytest.raises(UnsupportedCheckpointError, match="missing"):
        load_vae(p)
    sd = dict(weights[0])
    sd["blocks.0.1.stack.2.weight"] = torch.zeros(32, 32, 3, 3, 1)
    p = tmp_path / "shape.safetensors"
    save_file(sd, str(p))
    with pytest.raises(UnsupportedCheckpointError, match="shape"):
        load_vae(p)


def test_bad_dtype_names(files):
    with pytest.raises(InvalidInputError, match="allowed"):
        load_vae(files["official_decoder"], dtype="int8")
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        load_vae(files["official_decoder"], compute_dtype="fp8_e4m3fn")


@pytest.mark.parametrize(
    "device, match",
    [
        ("gpu", r"device='gpu' is not a device \('gpu' is spelled 'cuda'\); allowed: cpu"),
        ("cuda:99", r"device='cuda:99'"),
        (3.5, r"device must be a device name or torch.device"),
        ("banana", r"device='banana' is not a device; allowed: cpu"),
    ],
)
def test_bad_device_refused_before_the_file_is_read(tmp_path, device, match):
    """The device is checked first: the (missing) file is never opened, and the error names ``device``."""
    with pytest.raises(InvalidInputError, match=match):
        load_vae(tmp_path / "missing.safetensors", device=device)


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "fp8_e5m2", torch.float8_e4m3fn])
def test_fp8_vae_storage_refused(files, storage):
    """fp8 has no scales in the VAE (every conv weight and bias would be stored unscaled): refused, naming the
    allowed storage dtypes, before the file is read."""
    with pytest.raises(InvalidInputError, match=r"dtype=fp8_e[45]m[32].* not a VAE storage dtype.*fp32, bf16, fp16"):
        load_vae(files["official_decoder"], dtype=storage)


def test_vae_storage_and_compute_dtypes_that_work(files):
    vae = load_vae(files["official_decoder"], dtype="bf16", compute_dtype="float32")
    assert vae.storage_dtype == torch.bfloat16 and vae.dtype == torch.float32
    with pytest.raises(InvalidInputError, match=r"compute_dtype=fp8_e4m3fn cannot be a compute dtype"):
        load_vae(files["official_decoder"], compute_dtype="fp8_e4m3fn")
    with pytest.raises(InvalidInputError, match=r"dtype=fp8_e5m2 cannot be a compute dtype"):
        vae.to("cpu", torch.float8_e5m2)
    with pytest.raises(InvalidInputError, match="device='gpu'"):
        vae.to("gpu")
    assert vae.device == torch.device("cpu") and vae.dtype == torch.float32  # refused moves change nothing
    assert vae.to("cpu", "bf16").dtype == torch.bfloat16
