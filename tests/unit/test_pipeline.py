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
from tests.numerics import TINY_SAMPLER_TOL

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


@pytest.mark.numerics
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
    assert torch.allclose(r.latent, z, atol=TINY_SAMPLER_TOL, rtol=0)  # batched vs separate CFG: other shapes
    from mochi_core import denormalize_latent

    frames = decoded_to_frames(load_vae(models["vae"]).decode(denormalize_latent(r.latent)))[0]
    assert torch.equal(frames, r.frames)  # bit-exact by construction: the same decode of the same latent


def test_each_model_is_released_before_the_next_phase(models, t5_tokenizer_dir) -> None:
    from mochi_core.dit import AsymmDiT

    before_t5, before_dit = _alive(TextEncoder), _alive(AsymmDiT)
    seen: dict[str, int] = {}

    def during_sampling(step, total, x0):  # the sampler's callback runs inside the sampling phase
        seen["t5_during_sampling"] = _alive(TextEncoder) - before_t5

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
        callback=during_sampling,
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
        ({"preset": "turbo"}, ["preset='turbo'", "default, fast"]),
        ({"preset": "fast"}, ["preset='fast' sets steps=8", "leave steps out"]),
        ({"teacache_threshold": -1}, ["teacache_threshold=-1"]),
        ({"max_skip_steps": -2}, ["max_skip_steps=-2"]),
        ({"stg_scale": 1.0, "stg_blocks": "a,b"}, ["stg_blocks='a,b'"]),
        ({"stg_rescale": 2}, ["stg_rescale=2"]),
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


# ----------------------------------------------------------------------------------------------
# Every argument is checked before anything loads or samples
# ----------------------------------------------------------------------------------------------


class _LoadedT5:
    """Stands for a loaded text encoder (has encode); never reached in the refusal tests."""

    def encode(self, prompts):
        raise AssertionError("encode was called")


@pytest.fixture
def no_work(monkeypatch):
    """Every loader and the sampler fail the test if reached: a refusal must come before them."""
    import mochi_core.dit
    import mochi_core.pipeline as pipeline
    import mochi_core.vae

    def boom(*a, **k):
        raise AssertionError("expensive work started before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_text_encoder", boom)
    monkeypatch.setattr(pipeline, "sample", boom)
    monkeypatch.setattr(mochi_core.dit, "load_dit", boom)
    monkeypatch.setattr(mochi_core.vae, "load_vae", boom)


LATE = [  # (kwargs, words): each was only noticed after loading or sampling before
    ({"seed": -1}, ["seed=-1", "[0, 2**64)"]),
    ({"seed": 2**64}, ["seed=18446744073709551616"]),
    ({"seed": "7"}, ["seed='7'"]),
    ({"dtype": "fp8_e4m3fn"}, ["dtype=fp8_e4m3fn", "compute dtype"]),
    ({"dtype": "int3"}, ["dtype='int3'"]),
    ({"compute_dtype": "int3"}, ["compute_dtype='int3'", "fp32, bf16, fp16"]),
    ({"compute_dtype": "fp16", "dtype": "fp16"}, ["dtype= is the earlier name of compute_dtype="]),
    ({"vae_compute_dtype": "fp8_e5m2"}, ["vae_compute_dtype=fp8_e5m2", "compute dtype"]),
    ({"vae_dtype": "fp8_e5m2"}, ["vae_dtype=fp8_e5m2", "compute dtype"]),
    ({"dit_storage_dtype": "q2_k"}, ["dit_storage_dtype=q2_k", ".gguf file's own type", "q8_0"]),
    ({"t5_storage_dtype": "int8"}, ["t5_storage_dtype='int8'"]),
    ({"vae_storage_dtype": "int8"}, ["vae_storage_dtype='int8'"]),
    ({"vae_storage_dtype": "fp8_e4m3fn"}, ["vae_storage_dtype=fp8_e4m3fn", "no fp8 scales"]),
    ({"attention": "xformers"}, ["attention='xformers'", "sdpa"]),
    (
        {"start_latent": torch.zeros(2, 12, 2, 4, 6), "denoise": 0.5},
        ["start_latent must be a floating tensor", "= (1, 12, 2, 4, 6); got shape (2, 12, 2, 4, 6)"],
    ),
    (
        {"start_latent": torch.zeros(1, 12, 3, 4, 6), "denoise": 0.5},
        ["= (1, 12, 2, 4, 6); got shape (1, 12, 3, 4, 6)"],
    ),
    (
        {"start_latent": [[0.0]], "denoise": 0.5},
        ["start_latent must be a floating tensor (B, 12, T, H, W)", "got list"],
    ),
    ({"tile": "big"}, ["tile must be"]),
    ({"tile": (0, 4, 4)}, ["tile frames"]),
    ({"memory_budget": -5}, ["memory_budget=-5", "positive number of bytes"]),
    ({"memory_budget": "8GB"}, ["memory_budget='8GB'", "positive number of bytes"]),
    ({"memory_budget": float("nan")}, ["memory_budget=nan", "positive number of bytes"]),
    ({"memory_budget": 10**9, "tile": 2}, ["tile= cannot be combined with memory_budget="]),
    ({"device": "gpu"}, ["device='gpu'", "not a device"]),
    ({"device": "cuda:x"}, ["device='cuda:x'"]),
    ({"threshold_noise": 0.9, "steps": 4}, ["threshold_noise=0.9", "too large"]),
    ({"linear_steps": 9}, ["linear_steps=9", "steps=3"]),
    ({"cfg_schedule": 2.0}, ["cfg_schedule must be a list of numbers"]),
    ({"batch_cfg": "no"}, ["batch_cfg='no'"]),
    ({"callback": 5}, ["callback must be callable"]),
    ({"decode_progress": "bar"}, ["decode_progress must be callable"]),
    (
        {"text_encoder": _LoadedT5(), "tokenizer": "t5_tokenizer"},
        ["tokenizer= is used only when text_encoder is a path"],
    ),
    ({"vae": object()}, ["vae must be a path or a model loaded with load_vae", "object"]),
    ({"dit": "no/such/dit.safetensors"}, ["dit='no/such/dit.safetensors'", "no such file"]),
    ({"tokenizer": "no/such/tokenizer"}, ["tokenizer='no/such/tokenizer'", "no tokenizer.json"]),
]


