"""The node layer without ComfyUI: import isolation, node metadata, conditioning, sampler, decode retry, placement."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from nodes.conditioning import conditioning_to_t5, make_conditioning  # noqa: E402
from nodes.host import latent_to_rgb  # noqa: E402
from nodes.sampler import check_sampler_inputs  # noqa: E402
from nodes.vae import MochiVAEDecodeTiled, images_to_video, video_to_images  # noqa: E402
from tests.numerics import TINY_DECODER_TOL, TINY_SAMPLER_TOL  # noqa: E402

WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")


def test_import_nodes_needs_no_comfyui() -> None:
    code = (
        "import sys, nodes\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'latent_preview', 'comfy_api', 'server')]\n"
        "assert not bad, bad\n"
        "assert len(nodes.NODE_CLASS_MAPPINGS) >= 8\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_only_host_module_mentions_comfyui_imports() -> None:
    for path in (REPO / "nodes").glob("*.py"):
        text = path.read_text()
        if path.name == "host.py":
            continue
        for banned in ("import comfy", "from comfy", "import folder_paths", "import latent_preview"):
            assert banned not in text, f"{path.name} imports ComfyUI ({banned})"


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_metadata_is_complete(node_id: str) -> None:
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("Mochi") and NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("Mochi ")
    assert cls.CATEGORY.startswith("Mochi/") and cls.CATEGORY == cls.CATEGORY.lower().replace("mochi/", "Mochi/", 1)
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) and all(cls.OUTPUT_TOOLTIPS)
    assert callable(getattr(cls, cls.FUNCTION))
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            if entry[0] in ("INT", "FLOAT"):
                assert entry[1]["min"] <= entry[1]["default"] <= entry[1]["max"], (
                    f"{node_id}.{name} default out of range"
                )


def test_display_names_and_functions_are_unique() -> None:
    assert len(set(NODE_DISPLAY_NAME_MAPPINGS.values())) == len(NODE_DISPLAY_NAME_MAPPINGS)


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((848, 480, 30, 64, 0), "frames=30 is not allowed"),
        ((850, 480, 31, 64, 0), "width=850 is not allowed"),
        ((848, 470, 31, 64, 0), "height=470"),
        ((848, 480, 31, 0, 0), "steps=0"),
        ((848, 480, 31, 8, 8), "linear_steps=8 is not allowed with steps=8"),
    ],
)
def test_sampler_inputs_refused_with_named_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_sampler_inputs(*args)


def test_sampler_inputs_valid_and_linked_values_pass() -> None:
    check_sampler_inputs(848, 480, 163, 64, 0)
    check_sampler_inputs(None, None, None, None, None)  # linked inputs are not known at queue time
    assert NODE_CLASS_MAPPINGS["MochiSampler"].VALIDATE_INPUTS(848, 480, 30, 64, 0, 0.025).startswith("frames=30")


def test_loader_validation_names_what_the_file_is(tmp_path: Path) -> None:
    from tiny_models import write_all

    files = write_all(tmp_path, readme=False, which=("t5", "vae"))
    msg = NODE_CLASS_MAPPINGS["MochiDiTLoader"].VALIDATE_INPUTS(str(files["mochi_vae.safetensors"]))
    assert "not a dit checkpoint" in msg and "vae_decoder" in msg
    msg = NODE_CLASS_MAPPINGS["MochiVAELoader"].VALIDATE_INPUTS(str(files["t5xxl_fp16.safetensors"]))
    assert "t5" in msg and "T5 loader" in msg
    assert NODE_CLASS_MAPPINGS["MochiT5Loader"].VALIDATE_INPUTS(str(files["t5xxl_fp16.safetensors"])) is True
    assert "not found" in NODE_CLASS_MAPPINGS["MochiVAELoader"].VALIDATE_INPUTS(str(tmp_path / "missing.safetensors"))


# ------------------------------------------------------------------------------------------------ conditioning


def test_core_conditioning_is_read_with_its_mask() -> None:
    feat = torch.randn(1, 300, 32)
    mask = torch.zeros(1, 300, dtype=torch.long)
    mask[0, :7] = 1
    core = [[feat, {"pooled_output": None, "attention_mask": mask}]]  # CLIPTextEncode with a mochi CLIP
    f, m = conditioning_to_t5(core)
    assert f.shape == (1, 300, 32) and m.dtype == torch.bool and int(m.sum()) == 7
    f, m = conditioning_to_t5([[feat, {}]])
    assert bool(m.all())  # no mask: every token counts
    ours = make_conditioning(feat[:, :256], mask[:, :256].bool())
    assert ours[0][1]["attention_mask"].dtype == torch.long  # same dtype as core's


@pytest.mark.parametrize("bad", [[], None, [["not a tensor", {}]], [[torch.zeros(2, 3, 4, 5), {}]]])
def test_bad_conditioning_is_refused(bad: object) -> None:
    from mochi_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="positive conditioning"):
        conditioning_to_t5(bad, "positive")


# ------------------------------------------------------------------------------------------------ sampling


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, t5_tokenizer_dir: Path) -> dict:
    from tiny_models import write_all

    d = tmp_path_factory.mktemp("models")
    files = write_all(d, readme=False)
    dit = NODE_CLASS_MAPPINGS["MochiDiTLoader"]().load(
        str(files["mochi_preview_bf16.safetensors"]), "default", "sdpa", "auto", 0.0
    )[0]
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(
        str(files["t5xxl_fp16.safetensors"]), "default", "fp32", str(t5_tokenizer_dir)
    )[0]
    vae = NODE_CLASS_MAPPINGS["MochiVAELoader"]().load(str(files["mochi_vae.safetensors"]), "fp32")[0]
    enc = NODE_CLASS_MAPPINGS["MochiTextEncode"]()
    return {"dit": dit, "t5": t5, "vae": vae, "pos": enc.encode(t5, "a red fox")[0], "neg": enc.encode(t5, "")[0]}


def _sample(tiny: dict, pos: object, neg: object, **kw: object) -> torch.Tensor:
    args = {
        "width": 32,
        "height": 32,
        "frames": 7,
        "steps": 2,
        "cfg": 4.5,
        "seed": 11,
        "threshold_noise": 0.025,
        "linear_steps": 0,
    }
    args.update(kw)
    return NODE_CLASS_MAPPINGS["MochiSampler"]().sample(tiny["dit"], pos, neg, **args)[0]["samples"]


def test_empty_prompt_follows_the_official_rule(tiny: dict) -> None:
    assert int(tiny["neg"][0][1]["attention_mask"].sum()) == 0
    assert int(tiny["pos"][0][1]["attention_mask"].sum()) > 0


@pytest.mark.numerics
def test_sampler_is_seeded_and_returns_vae_space_latent(tiny: dict) -> None:
    import mochi_core

    a = _sample(tiny, tiny["pos"], tiny["neg"])
    b = _sample(tiny, tiny["pos"], tiny["neg"])
    c = _sample(tiny, tiny["pos"], tiny["neg"], seed=12)
    # a == b bit-exact by construction: the same call twice in one process (same kernels, shapes, threads, order)
    assert a.shape == (1, 12, 2, 4, 4) and torch.equal(a, b) and not torch.equal(a, c)
    # VAE space: the node output is the core sampler's DiT-space result, denormalized
    noise = mochi_core.make_noise(11, frames=7, height=32, width=32)
    from nodes.conditioning import conditioning_to_t5 as c2t

    ref = mochi_core.sample(tiny["dit"].model, noise, c2t(tiny["pos"]), c2t(tiny["neg"]), steps=2, cfg=4.5)
    torch.testing.assert_close(a, mochi_core.denormalize_latent(ref), atol=TINY_SAMPLER_TOL, rtol=0)


@pytest.mark.numerics
def test_core_style_conditioning_with_extra_masked_tokens_gives_the_same_video(tiny: dict) -> None:
    """CLIPTextEncode pads to >= 256 tokens with an int mask; masked tokens must not change the result."""
    feat, extra = tiny["pos"][0]
    padded = torch.cat([feat, torch.randn(1, 44, feat.shape[-1])], dim=1)
    mask = torch.cat([extra["attention_mask"], torch.zeros(1, 44, dtype=torch.long)], dim=1)
    core_style = [[padded, {"pooled_output": None, "attention_mask": mask}]]
    torch.testing.assert_close(
        _sample(tiny, core_style, tiny["neg"]), _sample(tiny, tiny["pos"], tiny["neg"]), rtol=0, atol=TINY_SAMPLER_TOL
    )  # longer text input: other reduction lengths in the pooler, hence the summation-order bound


def test_video_to_video_starts_from_the_latent(tiny: dict) -> None:
    start = {"samples": _sample(tiny, tiny["pos"], tiny["neg"], steps=1)}
    low = _sample(tiny, tiny["pos"], tiny["neg"], steps=8, latent=start, denoise=0.05)
    full = _sample(tiny, tiny["pos"], tiny["neg"], steps=8, latent=start, denoise=1.0)
    assert low.shape == start["samples"].shape
    assert (low - start["samples"]).abs().mean() < (full - start["samples"]).abs().mean()


def test_wrong_text_width_is_refused(tiny: dict) -> None:
    from mochi_core.errors import InvalidInputError

    bad = make_conditioning(torch.randn(1, 256, 64), torch.ones(1, 256, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="expects 32"):
        _sample(tiny, bad, tiny["neg"])


@pytest.mark.numerics
def test_decode_and_encode_nodes_round_trip_shapes(tiny: dict) -> None:
    latent = {"samples": torch.randn(1, 12, 2, 4, 6)}
    images = MochiVAEDecodeTiled().decode(tiny["vae"], latent, 0.0)[0]
    assert images.shape == (7, 32, 48, 3) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    whole = tiny["vae"].decode(latent["samples"])
    torch.testing.assert_close(images, video_to_images(whole), atol=TINY_DECODER_TOL, rtol=0)  # tiled vs whole
    odd = torch.rand(9, 40, 50, 3)  # trimmed to 7 frames, cropped to 32x48
    enc = NODE_CLASS_MAPPINGS["MochiVAEEncode"]().encode(tiny["vae"], odd)[0]["samples"]
    assert enc.shape == (1, 12, 2, 4, 6)


def test_image_video_conversions_are_inverse() -> None:
    imgs = torch.rand(7, 16, 24, 3)
    torch.testing.assert_close(video_to_images(images_to_video(imgs)), imgs)


# ------------------------------------------------------------------------------------------------ decode OOM retry


class _FakeVAE:
    """decode() runs out of memory above ``limit`` bytes of budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.budgets: list[int] = []

    def decode(self, latent, *, memory_budget=None, tile=None, progress=None, should_stop=None):
        if tile is not None:
            raise torch.OutOfMemoryError("CUDA out of memory (fake, tile)")
        self.budgets.append(memory_budget)
        if memory_budget > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        progress(1, 1)
        return torch.zeros(1, 3, 7, 8, 8)

    def working_set_bytes(self, shape, tile) -> int:
        return 8 << 20


