"""T5 tokenizer location and rules, encoding behaviour, storage conversion and refusals (mochi_core.text)."""

from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from mochi_core import load_text_encoder
from mochi_core.errors import InvalidInputError, UnsupportedCheckpointError
from mochi_core.ops import CastWeights
from mochi_core.testing.t5 import (
    TINY_T5,
    effective_state_dict,
    reference_t5,
    tiny_t5_state_dict,
    write_t5,
)
from mochi_core.text import MAX_T5_TOKENS, T5Tokenizer, find_tokenizer
from tests.numerics import TINY_T5_TOL

CAT = "A cat walks on the grass, realistic style."
CAT_IDS = [71, 1712, 10681, 30, 8, 5956, 6, 9555, 869, 5, 1]


@pytest.fixture(scope="module")
def fp32_t5(tmp_path_factory) -> Path:
    return write_t5(tmp_path_factory.mktemp("t5") / "t5_fp32.safetensors", "fp32")


def test_known_prompt_gives_the_known_ids(t5_tokenizer_dir) -> None:
    tok = T5Tokenizer(find_tokenizer(t5_tokenizer_dir))
    assert tok.token_ids(CAT) == CAT_IDS
    ids, mask, counts = tok([CAT, "a"], MAX_T5_TOKENS)
    assert ids.shape == mask.shape == (2, 256) and mask.dtype == torch.bool
    assert ids[0, :11].tolist() == CAT_IDS and not ids[0, 11:].any()
    assert mask[0].tolist() == [True] * 11 + [False] * 245
    assert counts == [11, len(tok.token_ids("a"))]


def test_empty_prompt_is_zeroed_like_the_official_code(t5_tokenizer_dir, fp32_t5) -> None:
    enc = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir)
    ids, mask = enc.tokenize([CAT, ""])
    assert not ids[1].any() and not mask[1].any()  # ComfyUI would keep one EOS token here
    assert enc.tokenizer([""])[0][0, 0].item() == 1  # the raw tokenizer does give [EOS]
    feat, fmask = enc.encode([CAT, ""])
    assert feat.shape == (2, 256, TINY_T5.d_model) and feat.dtype == torch.float32
    assert torch.equal(fmask, mask) and torch.isfinite(feat).all()


def test_long_prompt_is_truncated_with_a_warning(t5_tokenizer_dir, fp32_t5, caplog) -> None:
    enc = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir)
    long = " ".join(["grass"] * 300)
    n = len(enc.tokenizer.token_ids(long))
    assert n > 256
    with caplog.at_level(logging.WARNING, logger="mochi_core.text"):
        ids, mask = enc.tokenize([long])
    assert mask.all() and ids[0, -1].item() == 1  # EOS kept as the last token
    assert ids[0, :255].tolist() == enc.tokenizer.token_ids(long)[:255]
    assert any(str(n) in r.getMessage() and "256" in r.getMessage() for r in caplog.records)


@pytest.mark.numerics
def test_prompts_encode_independently_of_their_batch(t5_tokenizer_dir, fp32_t5) -> None:
    enc = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir)
    one, m1 = enc.encode([CAT])
    two, m2 = enc.encode([CAT, "a dog runs"])
    assert torch.allclose(one[0], two[0], atol=TINY_T5_TOL, rtol=0) and torch.equal(m1[0], m2[0])  # other batch
    assert not torch.allclose(two[0], two[1])


