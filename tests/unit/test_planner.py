"""The memory planner (mochi_core.memory.planning.planner): exact weight counts, the issue-7 targets, refusal, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import mochi_core
from mochi_core.dit.config import DiTConfig
from mochi_core.errors import DoesNotFitError, InvalidInputError
from mochi_core.memory import T5Sizes, dit_weight_bytes, parse_bytes, plan, require_fit, t5_weight_bytes
from mochi_core.memory.planning.cli import main as plan_main
from mochi_core.memory.planning.planner import decoder_weight_bytes, dit_activation_bytes

GB = 10**9


# ---------------------------------------------------------------------------------------------- weights


def test_dit_parameter_count_matches_official_keys(reference_dir) -> None:
    ref = json.loads((reference_dir / "official_keys.json").read_text())["dit"]
    other, blocks = dit_weight_bytes(DiTConfig(), "fp32")
    assert (other + sum(blocks)) // 4 == ref["num_params"] == 10_027_677_744
    ref_block0 = sum(math.prod(s) for k, s in ref["keys"] if k.startswith("blocks.0."))
    ref_block47 = sum(math.prod(s) for k, s in ref["keys"] if k.startswith("blocks.47."))
    assert blocks[0] // 4 == ref_block0 == 207_641_600
    assert blocks[47] // 4 == ref_block47 == 169_886_720


def test_t5_and_decoder_parameter_counts_match_spec() -> None:
    other, layers = t5_weight_bytes(T5Sizes(), "fp32")
    assert (other + sum(layers)) // 4 == 4_762_310_656
    assert decoder_weight_bytes(dtype="fp32") // 4 == 362_526_595
    assert decoder_weight_bytes(dtype="bf16") == 2 * 362_526_595


def test_fp8_dit_bytes_match_the_loader(tmp_path) -> None:
    """The planner's storage rule equals what load_dit actually holds after converting a real file."""
    from mochi_core import load_dit, ops
    from mochi_core.testing.dit import random_dit_state_dict, write_dit

    cfg = DiTConfig.tiny().with_(depth=3)
    path = write_dit(tmp_path / "dit.safetensors", "official", random_dit_state_dict(cfg))
    for storage in ("fp8_e4m3fn", "bf16", "q8_0"):
        model = load_dit(path, device="cpu", storage_dtype=storage)
        other, blocks = dit_weight_bytes(cfg, storage)
        held = ops.weight_nbytes(model)
        assert abs(held - (other + sum(blocks))) <= 0.01 * held, (storage, held, other + sum(blocks))


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, value",
    [("20GB", 20 * GB), ("12GiB", 12 * 2**30), ("500MB", 500 * 10**6), ("1.5GB", 1_500_000_000), ("123B", 123), ("0", None),
     (4096, 4096), ("12G", 12 * 2**30), ("8 gib", 8 * 2**30)],
)  # fmt: skip
def test_parse_bytes(text, value) -> None:
    if value is None:  # zero: only where zero is allowed (a reserve)
        assert parse_bytes(text, allow_zero=True) == 0
        return
    assert parse_bytes(text) == value


def test_a_size_string_without_unit_is_refused_not_read_as_bytes() -> None:
    """ "12" typed as a budget means gigabytes to a user; reading it as 12 bytes would say "does not fit in 0.00 GB"."""
    with pytest.raises(InvalidInputError, match=r"budget='12' has no unit: write 12GB .* 12GiB .* 12B"):
        parse_bytes("12")