def test_decode_oom_is_retried_with_half_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    """The planned tile runs out of memory: the retry halves the working set that tile was planned for (8 MiB)."""
    from mochi_core.errors import DoesNotFitError

    vae = _FakeVAE(limit=1 << 20)
    with caplog.at_level(logging.WARNING, logger="nodes.vae"):
        out = MochiVAEDecodeTiled._decode_with_retry(vae, torch.zeros(1, 12, 2, 1, 1), (1, 1, 1, 0), DoesNotFitError)
    assert out.shape == (1, 3, 7, 8, 8)
    assert vae.budgets == [4 << 20, 2 << 20, 1 << 20]
    assert "retrying with a memory budget of 2 MiB" in caplog.text


def test_decode_gives_up_with_a_clear_error_and_other_errors_pass_through() -> None:
    from mochi_core.errors import DoesNotFitError

    with pytest.raises(DoesNotFitError, match="latent is kept"):
        MochiVAEDecodeTiled._decode_with_retry(
            _FakeVAE(limit=0), torch.zeros(1, 12, 2, 1, 1), (1, 1, 1, 0), DoesNotFitError
        )

    class Broken(_FakeVAE):
        def decode(self, *a, **k):
            raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        MochiVAEDecodeTiled._decode_with_retry(Broken(0), torch.zeros(1, 12, 2, 1, 1), (1, 1, 1, 0), DoesNotFitError)


