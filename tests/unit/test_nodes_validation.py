"""Queue-time and run-time input checks of the nodes, as ComfyUI 0.3.75 calls them.

ComfyUI (``execution.validate_inputs``) skips its own min / max / choice checks for every input that a node's
``VALIDATE_INPUTS`` takes as an argument, and passes ``None`` for an input linked from another node. These tests
call ``VALIDATE_INPUTS`` the same way (arguments picked by its signature, as ComfyUI does), so every range the
host no longer checks must be checked by the pack, and a linked input must be accepted at queue time and checked
when the node runs.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from mochi_core.errors import InvalidInputError  # noqa: E402
from nodes import NODE_CLASS_MAPPINGS  # noqa: E402

VALIDATED = sorted(k for k, v in NODE_CLASS_MAPPINGS.items() if hasattr(v, "VALIDATE_INPUTS"))


def widget_specs(cls: type) -> dict[str, tuple[Any, dict[str, Any]]]:
    spec = cls.INPUT_TYPES()
    return {
        name: (e[0], e[1] if len(e) > 1 else {})
        for sec in ("required", "optional")
        for name, e in spec.get(sec, {}).items()
    }


def validate_args(cls: type) -> list[str]:
    """The inputs ComfyUI passes to ``VALIDATE_INPUTS`` (and for which it skips its own checks)."""
    return [a for a in inspect.getfullargspec(cls.VALIDATE_INPUTS).args if a != "cls"]


def defaults(cls: type) -> dict[str, Any]:
    """Valid queue-time values: widget defaults; file names as linked (None); link-only inputs left unconnected."""
    specs = widget_specs(cls)
    widgets = [
        n for n in validate_args(cls) if specs[n][0] in ("INT", "FLOAT", "STRING") or isinstance(specs[n][0], list)
    ]
    return {name: specs[name][1].get("default") for name in widgets}


def out_of_range_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for node_id in VALIDATED:
        cls = NODE_CLASS_MAPPINGS[node_id]
        specs = widget_specs(cls)
        for name in validate_args(cls):
            kind, opts = specs[name]
            if kind in ("INT", "FLOAT"):
                step = opts.get("step", 1)
                cases.append((node_id, name, opts["max"] + step))
                cases.append((node_id, name, opts["min"] - step))
            elif isinstance(kind, list) and not name.endswith("_name"):
                cases.append((node_id, name, "not_a_choice"))
    return cases


def test_the_validated_inputs_are_the_expected_ones() -> None:
    """Pins which inputs lose ComfyUI's own checks, so a new argument cannot slip in untested."""
    got = {k: validate_args(NODE_CLASS_MAPPINGS[k]) for k in VALIDATED}
    assert got == {
        "MochiDiTLoader": ["dit_name"],
        "MochiEmptyLatent": ["width", "height", "frames", "batch_size"],
        "MochiSampler": [
            "width",
            "height",
            "frames",
            "steps",
            "linear_steps",
            "threshold_noise",
            "latent",
            "sigmas",
            "stg_blocks",
        ],
        "MochiT5Loader": ["t5_name"],
        "MochiLoRA": ["lora_name", "strength"],
        "MochiTextEncode": ["text"],
        "MochiVAEDecodeTiled": ["memory_budget_gb", "tile_height", "tile_width"],
        "MochiVAELoader": ["vae_name"],
    }


def float_cases() -> list[tuple[str, str, float]]:
    return [
        (node_id, name, value)
        for node_id in VALIDATED
        for name in validate_args(NODE_CLASS_MAPPINGS[node_id])
        if widget_specs(NODE_CLASS_MAPPINGS[node_id])[name][0] == "FLOAT"
        for value in (float("nan"), float("inf"))
    ]


@pytest.mark.parametrize(("node_id", "name", "value"), float_cases(), ids=lambda v: str(v))
def test_nan_and_inf_are_refused_when_queued(node_id: str, name: str, value: float) -> None:
    """NaN passes every comparison, so ComfyUI's own range check lets it through: the pack refuses it."""
    cls = NODE_CLASS_MAPPINGS[node_id]
    args = defaults(cls)
    args[name] = value
    msg = cls.VALIDATE_INPUTS(**args)
    assert isinstance(msg, str) and msg.startswith(f"{name}={value!r} is not allowed: {name} must be a number"), msg


def test_dit_loader_refuses_a_nan_budget_when_it_runs() -> None:
    """The DiT loader validates only dit_name when queued (a message would be filed under every input it takes)."""
    loader = NODE_CLASS_MAPPINGS["MochiDiTLoader"]()
    with pytest.raises(InvalidInputError, match=r"memory_budget_gb=nan is not allowed: .* from 0.0 to 1024.0"):
        loader.load("any.safetensors", "default", "sdpa", "auto", float("nan"))  # refused before the file is read


