"""generate(budget=...): the planner reads the three file headers, chooses streaming / CFG batching / decode
tiles, and a job that cannot fit is refused before any weight is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from mochi_core import DiTConfig, generate
from mochi_core.errors import DoesNotFitError, InvalidInputError
from mochi_core.memory import inspect_model_files, plan_for_files
from mochi_core.testing.dit import random_dit_state_dict, write_dit
from mochi_core.testing.t5 import TINY_T5, write_t5
from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae
from tests.numerics import TINY_DECODER_TOL, TINY_SAMPLER_TOL

SIZE = {"width": 48, "height": 32, "frames": 7}
RUN = {"steps": 2, "cfg": 4.5, "seed": 3, "device": "cpu", **SIZE}
# wide enough that the DiT blocks, not the decoder, set the memory peak (so a budget can force streaming)
CONFIG = DiTConfig.tiny().with_(depth=6, hidden_size_x=384, num_heads=4, t5_feat_dim=TINY_T5.d_model)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("budget")
    return {
        "dit": write_dit(root / "mochi_fp8_scaled.safetensors", "comfy_scaled_fp8", random_dit_state_dict(CONFIG)),
        "text_encoder": write_t5(root / "t5xxl_fp8_e4m3fn_scaled.safetensors", "fp8_e4m3fn_scaled"),
        "vae": write_comfy_vae(root / "mochi_vae.safetensors", random_decoder_state_dict(), None),
    }


def test_headers_give_configs_and_stored_formats(files) -> None:
    info = inspect_model_files(files["dit"], files["text_encoder"], files["vae"])
    assert info.dit_config.depth == 6 and info.dit_config.hidden_size_x == 384
    assert info.dit_storage == "scaled_fp8" and info.t5_storage == "scaled_fp8"
    assert info.t5_sizes.d_model == TINY_T5.d_model and info.t5_sizes.num_layers == TINY_T5.num_layers


def test_too_small_budget_is_refused_before_loading(files, t5_tokenizer_dir, monkeypatch) -> None:
    import mochi_core.dit.loader as dit_loader

    def no_load(*a, **k):  # the refusal must come from the planner, before any weight is read
        raise AssertionError("load_dit was called")

    monkeypatch.setattr(dit_loader, "load_dit", no_load)
    with pytest.raises(DoesNotFitError, match="smallest budget that fits") as info:
        generate("a fox", **files, tokenizer=t5_tokenizer_dir, budget="100KB", **RUN)
    assert info.value.min_budget_bytes > 100_000


def test_budget_needs_paths(files, t5_tokenizer_dir) -> None:
    from mochi_core import load_dit

    with pytest.raises(InvalidInputError, match="paths"):
        generate(
            "a fox",
            dit=load_dit(files["dit"]),
            vae=files["vae"],
            text_encoder=files["text_encoder"],
            tokenizer=t5_tokenizer_dir,
            budget="1GB",
            **RUN,
        )


@pytest.mark.numerics
def test_streaming_plan_gives_the_same_video(files, t5_tokenizer_dir) -> None:
    roomy = plan_for_files(**SIZE, budget_bytes="8GB", device="cpu", **files)
    assert roomy.fits and not roomy.streaming and roomy.batch_cfg
    # a budget under which the planner must stream DiT blocks (the largest on a 0.5 % grid below the sampling peak)
    sampling = roomy.phase("sampling").peak_bytes
    budget = next(
        b
        for b in range(sampling, roomy.min_budget_bytes, -max(1, sampling // 200))
        if (p := plan_for_files(**SIZE, budget_bytes=b, device="cpu", **files)).fits and p.streaming
    )
    tight = generate("a red fox", **files, tokenizer=t5_tokenizer_dir, budget=budget, **RUN)
    plan = tight.summary["plan"]
    assert plan["fits"] and plan["streaming"] and 0 <= plan["resident_blocks"] < CONFIG.depth
    # the same job with every block resident and the CFG batching the plan chose: the same numbers
    reference = generate("a red fox", **files, tokenizer=t5_tokenizer_dir, batch_cfg=plan["batch_cfg"], **RUN)
    # same math, weights read from other buffers (streamed copies): the summation-order bounds; frames are
    # (decoded + 1) / 2 of a decoder whose gain is below 1 on these weights, so the latent's error adds at most once
    assert (tight.latent - reference.latent).abs().max().item() <= TINY_SAMPLER_TOL
    assert (tight.frames - reference.frames).abs().max().item() <= TINY_SAMPLER_TOL + TINY_DECODER_TOL