# ------------------------------------------------------------------------------------------------ previews


def test_latent_preview_matches_core_latent2rgb_formula() -> None:
    from mochi_core.vae import LATENT_RGB_BIAS, LATENT_RGB_FACTORS

    factors, bias = torch.tensor(LATENT_RGB_FACTORS), torch.tensor(LATENT_RGB_BIAS)
    x0 = torch.randn(1, 12, 3, 5, 7)
    img = latent_to_rgb(x0, factors, bias)
    expected = (((torch.einsum("chw,cr->hwr", x0[0, :, 0], factors) + bias) + 1) / 2).clamp(0, 1) * 255
    assert img.shape == (5, 7, 3) and img.dtype == torch.uint8
    assert (img.int() - expected.round().int()).abs().max() <= 1


@pytest.mark.numerics
def test_sigmas_input_equals_the_built_in_schedule(tiny: dict) -> None:
    """Connected sigmas are used exactly as given and replace steps. Bit-exact comparisons by construction: the node
    turns SIGMAS into Python floats, so equal values give the same kernel calls in the same order as the built-in
    schedule (same process, shapes and thread count); float32 SIGMAS (ComfyUI's) are compared with their exact
    float64 twins, never with the rounded float64 schedule (1000 * sigma feeds the timestep sinusoids)."""
    import mochi_core

    schedule = mochi_core.linear_quadratic_schedule(3)
    a = _sample(tiny, tiny["pos"], tiny["neg"], steps=3)
    b = _sample(tiny, tiny["pos"], tiny["neg"], steps=99, sigmas=torch.tensor(schedule, dtype=torch.float64))
    assert torch.equal(a, b)  # steps comes from the sigmas
    s32 = torch.tensor(schedule, dtype=torch.float32)
    c = _sample(tiny, tiny["pos"], tiny["neg"], steps=99, sigmas=s32)
    assert torch.equal(c, _sample(tiny, tiny["pos"], tiny["neg"], steps=3, sigmas=s32.double()))
    assert not torch.equal(a, _sample(tiny, tiny["pos"], tiny["neg"], steps=4))  # another schedule is seen