@pytest.mark.parametrize("kwargs, words", LATE)
def test_every_argument_is_checked_before_loading_or_sampling(models, kwargs, words, no_work) -> None:
    args = {"dit": models["dit"], "vae": models["vae"], "text_encoder": models["t5"], "steps": 3, "cfg": 2.0, **SIZE}
    with pytest.raises(InvalidInputError) as exc:
        generate("x", **{**args, **kwargs})
    for w in words:
        assert w in str(exc.value), str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_refused_up_front(models, no_work) -> None:
    with pytest.raises(InvalidInputError, match="device='cuda'.*CUDA is not available"):
        generate("x", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], device="cuda", **SIZE)


def test_budget_with_tile_is_refused_before_loading(models, t5_tokenizer_dir, no_work) -> None:
    with pytest.raises(InvalidInputError, match="tile= cannot be combined"):
        generate(
            "x", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], tokenizer=t5_tokenizer_dir,
            budget="64GB", tile=1, **SIZE,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"cfg": float("inf")},
        {"sigmas": [1.0, 0.5, 0.5, 0.0]},
        {"cfg_schedule": [1.0, "2"]},
        {"threshold_noise": 0.95},
        {"denoise": 2.0},
    ],
)
def test_generate_and_sample_refuse_sampling_arguments_with_the_same_check(models, kwargs, no_work) -> None:
    """One check (sampling.check_sampling_args) for both: the same bad value gives the same message."""
    from mochi_core.sampling import sample as real_sample

    base = {"steps": 3, "cfg": 2.0, **kwargs}
    with pytest.raises(InvalidInputError) as from_generate:
        generate("x", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], **SIZE, **base)
    feat = (torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError) as from_sample:
        real_sample(lambda *a: a[0], make_noise(0, **SIZE), feat, feat, **base)
    assert str(from_generate.value) == str(from_sample.value)


# ----------------------------------------------------------------------------------------------
# Caller-owned models keep their placement; failed phases release what they loaded
# ----------------------------------------------------------------------------------------------


def _streaming_plan(models):
    """A real plan for the tiny files, set to keep 1 DiT block resident and stream the others."""
    from dataclasses import replace

    from mochi_core.memory import plan_for_files

    p = plan_for_files(
        **SIZE, budget_bytes="8GB", device="cpu", dit=models["dit"], text_encoder=models["t5"], vae=models["vae"]
    )
    return replace(p, resident_blocks=1, streaming=True, batch_cfg=False)