def test_tokenizer_search_order(t5_tokenizer_dir, tmp_path, monkeypatch) -> None:
    assert find_tokenizer(t5_tokenizer_dir) == t5_tokenizer_dir / "tokenizer.json"
    assert find_tokenizer(t5_tokenizer_dir / "tokenizer.json") == t5_tokenizer_dir / "tokenizer.json"
    # nothing given, no env, no ComfyUI: a clear error saying where to put it
    monkeypatch.delenv("MOCHI_T5_TOKENIZER", raising=False)
    monkeypatch.delitem(sys.modules, "comfy", raising=False)
    monkeypatch.delitem(sys.modules, "folder_paths", raising=False)
    with pytest.raises(InvalidInputError) as exc:
        find_tokenizer(None)
    for words in ("--tokenizer", "MOCHI_T5_TOKENIZER", "comfy/text_encoders/t5_tokenizer", "spiece.model"):
        assert words in str(exc.value)
    # the one bundled with a running ComfyUI (found through sys.modules["comfy"].__path__, never imported)
    comfy_dir = tmp_path / "ComfyUI" / "comfy"
    shutil.copytree(t5_tokenizer_dir, comfy_dir / "text_encoders" / "t5_tokenizer")
    fake = types.ModuleType("comfy")
    fake.__path__ = [str(comfy_dir)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comfy", fake)
    assert find_tokenizer(None) == comfy_dir / "text_encoders" / "t5_tokenizer" / "tokenizer.json"
    # the environment variable wins over ComfyUI
    monkeypatch.setenv("MOCHI_T5_TOKENIZER", str(t5_tokenizer_dir))
    assert find_tokenizer(None) == t5_tokenizer_dir / "tokenizer.json"
    with pytest.raises(InvalidInputError, match="no tokenizer.json or spiece.model"):
        find_tokenizer(tmp_path / "nowhere")


def test_missing_tokenizer_fails_before_reading_weights(fp32_t5, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="tokenizer="):
        load_text_encoder(fp32_t5, tokenizer=tmp_path)


def test_sentencepiece_model_is_accepted(tmp_path) -> None:
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["a cat walks on the grass", "the dog runs in the park"] * 40))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=30,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    tok = T5Tokenizer(find_tokenizer(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    ids, mask, _ = tok(["a cat walks"], 16)
    expected = list(sp.encode("a cat walks")) + [1]
    assert ids[0, : len(expected)].tolist() == expected and int(mask.sum()) == len(expected)


def test_storage_conversion_keeps_outputs_of_the_converted_weights(t5_tokenizer_dir, fp32_t5) -> None:
    enc = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir, storage_dtype="bf16")
    q = enc.model.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(q, CastWeights) and q.weight.dtype == torch.bfloat16
    assert enc.model.encoder.final_layer_norm.weight.dtype == torch.float32  # norms stay high precision
    state = effective_state_dict(fp32_t5)
    rounded = {
        k: (
            v.to(torch.bfloat16).float() if (".SelfAttention." in k and "bias" not in k) or "DenseReluDense" in k else v
        )
        for k, v in state.items()
    }
    ids, mask = enc.tokenize([CAT])
    with torch.no_grad():
        ref = reference_t5(rounded)(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (enc.encode([CAT])[0] - ref).abs().max().item() < TINY_T5_TOL  # same bf16-rounded weights, fp32 math

    enc8 = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir, storage_dtype="fp8_e4m3fn")
    wo = enc8.model.encoder.block[1].layer[1].DenseReluDense.wo
    assert wo.weight_format == "scaled_fp8" and wo.weight.dtype == torch.float8_e4m3fn
    full = enc.encode([CAT])[0]
    assert (enc8.encode([CAT])[0] - full).abs().max().item() < 0.5 * full.abs().max().item()


def test_bad_arguments_and_files_are_refused(t5_tokenizer_dir, fp32_t5, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="fp32, bf16"):
        load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir, dtype="fp16")
    with pytest.raises(InvalidInputError, match="storage_dtype='int3'"):
        load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir, storage_dtype="int3")
    # a T5 with a tensor missing: the message names it
    from safetensors.torch import save_file

    sd = tiny_t5_state_dict()
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="block.1.layer.1.DenseReluDense.wo.weight"):
        load_text_encoder(tmp_path / "broken.safetensors", tokenizer=t5_tokenizer_dir)
    # a file of another component: named, with the loader to use
    dit = pytest.importorskip("mochi_core.testing.dit")
    path = dit.write_dit(tmp_path / "dit.safetensors", "official")
    with pytest.raises(UnsupportedCheckpointError, match="dit"):
        load_text_encoder(path, tokenizer=t5_tokenizer_dir)
    # a tokenizer whose ids do not fit a small-vocabulary encoder
    from mochi_core.formats.t5 import T5Shape

    small = T5Shape(100, 16, 4, 4, 32, 1, 32, True)
    save_file(tiny_t5_state_dict(0, small), str(tmp_path / "small.safetensors"))
    enc = load_text_encoder(tmp_path / "small.safetensors", tokenizer=t5_tokenizer_dir)
    with pytest.raises(InvalidInputError, match="vocabulary of 100"):
        enc.encode([CAT])
    with pytest.raises(InvalidInputError, match="list of strings"):
        enc.encode(CAT)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ['{"bad": ', '{"version": "1.0"}', ""])
def test_a_broken_tokenizer_json_is_refused_naming_the_file(fp32_t5, tmp_path, content) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text(content)
    # the tokenizers library raises a plain Exception here; it must arrive as InvalidInputError naming the file
    with pytest.raises(InvalidInputError) as exc:
        load_text_encoder(fp32_t5, tokenizer=tmp_path)
    assert str(bad) in str(exc.value) and "cannot be read" in str(exc.value)
    with pytest.raises(InvalidInputError, match="tokenizer file"):
        T5Tokenizer(bad)


def test_a_broken_spiece_model_is_refused_naming_the_file(tmp_path) -> None:
    pytest.importorskip("sentencepiece")
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"\x00not a sentencepiece model")
    with pytest.raises(InvalidInputError, match="spiece.model.*cannot be read"):
        T5Tokenizer(bad)


def test_non_finite_features_get_a_message_that_fits_the_dtype(t5_tokenizer_dir, fp32_t5) -> None:
    enc = load_text_encoder(fp32_t5, tokenizer=t5_tokenizer_dir)
    with torch.no_grad():
        enc.model.encoder.final_layer_norm.weight.fill_(float("inf"))
    with pytest.raises(InvalidInputError) as exc:
        enc.encode([CAT])
    msg = str(exc.value)
    # already float32: telling the user to "use float32" would be wrong; the weights are the problem
    assert "fp32" in msg and "dtype=" not in msg and "damaged" in msg
    enc.dtype = torch.bfloat16  # as a CUDA bf16 encoder reports itself
    with pytest.raises(InvalidInputError, match="computing in bf16.*dtype='fp32'"):
        enc.encode([CAT])