@pytest.mark.parametrize("bad", ["", "GB", "12 parsecs", "-3GB", 0, -1, True, "1e3GB"])
def test_parse_bytes_rejects(bad) -> None:
    with pytest.raises(InvalidInputError, match="budget"):
        parse_bytes(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"text_tokens": -1}, r"text_tokens=-1 is not allowed: text_tokens must be an integer from 0 to 256"),
        ({"text_tokens": 257}, r"text_tokens=257 is not allowed: .* from 0 to 256"),
        ({"text_tokens": "12"}, r"text_tokens='12' is not allowed: text_tokens must be an integer"),
        ({"text_tokens": 3.0}, r"text_tokens=3.0 is not allowed: text_tokens must be an integer"),
        ({"reserve_bytes": -1}, r"reserve_bytes=-1 must be a 0 or more number of bytes"),
        ({"reserve_bytes": "lots"}, r"reserve_bytes='lots' is not a size"),
        ({"reserve_bytes": [1]}, r"reserve_bytes=\[1\] is not a size"),
        ({"batch_cfg": "no"}, r"batch_cfg='no' is not allowed: use True, False or None \(let the planner choose\)"),
        ({"batch_cfg": 2}, r"batch_cfg=2 is not allowed: use True, False or None"),
        ({"prefetch": "yes"}, r"prefetch='yes' is not allowed: use True or False"),
        ({"resident_blocks": "3"}, r"resident_blocks='3' is not allowed: .* an integer from 0 to 48"),
        ({"resident_blocks": -1}, r"resident_blocks=-1 is not allowed: .* from 0 to 48"),
        ({"resident_blocks": 49}, r"resident_blocks=49 is not allowed: .* from 0 to 48"),
        ({"resident_blocks": True}, r"resident_blocks=True is not allowed: .* an integer"),
        ({"decode_tile": "big"}, r"decode_tile='big' is not a tile"),
        ({"decode_tile": (0, 4, 4)}, r"decode_tile=\(0, 4, 4\) is not a tile.*frames must be a positive int"),
        ({"decode_tile": (1.5, 4, 4)}, r"decode_tile=\(1.5, 4, 4\) is not a tile"),
        ({"budget_bytes": None}, r"budget_bytes=None is not a size"),
        ({"budget_bytes": -5}, r"budget_bytes=-5 must be a positive number"),
        ({"device": 3}, r"device=3 is not supported.*cuda, cpu"),
        ({"dit_config": "full"}, r"dit_config must be a DiTConfig"),
        ({"t5_sizes": {"d_model": 4}}, r"t5_sizes must be a T5Sizes"),
        ({"decoder_config": 3}, r"decoder_config must be a DecoderConfig"),
        ({"compute_dtype": "fp8_e4m3fn"}, r"compute_dtype='fp8_e4m3fn' is not supported; allowed: fp32, bf16, fp16"),
        ({"attention": None}, r"attention=None is not supported"),
    ],
)
def test_plan_names_each_bad_argument(kwargs, match) -> None:
    args = {"budget_bytes": "20GB", **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        plan(848, 480, 163, **args)


@pytest.mark.parametrize("size", [("848", 480, 163), (848.0, 480, 163), (848, 480, True), (0, 480, 163)])
def test_plan_refuses_bad_sizes(size) -> None:
    with pytest.raises(InvalidInputError, match="width|height|frames"):
        plan(*size, budget_bytes="20GB")


def test_plan_accepts_torch_names_and_reserve_sizes() -> None:
    p = plan(848, 480, 163, budget_bytes="20GB", compute_dtype=torch.bfloat16, reserve_bytes="1GiB", text_tokens=0)
    assert p.compute_dtype == "bf16" and p.phase("sampling").reserve_bytes == 2**30 and p.text_tokens == 0
    assert plan(848, 480, 163, budget_bytes="20GB", reserve_bytes=0).phase("decoding").reserve_bytes == 0


def test_plan_rejects_bad_inputs() -> None:
    with pytest.raises(InvalidInputError, match="6k\\+1"):
        plan(848, 480, 100, budget_bytes="20GB")
    with pytest.raises(InvalidInputError, match="width=850 is not allowed: it must be a positive multiple of 16"):
        plan(850, 480, 163, budget_bytes="20GB")
    with pytest.raises(InvalidInputError, match="dit_storage"):
        plan(848, 480, 163, budget_bytes="20GB", dit_storage="int3")
    with pytest.raises(InvalidInputError, match="attention"):
        plan(848, 480, 163, budget_bytes="20GB", attention="magic")
    with pytest.raises(InvalidInputError, match="device"):
        plan(848, 480, 163, budget_bytes="20GB", device="tpu")


# ---------------------------------------------------------------------------------------------- targets


def test_target_20gb_whole_dit_resident() -> None:
    p = mochi_core.plan(848, 480, 163, budget_bytes=20 * GB, dit_storage="fp8_e4m3fn")
    assert p.fits and not p.streaming and p.resident_blocks == 48
    assert p.predicted_peak_bytes <= 20 * GB
    assert p.visual_tokens == 44_520 and p.latent_shape == (12, 28, 60, 106)
    # fp8 blocks + fp32 skip list: 9.93e9 block matrices at 1 byte + ~0.4 GB high precision
    assert 10.0 * GB < p.phase("sampling").weights_bytes < 10.6 * GB


def test_target_12gb_with_streaming() -> None:
    p = plan(848, 480, 163, budget_bytes=12 * GB, dit_storage="fp8_e4m3fn")
    assert p.fits and p.streaming and 0 < p.resident_blocks < 48
    assert p.predicted_peak_bytes <= 12 * GB
    # streaming is needed: the whole DiT resident does not fit 12 GB
    forced = plan(848, 480, 163, budget_bytes=12 * GB, dit_storage="fp8_e4m3fn", resident_blocks=48)
    assert not forced.fits


def test_chunked_forward_lowers_the_memory_floor() -> None:
    """848x480x163 with an fp8 DiT: chunked blocks (the default) fit in 4.5 GB; whole-sequence blocks needed
    6.07 GB. At 12 GB more blocks stay resident than the 28 of the whole-sequence model."""
    chunked = plan(848, 480, 163, budget_bytes="4.5GB", dit_storage="fp8_e4m3fn")
    assert chunked.fits and chunked.min_budget_bytes <= 4.5 * GB
    assert chunked.phase("sampling").detail["token_chunk"] == 8192
    whole = plan(848, 480, 163, budget_bytes="4.5GB", dit_storage="fp8_e4m3fn", token_chunk=None)
    assert not whole.fits and 6.0 * GB < whole.min_budget_bytes < 6.2 * GB
    at12 = plan(848, 480, 163, budget_bytes=12 * GB, dit_storage="fp8_e4m3fn")
    assert at12.fits and at12.resident_blocks > 28
    assert plan(848, 480, 163, budget_bytes=12 * GB, token_chunk=None).resident_blocks == 28
    # flash-attn runs whole sequences: no chunking modelled
    assert plan(848, 480, 163, budget_bytes="4.5GB", attention="flash").phase("sampling").detail["token_chunk"] is None
    # short sequences are not chunked at all: the same prediction either way
    a = plan(848, 480, 25, budget_bytes=12 * GB).phase("sampling").peak_bytes
    assert a == plan(848, 480, 25, budget_bytes=12 * GB, token_chunk=None).phase("sampling").peak_bytes


def test_teacache_state_is_planned() -> None:
    base = plan(848, 480, 163, budget_bytes=12 * GB).phase("sampling")
    tc = plan(848, 480, 163, budget_bytes=12 * GB, teacache=True, resident_blocks=base.detail["resident_blocks"])
    u = 44_520 * 3072 * 2  # one sample's (N, D_x) in bf16
    assert tc.phase("sampling").peak_bytes - base.peak_bytes == 6 * u
    with pytest.raises(InvalidInputError, match="token_chunk"):
        plan(848, 480, 163, budget_bytes=12 * GB, token_chunk=0)


def test_min_budget_is_tight_and_names_the_limiting_phase() -> None:
    p = plan(848, 480, 163, budget_bytes=20 * GB)
    at_min = plan(848, 480, 163, budget_bytes=p.min_budget_bytes)
    below = plan(848, 480, 163, budget_bytes=p.min_budget_bytes - 1)
    assert at_min.fits and not below.fits
    assert below.min_budget_bytes == p.min_budget_bytes
    assert p.limiting_phase in ("text_encoding", "sampling", "decoding")
    with pytest.raises(DoesNotFitError) as err:
        require_fit(below)
    assert err.value.min_budget_bytes == p.min_budget_bytes
    assert f"{p.min_budget_bytes / 1e9:.2f} GB" in str(err.value)
    assert require_fit(at_min) is at_min


@pytest.mark.parametrize(
    "forced",
    [
        {"resident_blocks": 48},
        {"resident_blocks": 20, "batch_cfg": True},
        {"batch_cfg": True},
        {"decode_tile": (28, 60, 106)},  # whole decode, no tiles
        {"decode_tile": (8, 60, 106, 0)},
    ],
)
def test_min_budget_honours_forced_choices(forced) -> None:
    """With a choice forced, the smallest budget that fits is the one with which *that* request fits: planning
    again at it fits, one byte less does not."""
    free = plan(848, 480, 163, budget_bytes=4 * GB)
    p = plan(848, 480, 163, budget_bytes=4 * GB, **forced)
    assert not p.fits
    assert p.min_budget_bytes > free.min_budget_bytes
    at_min = plan(848, 480, 163, budget_bytes=p.min_budget_bytes, **forced)
    below = plan(848, 480, 163, budget_bytes=p.min_budget_bytes - 1, **forced)
    assert at_min.fits and not below.fits
    assert at_min.min_budget_bytes == p.min_budget_bytes
    if "resident_blocks" in forced:
        assert at_min.resident_blocks == forced["resident_blocks"]
    if "batch_cfg" in forced:
        assert at_min.batch_cfg is True
    with pytest.raises(DoesNotFitError) as err:
        require_fit(below)
    assert err.value.min_budget_bytes == p.min_budget_bytes


def test_forced_decode_tile_goes_to_the_decode_as_tile() -> None:
    from mochi_core.vae.tiling import TilePlan

    chosen = plan(848, 480, 163, budget_bytes=12 * GB)
    assert chosen.tile is None and chosen.memory_budget == chosen.decode_budget_bytes > 0
    assert not chosen.decode_tile_forced
    forced = plan(848, 480, 163, budget_bytes=12 * GB, decode_tile=TilePlan(2, 20, 200, 4, "global"))
    assert forced.decode_tile_forced and forced.memory_budget is None  # the decode gets tile=, never both
    assert forced.tile == TilePlan(2, 20, 106, 4, "global")  # clamped to the 60x106 latent
    assert (
        forced.decode_tile == (2, 20, 106) and forced.decode_tiles == 14 * 4
    )  # 14 chunks of 2 latent frames x 4 rows (60 over 20, overlap 4)
    assert "(forced)" in forced.summary()
    assert plan(848, 480, 163, budget_bytes=12 * GB, decode_tile=[3, 60, 106]).tile == TilePlan(3, 60, 106, 0)
    assert plan(848, 480, 163, budget_bytes=12 * GB, decode_tile=5).tile.frames == 5


def test_messages_label_units() -> None:
    """GB means 10^9 bytes, GiB 2^30, in every figure the planner prints."""
    from mochi_core.memory import format_bytes

    assert format_bytes(12 * GB) == "12.00 GB (11.18 GiB)"
    assert format_bytes(12 * 2**30) == "12.88 GB (12.00 GiB)"
    p = plan(848, 480, 163, budget_bytes="12GiB")
    assert p.budget_bytes == 12 * 2**30
    text = p.summary()
    assert "budget 12.88 GB (12.00 GiB)" in text
    samp = p.phase("sampling")
    assert f"weights {samp.weights_bytes / GB:.2f} GB" in text and f"reserve {samp.reserve_bytes / GB:.2f} GB" in text
    assert p.to_dict()["budget"] == "12.88 GB (12.00 GiB)"
    with pytest.raises(DoesNotFitError, match=r"does not fit in 3.00 GB \(2.79 GiB\)"):
        require_fit(plan(848, 480, 163, budget_bytes="3GB"))


def test_more_budget_never_means_more_streaming() -> None:
    prev = -1
    for gb in (7, 8, 10, 12, 14, 16, 20, 24):
        p = plan(848, 480, 163, budget_bytes=gb * GB)
        assert p.fits
        assert p.resident_blocks >= prev
        prev = p.resident_blocks
        for ph in p.phases:
            assert ph.peak_bytes <= gb * GB


def test_math_attention_is_quadratic_and_does_not_fit() -> None:
    flash = plan(848, 480, 163, budget_bytes=80 * GB)
    math_p = plan(848, 480, 163, budget_bytes=80 * GB, attention="math")
    s = 44_520 + 256
    assert math_p.attention_backend == "math" and flash.attention_backend == "flash"
    assert (
        math_p.phase("sampling").workspace_bytes >= 24 * s * s * 4
    )  # the S^2 score matrix (docs/memory.md "The planner")
    assert not math_p.fits and flash.fits


def test_activation_model_scales_linearly_in_tokens_and_batch() -> None:
    cfg = DiTConfig()
    one = dit_activation_bytes(
        cfg, visual_tokens=10_000, text_tokens=256, batch=1, compute_dtype="bf16", storage="bf16"
    )
    two = dit_activation_bytes(
        cfg, visual_tokens=20_000, text_tokens=256, batch=1, compute_dtype="bf16", storage="bf16"
    )
    b2 = dit_activation_bytes(cfg, visual_tokens=10_000, text_tokens=256, batch=2, compute_dtype="bf16", storage="bf16")
    assert two["stream"] == 2 * one["stream"]
    assert b2["stream"] == 2 * one["stream"] and b2["rope"] == one["rope"]


def test_plan_feeds_the_pipeline_hook() -> None:
    p = plan(848, 480, 163, budget_bytes=12 * GB)
    assert p.dit_storage_dtype == "fp8_e4m3fn" and p.t5_storage_dtype == "fp16"
    assert p.dit_load_device == "cpu"  # streamed: load on the host, then prepare_dit installs streaming
    assert 0 < p.memory_budget < 12 * GB
    json.loads(p.to_json())


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_plan_json(capsys) -> None:
    rc = plan_main(
        [
            "plan",
            "--width",
            "848",
            "--height",
            "480",
            "--frames",
            "163",
            "--budget",
            "20GB",
            "--dit-storage",
            "fp8_e4m3fn",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["fits"] is True
    assert out["predicted_peak_bytes"] <= 20 * GB and out["resident_blocks"] == 48


def test_cli_refuses_and_names_min_budget(capsys) -> None:
    rc = plan_main(["plan", "--frames", "163", "--budget", "3GB"])
    captured = capsys.readouterr()
    assert rc == 3
    assert "smallest budget that fits" in captured.err


def test_cli_bad_budget(capsys) -> None:
    rc = plan_main(["plan", "--budget", "lots"])
    assert rc == 2 and "budget" in capsys.readouterr().err


def test_cli_reserve_accepts_sizes_and_zero(capsys) -> None:
    assert plan_main(["plan", "--budget", "20GB", "--reserve", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phases"][0]["reserve_bytes"] == 0
    assert plan_main(["plan", "--budget", "20GB", "--reserve", "1GiB", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phases"][0]["reserve_bytes"] == 2**30
    assert plan_main(["plan", "--budget", "20GB", "--reserve", "lots"]) == 2
    assert "--reserve='lots' is not a size" in capsys.readouterr().err


def test_python_m_mochi_core_plan() -> None:
    """Through the package CLI (mochi_core/cli.py registers add_plan_parser)."""
    r = subprocess.run(
        [sys.executable, "-m", "mochi_core", "plan", "--width", "848", "--height", "480", "--frames", "163",
         "--budget", "20GB", "--dit-storage", "fp8_e4m3fn", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["fits"] is True and isinstance(out["predicted_peak_bytes"], int)


def test_plan_is_fast_and_pure() -> None:
    before = torch.get_num_threads()
    p = plan(1280, 720, 163, budget_bytes="24GiB")
    assert torch.get_num_threads() == before
    assert p.visual_tokens == 28 * 45 * 80


def test_batch_prices_every_video_of_a_batched_latent() -> None:
    """``batch=2`` (a batched latent in ComfyUI): the DiT activations cover 2 videos (4 rows with batched CFG), the
    decode holds 2 latents and 2 decoded videos; weights are the same."""
    one = plan(848, 480, 31, budget_bytes="80GB", resident_blocks=48, batch_cfg=True, decode_tile=(6, 60, 106))
    two = plan(848, 480, 31, budget_bytes="80GB", resident_blocks=48, batch_cfg=True, decode_tile=(6, 60, 106), batch=2)
    s1, s2 = one.phase("sampling"), two.phase("sampling")
    assert s2.weights_bytes == s1.weights_bytes and s2.detail["batch"] == 4 and two.batch_cfg
    assert s2.activation_bytes > 1.9 * s1.activation_bytes
    d1, d2 = one.phase("decoding"), two.phase("decoding")
    assert d2.weights_bytes == d1.weights_bytes and d2.other_bytes == 2 * d1.other_bytes
    assert d2.activation_bytes > 1.9 * d1.activation_bytes
    with pytest.raises(InvalidInputError, match="batch=0 is not allowed: batch must be an integer from 1 to 64"):
        plan(848, 480, 31, budget_bytes="80GB", batch=0)