def test_a_plan_streams_only_models_the_pipeline_loaded_and_never_changes_the_plan(models, t5_tokenizer_dir) -> None:
    """The plan is passive: generate installs the streaming it specifies on the DiT it loads itself; a caller's
    DiT keeps its placement (no streamer attached, all blocks as loaded) and the plan object is unchanged."""
    from mochi_core.dit import AsymmDiT

    plan = _streaming_plan(models)
    before = plan.to_dict()
    streamed: list[int] = []

    def during_sampling(step, total, x0):
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance on deprecated torch aliases warns
            models = [o for o in gc.get_objects() if isinstance(o, AsymmDiT)]
        streamed.extend(
            m.__dict__["_mochi_block_streamer"].resident_blocks for m in models if "_mochi_block_streamer" in m.__dict__
        )

    dit = load_dit(models["dit"])
    kw = {"vae": models["vae"], "text_encoder": models["t5"], "tokenizer": t5_tokenizer_dir, "steps": 1, "cfg": 1.0}
    generate("a cat", dit=dit, plan=plan, callback=during_sampling, **kw, **SIZE)
    assert streamed == [] and "_mochi_block_streamer" not in dit.__dict__  # the caller's DiT: untouched
    generate("a cat", dit=models["dit"], plan=plan, callback=during_sampling, **kw, **SIZE)
    assert streamed == [1]  # the DiT loaded from the path streamed as the plan said
    assert plan.to_dict() == before


def test_decoded_video_leaves_the_device_before_any_further_work(models, t5_tokenizer_dir, monkeypatch) -> None:
    import mochi_core.pipeline as pipeline

    log: list[str] = []

    class Tracked(torch.Tensor):
        """The decode's output: records when it is moved to the CPU."""

        def cpu(self, *a, **k):
            log.append("to_cpu")
            return torch.Tensor.cpu(self.as_subclass(torch.Tensor), *a, **k)

        def to(self, *a, **k):
            if "cpu" in [str(v) for v in a] + [str(k.get("device"))]:
                log.append("to_cpu")
            return torch.Tensor.to(self.as_subclass(torch.Tensor), *a, **k)

    class TrackedVAE:
        def __init__(self, vae):
            self.vae = vae

        def decode(self, latent, **kw):
            return self.vae.decode(latent, **kw).as_subclass(Tracked)

    real = pipeline.decoded_to_frames

    def spy(x):
        log.append("frames")
        assert type(x) is torch.Tensor, "float32 / clamp / layout work ran on the decode's device tensor"
        return real(x)

    monkeypatch.setattr(pipeline, "decoded_to_frames", spy)
    r = generate(
        "a cat", dit=models["dit"], vae=TrackedVAE(load_vae(models["vae"])), text_encoder=models["t5"],
        tokenizer=t5_tokenizer_dir, steps=1, cfg=1.0, **SIZE,
    )  # fmt: skip
    assert log == ["to_cpu", "frames"]
    assert type(r.frames) is torch.Tensor and r.frames.device.type == "cpu" and r.frames.shape == (7, 32, 48, 3)


def test_a_failed_text_encoding_releases_the_encoder(models, t5_tokenizer_dir, monkeypatch) -> None:
    before = _alive(TextEncoder)

    def broken(self, prompts):
        raise RuntimeError("T5 exploded")

    monkeypatch.setattr(TextEncoder, "encode", broken)
    with pytest.raises(RuntimeError, match="T5 exploded") as info:
        generate(
            "a cat", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], tokenizer=t5_tokenizer_dir, **SIZE
        )
    # the exception is still held (as ComfyUI or a caller would): it must not keep the loaded encoder alive
    assert info.value is not None and _alive(TextEncoder) == before


def test_an_interrupted_sampling_releases_the_dit(models, t5_tokenizer_dir) -> None:
    from mochi_core.dit import AsymmDiT

    before = _alive(AsymmDiT)
    with pytest.raises(MochiInterrupted) as info:
        generate(
            "a cat", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], tokenizer=t5_tokenizer_dir,
            steps=2, cfg=1.0, should_stop=lambda: True, **SIZE,
        )  # fmt: skip
    assert info.value is not None and _alive(AsymmDiT) == before


@pytest.mark.numerics
def test_numbers_of_any_kind_are_taken(models, t5_tokenizer_dir) -> None:
    """numpy scalars and one-element tensors work wherever a number is expected, and the summary holds plain
    Python values (JSON-serializable)."""
    import json

    np = pytest.importorskip("numpy")
    base = {"dit": models["dit"], "vae": models["vae"], "text_encoder": models["t5"], "tokenizer": t5_tokenizer_dir}
    ref = generate("a fox", **base, steps=2, cfg=4.5, seed=3, **SIZE)
    r = generate(
        "a fox",
        **base,
        width=np.int64(48),
        height=torch.tensor(32),
        frames=np.int32(7),
        steps=np.int64(2),
        cfg=np.float32(4.5),
        threshold_noise=torch.tensor(0.025),
        seed=np.uint64(3),
        batch_cfg=np.bool_(True),
        memory_budget=np.int64(10**9),
    )
    torch.testing.assert_close(r.latent, ref.latent, rtol=0, atol=TINY_SAMPLER_TOL)
    json.dumps(r.summary)
    assert r.summary["seed"] == 3 and type(r.summary["steps"]) is int
    sched = generate("a fox", **base, steps=2, cfg=None, cfg_schedule=np.array([4.5, 4.5]), seed=3, **SIZE)
    torch.testing.assert_close(sched.latent, ref.latent, rtol=0, atol=TINY_SAMPLER_TOL)