@pytest.mark.parametrize(("name", "value", "nearest"), [("tile_height", 12, "8 or 16"), ("tile_width", 4, "8")])
def test_decode_tiles_must_be_multiples_of_8_pixels(name: str, value: int, nearest: str) -> None:
    cls = NODE_CLASS_MAPPINGS["MochiVAEDecodeTiled"]
    args = defaults(cls)
    args[name] = value
    msg = cls.VALIDATE_INPUTS(**args)
    assert msg == (
        f"{name}={value} is not allowed: {name} must be a multiple of 8 pixels (one latent), or 0 = whole frame / "
        f"chosen from the budget; nearest valid: {nearest}"
    )
    with pytest.raises(InvalidInputError, match=f"{name}={value} is not allowed"):  # a linked value, at run time
        cls().decode(None, None, **args)


@pytest.mark.parametrize(("node_id", "name", "value"), out_of_range_cases(), ids=lambda v: str(v))
def test_values_comfyui_no_longer_checks_are_refused_by_the_pack(node_id: str, name: str, value: Any) -> None:
    cls = NODE_CLASS_MAPPINGS[node_id]
    args = defaults(cls)
    assert cls.VALIDATE_INPUTS(**args) is True
    args[name] = value
    msg = cls.VALIDATE_INPUTS(**args)
    assert isinstance(msg, str) and msg.startswith(f"{name}={value!r} is not allowed"), msg
    kind, opts = widget_specs(cls)[name]
    if isinstance(kind, list):
        assert all(choice in msg for choice in kind), msg
    else:
        assert f"from {opts['min']} to {opts['max']}" in msg, msg


@pytest.mark.parametrize("node_id", VALIDATED)
def test_linked_inputs_pass_queue_time_validation(node_id: str) -> None:
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.VALIDATE_INPUTS(**dict.fromkeys(validate_args(cls))) is True


def test_linked_loader_names_do_not_break_is_changed() -> None:
    for node_id, arg in (("MochiDiTLoader", "dit_name"), ("MochiVAELoader", "vae_name"), ("MochiT5Loader", "t5_name")):
        assert NODE_CLASS_MAPPINGS[node_id].IS_CHANGED(**{arg: None, "weight_dtype": "default"}) == "linked"


def test_empty_latent_checks_linked_values_when_it_runs() -> None:
    node = NODE_CLASS_MAPPINGS["MochiEmptyLatent"]
    assert node.VALIDATE_INPUTS(848, None, 30, None).startswith("frames=30 is not allowed")
    with pytest.raises(InvalidInputError, match="frames=30 is not allowed"):
        node().make(848, 480, 30, 1)
    with pytest.raises(InvalidInputError, match="batch_size=65 is not allowed: batch_size must be an integer from 1"):
        node().make(848, 480, 31, 65)
    with pytest.raises(InvalidInputError, match="width=4112 is not allowed"):
        node().make(4112, 480, 31, 1)
    assert node().make(48, 32, 13, 2)[0]["samples"].shape == (2, 12, 3, 4, 6)


def test_sampler_checks_linked_values_when_it_runs() -> None:
    args = dict(width=848, height=480, frames=31, cfg=6.0, seed=0, threshold_noise=0.025, linear_steps=0)
    with pytest.raises(InvalidInputError, match="steps=1001 is not allowed: steps must be an integer from 1 to 1000"):
        NODE_CLASS_MAPPINGS["MochiSampler"]().sample(None, None, None, steps=1001, **args)  # refused before any work


def test_sampler_size_comes_from_a_connected_latent() -> None:
    """With a latent connected (ComfyUI passes None for it) width/height/frames are ignored, so they are not checked,
    at queue time or at run time; without one they are."""
    node = NODE_CLASS_MAPPINGS["MochiSampler"]
    sched = dict(steps=64, linear_steps=0, threshold_noise=0.025)
    assert node.VALIDATE_INPUTS(848, 480, 30, **sched).startswith("frames=30 is not allowed")
    assert node.VALIDATE_INPUTS(848, 480, 30, **sched, latent=None) is True
    assert node.VALIDATE_INPUTS(848, 480, 31, **sched) is True


def test_sampler_schedule_is_checked_when_queued_unless_sigmas_replace_it() -> None:
    node = NODE_CLASS_MAPPINGS["MochiSampler"]
    msg = node.VALIDATE_INPUTS(848, 480, 31, steps=4, linear_steps=1, threshold_noise=0.5)
    assert isinstance(msg, str) and "threshold_noise=0.5" in msg and "0.4" in msg, msg
    assert node.VALIDATE_INPUTS(848, 480, 31, steps=4, linear_steps=1, threshold_noise=0.5, sigmas=None) is True
    assert node.VALIDATE_INPUTS(848, 480, 31, steps=4, linear_steps=None, threshold_noise=0.5) is True  # linked
    args = dict(width=848, height=480, frames=31, cfg=6.0, seed=0, steps=4, linear_steps=1)
    with pytest.raises(InvalidInputError, match="threshold_noise=0.5"):
        node().sample(None, None, None, threshold_noise=0.5, **args)  # refused before any work


