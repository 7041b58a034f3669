"""LoRAs through the public entry points: ``generate(loras=...)``, the CLI's ``--lora PATH[:STRENGTH]``, the planner.

Tiny random-weight models and a tiny LoRA, written as real files and read through the user's paths.
"""

from __future__ import annotations

import json

import pytest
import torch

import mochi_core
from mochi_core.cli import main
from mochi_core.errors import InvalidInputError
from mochi_core.options import parse_lora_arg

SMALL = {"width": 32, "height": 32, "frames": 7, "steps": 2, "cfg": 4.5, "seed": 4}


@pytest.fixture(scope="module")
def models(tmp_path_factory, t5_tokenizer_dir) -> dict:
    from mochi_core.testing.dit import write_dit
    from mochi_core.testing.lora import write_lora
    from mochi_core.testing.t5 import write_t5
    from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae

    root = tmp_path_factory.mktemp("lora_api")
    return {
        "dit": write_dit(root / "dit.safetensors", "comfy_scaled_fp8"),
        "vae": write_comfy_vae(root / "vae.safetensors", random_decoder_state_dict(), None),
        "text_encoder": write_t5(root / "t5.safetensors", "fp16"),
        "tokenizer": t5_tokenizer_dir,
        "lora": write_lora(root / "model_2000.lora.safetensors", "genmo", std=0.2, seed=5),
        "diffusers": write_lora(root / "pytorch_lora_weights.safetensors", "diffusers", std=0.2, seed=6),
    }


def _generate(models: dict, **kw) -> mochi_core.pipeline.GenerationResult:
    paths = {k: models[k] for k in ("dit", "vae", "text_encoder", "tokenizer")}
    return mochi_core.generate("a red fox", **paths, **SMALL, **kw)


def test_generate_with_loras(models) -> None:
    base = _generate(models)
    one = _generate(models, loras=[(models["lora"], 1.0)])
    stacked = _generate(models, loras=[(models["lora"], 1.0), (str(models["diffusers"]), -0.5)])
    off = _generate(models, loras=[(models["lora"], 0.0)])
    assert (one.latent - base.latent).abs().max() > 1e-3 and not torch.equal(one.latent, stacked.latent)
    assert torch.equal(off.latent, base.latent)  # strength 0 adds no path: the very same computation
    assert one.summary["loras"] == [{"file": "model_2000.lora.safetensors", "strength": 1.0}]
    assert base.summary["loras"] == []


def test_a_dit_passed_in_gets_back_its_own_loras(models) -> None:
    """The job's LoRAs are active only while it samples; a LoRA the caller applied stays."""
    dit = mochi_core.load_dit(models["dit"])
    other = mochi_core.load_lora(models["diffusers"])
    mochi_core.apply_loras(dit, [(other, 0.3)])
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    paths = {k: models[k] for k in ("vae", "text_encoder", "tokenizer")}
    mochi_core.generate("a red fox", dit=dit, **paths, **SMALL, loras=[(mochi_core.load_lora(models["lora"]), 1.0)])
    from mochi_core.lora import active_loras

    state = active_loras(dit)
    assert [(lora.name, s) for lora, s in state.entries] == [("pytorch_lora_weights.safetensors", 0.3)]
    assert all(torch.equal(v, before[k]) for k, v in dit.state_dict().items())


def test_generate_plans_with_the_lora(models) -> None:
    plain = _generate(models, budget="2GB", device="cpu")
    with_lora = _generate(models, budget="2GB", device="cpu", loras=[(models["lora"], 1.0)])
    from mochi_core.lora.estimate import lora_runtime_bytes

    other, blocks = lora_runtime_bytes([models["lora"]], depth=2, itemsize=4)
    assert with_lora.summary["plan"]["lora_bytes"] == other + sum(blocks) > 0
    assert plain.summary["plan"]["lora_bytes"] == 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("a.safetensors", ("a.safetensors", 1.0)),
        ("a.safetensors:0.5", ("a.safetensors", 0.5)),
        ("a.safetensors:-1.25", ("a.safetensors", -1.25)),
        ("C:\\loras\\a.safetensors", ("C:\\loras\\a.safetensors", 1.0)),
        ("C:\\loras\\a.safetensors:2", ("C:\\loras\\a.safetensors", 2.0)),
    ],
)
def test_parse_lora_arg(spec: str, expected: tuple[str, float]) -> None:
    assert parse_lora_arg(spec) == expected


def test_api_and_cli_give_the_same_message_for_a_bad_strength(models, tmp_path, capsys) -> None:
    with pytest.raises(InvalidInputError) as err:
        _generate(models, loras=[(models["lora"], float("nan"))])
    api = str(err.value)
    assert api.startswith("loras[0] strength=nan is not allowed")
    paths = ["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["text_encoder"])]
    out = tmp_path / "never.mp4"
    rc = main(["generate", "--prompt", "x", *paths, "--lora", f"{models['lora']}:nan", "--out", str(out)])
    cli = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert cli.strip() == "error: " + api.replace("loras[0]", "--lora[0]")


def test_cli_refuses_other_models_lora_before_loading(models, tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    sd = tmp_path / "sdxl_lora.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(sd))
    paths = ["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["text_encoder"])]
    rc = main(["generate", "--prompt", "x", *paths, "--lora", str(sd), "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "sdxl_lora.safetensors: this is a LoRA for another model" in err


def test_cli_renders_with_stacked_loras(models, tmp_path, capsys) -> None:
    pytest.importorskip("av")
    paths = ["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["text_encoder"])]
    args = ["generate", "--prompt", "a red fox", *paths, "--tokenizer", str(models["tokenizer"])]
    args += ["--width", "32", "--height", "32", "--frames", "7", "--steps", "2", "--seed", "4", "--device", "cpu"]
    args += ["--lora", f"{models['lora']}:0.8", "--lora", str(models["diffusers"]), "--no-progress", "--json"]
    rc = main([*args, "--out", str(tmp_path / "v.mp4")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["loras"] == [
        {"file": "model_2000.lora.safetensors", "strength": 0.8},
        {"file": "pytorch_lora_weights.safetensors", "strength": 1.0},
    ]


def test_plan_subcommand_counts_the_lora(models, capsys) -> None:
    assert main(["plan", "--budget", "40GB", "--lora", f"{models['lora']}:0.5", "--json"]) == 0
    tiny_on_full = json.loads(capsys.readouterr().out)["lora_bytes"]  # the tiny LoRA's factors, block indices < 48
    from mochi_core.lora.estimate import lora_runtime_bytes

    other, blocks = lora_runtime_bytes([models["lora"]], depth=48, itemsize=2)  # bf16 on CUDA
    assert tiny_on_full == other + sum(blocks) > 0
