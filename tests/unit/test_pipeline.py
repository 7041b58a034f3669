"""generate(): phases wired as T5 -> sampler -> decode, each model released before the next phase, validation
before any weight is read, the planner hook, interrupt."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch

from mochi_core import MochiInterrupted, generate, load_dit, load_text_encoder, load_vae, make_noise, sample
from mochi_core.errors import InvalidInputError
from mochi_core.testing.t5 import write_t5
from mochi_core.text import TextEncoder
from mochi_core.video import decoded_to_frames

SIZE = {"width": 48, "height": 32, "frames": 7}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from mochi_core.testing.dit import write_dit
    from mochi_core.testing.vae import random_decoder_state_dict, write_official_decoder

    root = tmp_path_factory.mktemp("pipeline")
    return {
        "t5": write_t5(root / "t5_fp16.safetensors", "fp16"),
        "dit": write_dit(root / "dit.safetensors", "official"),
        # a tiny random decoder in the official key layout (32-wide stages)
        "vae": write_official_decoder(root / "decoder.safetensors", random_decoder_state_dict()),
    }


def _alive(cls: type) -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated torch aliases warns
        return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def test_generate_equals_the_phases_run_by_hand(models, t5_tokenizer_dir) -> None:
    steps_seen = []
    r = generate(
        "a red fox in the snow",
        negative_prompt="blurry",
        dit=models["dit"],
        vae=models["vae"],
        text_encoder=models["t5"],
        tokenizer=t5_tokenizer_dir,
        steps=3,
        cfg=4.5,
        seed=11,
        callback=lambda i, n, x0: steps_seen.append((i, n, tuple(x0.shape))),
        **SIZE,
    )
    assert r.frames.shape == (7, 32, 48, 3) and r.frames.dtype == torch.float32
    assert 0.0 <= r.frames.min() and r.frames.max() <= 1.0
    assert steps_seen == [(0, 3, (1, 12, 2, 4, 6)), (1, 3, (1, 12, 2, 4, 6)), (2, 3, (1, 12, 2, 4, 6))]
    s = r.summary
    assert s["seed"] == 11 and s["frames"] == 7 and s["fps"] == 30 and s["batch_cfg"] is True
    assert s["formats"] == {"t5": "fp16", "dit": "official"} and len(s["sigmas"]) == 4
    assert set(s["timings"]) >= {"text_encoding_s", "sampling_s", "decode_s", "total_s"}

    enc = load_text_encoder(models["t5"], tokenizer=t5_tokenizer_dir)
    feat, mask = enc.encode(["a red fox in the snow", "blurry"])
    dit = load_dit(models["dit"], device="cpu", dtype=torch.float32)
    z = sample(
        dit,
        make_noise(11, **SIZE),
        (feat[:1], mask[:1]),
        (feat[1:], mask[1:]),
        steps=3,
        cfg=4.5,
        batch_cfg=False,
    )
    assert torch.allclose(r.latent, z, atol=1e-5)
    from mochi_core import denormalize_latent

    frames = decoded_to_frames(load_vae(models["vae"]).decode(denormalize_latent(r.latent)))[0]
    assert torch.equal(frames, r.frames)


def test_each_model_is_released_before_the_next_phase(models, t5_tokenizer_dir) -> None:
    from mochi_core.dit import AsymmDiT

    before_t5, before_dit = _alive(TextEncoder), _alive(AsymmDiT)
    seen: dict[str, int] = {}

    def prepare_dit(model, device):
        seen["t5_during_sampling"] = _alive(TextEncoder) - before_t5
        return model

    class WatchedVAE:
        def __init__(self, vae):
            self.vae = vae

        def decode(self, latent, **kw):
            seen["dit_during_decode"] = _alive(AsymmDiT) - before_dit
            return self.vae.decode(latent, **kw)

    generate(
        "a cat",
        dit=models["dit"],
        vae=WatchedVAE(load_vae(models["vae"])),
        text_encoder=models["t5"],
        tokenizer=t5_tokenizer_dir,
        steps=1,
        cfg=1.0,
        plan={"prepare_dit": prepare_dit, "batch_cfg": False},
        **SIZE,
    )
    assert seen == {"t5_during_sampling": 0, "dit_during_decode": 0}


def test_cfg_one_encodes_no_negative_and_skips_uncond(models, t5_tokenizer_dir) -> None:
    enc = load_text_encoder(models["t5"], tokenizer=t5_tokenizer_dir)
    prompts_seen = []
    real = enc.encode
    enc.encode = lambda prompts: (prompts_seen.append(list(prompts)), real(prompts))[1]  # type: ignore[method-assign]
    r = generate("a cat", dit=models["dit"], vae=models["vae"], text_encoder=enc, steps=2, cfg=1.0, **SIZE)
    assert prompts_seen == [["a cat"]] and r.summary["batch_cfg"] is False


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"frames": 30}, ["frames=30", "25 or 31"]),
        ({"width": 50}, ["width=50", "multiple of 16"]),
        ({"height": 0}, ["height=0", "multiple of 16"]),
        ({"steps": 0}, ["steps=0", ">= 1"]),
        ({"cfg": -1}, ["cfg=-1", ">= 0"]),
        ({"sigmas": [1.0, 0.4, 0.5, 0.0]}, ["strictly decreasing"]),
        ({"sigmas": [1.0, 0.0]}, ["steps + 1 = 4"]),
        ({"denoise": 0}, ["denoise=0", "(0, 1]"]),
        ({"denoise": 0.5}, ["start_latent"]),
    ],
)
def test_inputs_are_validated_before_any_file_is_read(kwargs, words, tmp_path) -> None:
    args = {"width": 48, "height": 32, "frames": 13, "steps": 3, "cfg": 2.0, **kwargs}
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(InvalidInputError) as exc:
        generate("x", dit=missing, vae=missing, text_encoder=missing, **args)
    for w in words:
        assert w in str(exc.value)


def test_should_stop_interrupts_sampling(models, t5_tokenizer_dir) -> None:
    with pytest.raises(MochiInterrupted):
        generate(
            "a cat",
            dit=models["dit"],
            vae=models["vae"],
            text_encoder=models["t5"],
            tokenizer=t5_tokenizer_dir,
            steps=2,
            cfg=1.0,
            should_stop=lambda: True,
            **SIZE,
        )