def test_text_encode_names_a_list_prompt() -> None:
    node = NODE_CLASS_MAPPINGS["MochiTextEncode"]
    assert node.VALIDATE_INPUTS("") is True and node.VALIDATE_INPUTS("a fox") is True
    msg = node.VALIDATE_INPUTS([])
    assert msg.startswith("text must be a prompt string") and "an empty list" in msg
    with pytest.raises(InvalidInputError, match="text must be a prompt string"):
        node().encode(None, ["a", "b"])


# ------------------------------------------------------------------------------------------------ model files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import write_all

    return write_all(tmp_path_factory.mktemp("models"), readme=False, which=("t5", "vae"))


def test_loaders_check_a_linked_file_when_they_run(files: dict[str, Path]) -> None:
    vae_file = str(files["mochi_vae.safetensors"])
    with pytest.raises(InvalidInputError, match="not a dit checkpoint"):
        NODE_CLASS_MAPPINGS["MochiDiTLoader"]().load(vae_file, "default", "sdpa", "auto", 0.0)
    with pytest.raises(InvalidInputError, match="T5 loader"):
        NODE_CLASS_MAPPINGS["MochiVAELoader"]().load(str(files["t5xxl_fp16.safetensors"]), "auto")
    with pytest.raises(InvalidInputError, match="no model file selected"):
        NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(None, "default", "fp32", "")


def test_shard_files_are_refused_naming_the_way_that_works(tmp_path: Path) -> None:
    from mochi_core.testing.t5 import write_t5

    folder = write_t5(tmp_path / "t5", "hf_sharded")
    shard = str(folder / "model-00001-of-00002.safetensors")
    msg = NODE_CLASS_MAPPINGS["MochiT5Loader"].VALIDATE_INPUTS(shard)
    assert "shard 1 of 2" in msg and "single-file" in msg and "folder path" in msg, msg
    with pytest.raises(InvalidInputError, match="shard 1 of 2"):
        NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(shard, "default", "fp32", "")
    diffusers = "transformer/diffusion_pytorch_model-00002-of-00003.safetensors"
    assert "shard 2 of 3" in NODE_CLASS_MAPPINGS["MochiDiTLoader"].VALIDATE_INPUTS(diffusers)


def test_a_whole_checkpoint_named_shard_1_of_1_loads(files: dict[str, Path], tmp_path: Path) -> None:
    """``name-00001-of-00001.safetensors`` holds every tensor: it is a single-file checkpoint, not a shard."""
    import shutil

    one = tmp_path / "mochi_vae-00001-of-00001.safetensors"
    shutil.copy(files["mochi_vae.safetensors"], one)
    assert NODE_CLASS_MAPPINGS["MochiVAELoader"].VALIDATE_INPUTS(str(one)) is True
    two = tmp_path / "mochi_vae-00001-of-00002.safetensors"
    shutil.copy(files["mochi_vae.safetensors"], two)
    assert "shard 1 of 2" in NODE_CLASS_MAPPINGS["MochiVAELoader"].VALIDATE_INPUTS(str(two))


def test_t5_bf16_compute_is_refused_on_the_cpu(files: dict[str, Path]) -> None:
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]
    path = str(files["t5xxl_fp16.safetensors"])
    assert t5.VALIDATE_INPUTS(path) is True
    # ComfyUI's own choice check refuses bf16 under "dtype": the CPU host is offered fp32 only
    assert widget_specs(t5)["dtype"][0] == ["fp32"]
    with pytest.raises(InvalidInputError, match="bf16 T5 compute needs a GPU"):
        t5().load(path, "default", "bf16", "")
    assert "T5 loader" not in t5.DESCRIPTION and "shard" not in t5.DESCRIPTION.lower()


# ------------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("node_args", "api"),
    [
        ({"frames": 30}, lambda o: o.JobOptions.resolve(prompt="", frames=30)),
        ({"width": 850}, lambda o: o.JobOptions.resolve(prompt="", width=850)),
        ({"steps": 8, "linear_steps": 8}, lambda o: o.SamplingOptions.resolve(steps=8, cfg=6.0, linear_steps=8)),
        (
            {"steps": 4, "linear_steps": 2, "threshold_noise": 0.9},
            lambda o: o.SamplingOptions.resolve(steps=4, cfg=6.0, linear_steps=2, threshold_noise=0.9),
        ),
    ],
)
def test_sampler_node_gives_the_api_verdict_and_message(node_args: dict[str, Any], api: Any) -> None:
    """One rule per value: the node's queue-time message is the options layer's, word for word."""
    import mochi_core.options as options

    args = {"width": 848, "height": 480, "frames": 31, "steps": 64, "linear_steps": 0, "threshold_noise": 0.025}
    args.update(node_args)
    with pytest.raises(InvalidInputError) as err:
        api(options)
    assert NODE_CLASS_MAPPINGS["MochiSampler"].VALIDATE_INPUTS(**args) == str(err.value)