def test_auto_dtypes_work_with_a_budget(models, t5_tokenizer_dir) -> None:
    base = {"dit": models["dit"], "vae": models["vae"], "text_encoder": models["t5"], "tokenizer": t5_tokenizer_dir}
    r = generate(
        "a fox", **base, steps=1, cfg=1.0, dtype="auto", vae_dtype="auto", dit_storage_dtype="default",
        t5_storage_dtype="auto", budget="100GB", **SIZE,
    )  # fmt: skip
    assert r.frames.shape == (7, 32, 48, 3) and r.summary["plan"]["fits"]


@pytest.mark.parametrize("which", ["dit", "vae", "text_encoder"])
def test_a_model_file_of_the_wrong_kind_is_refused_before_any_work(models, which, no_work) -> None:
    from mochi_core.errors import UnsupportedCheckpointError

    wrong = {"dit": models["vae"], "vae": models["dit"], "text_encoder": models["vae"]}[which]
    args = {"dit": models["dit"], "vae": models["vae"], "text_encoder": models["t5"], "steps": 2, **SIZE}
    with pytest.raises((UnsupportedCheckpointError, InvalidInputError)):
        generate("x", **{**args, which: wrong})


def test_an_incomplete_dit_is_refused_with_a_budget_too(models, t5_tokenizer_dir, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from mochi_core.errors import UnsupportedCheckpointError

    sd = load_file(str(models["dit"]))
    del sd["blocks.0.mlp_x.w1.weight"]
    broken = tmp_path / "dit_missing.safetensors"
    save_file(sd, str(broken))
    args = {"vae": models["vae"], "text_encoder": models["t5"], "tokenizer": t5_tokenizer_dir, "steps": 2, **SIZE}
    for budget in (None, "10GB"):
        with pytest.raises(UnsupportedCheckpointError, match="missing"):
            generate("x", dit=broken, budget=budget, **args)


def test_text_encoder_device_is_checked(models, t5_tokenizer_dir) -> None:
    with pytest.raises(InvalidInputError, match="device='gpu'"):
        load_text_encoder(models["t5"], tokenizer=t5_tokenizer_dir, device="gpu")


@pytest.mark.parametrize("plan", [{"batch_cfg": False}, {"tile": 1}, "8GB"])
def test_a_plan_must_be_a_plan(models, t5_tokenizer_dir, no_work, plan) -> None:
    """A plan is typed (the planner's Plan): its values were checked when it was made; anything else is refused
    before any work, with what to pass instead."""
    args = {"dit": models["dit"], "vae": models["vae"], "text_encoder": models["t5"], "tokenizer": t5_tokenizer_dir}
    with pytest.raises(
        InvalidInputError,
        match=r"plan must be a Plan \(from mochi_core.plan or mochi_core.memory.plan_for_files\) or None; got (dict|str)",
    ):
        generate("x", **args, steps=2, plan=plan, **SIZE)


def test_speed_options_reach_the_sampler_and_the_summary(models, t5_tokenizer_dir) -> None:
    """generate runs TeaCache and STG as sample does, counts the passes in its summary, and preset fast sets 8
    steps with cfg 1.5 (steps / cfg left out); the default preset keeps 64 / 6.0 as defaults."""
    common = dict(dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], tokenizer=t5_tokenizer_dir, seed=3)
    r = generate(
        "a cat", steps=8, cfg=4.5, teacache_threshold=0.2, stg_scale=1.0, stg_blocks="1", batch_cfg=False,
        **common, **SIZE,
    )  # fmt: skip
    s = r.summary
    assert s["teacache_threshold"] == 0.2 and s["stg_scale"] == 1.0 and s["stg_blocks"] == [1]
    pattern = s["teacache_pattern"]
    assert len(pattern) == 8 and pattern[0] == pattern[-1] == "C"
    run, skipped = pattern.count("C"), pattern.count("s")
    assert s["dit_passes"] == 3 * run and s["dit_passes_skipped"] == 3 * skipped
    fast = generate("a cat", preset="fast", **common, **SIZE)
    assert fast.summary["steps"] == 8 and fast.summary["cfg"] == 1.5 and fast.summary["preset"] == "fast"
    assert fast.summary["dit_passes"] == 16 and fast.summary["dit_passes_skipped"] == 0
