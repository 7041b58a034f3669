"""scripts/demo.py without starting ComfyUI: the model names it looks for are the README's, real-size weights are
refused on a machine without CUDA (before anything starts), and failures end in one clear line."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402


def readme_model_files() -> dict[str, set[str]]:
    """Folder -> file names of the README's "Model files" table."""
    text = (REPO / "README.md").read_text()
    table = text.split("### Model files", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for row in table.splitlines():
        m = re.match(r"\| `models/(\w+)/` \|(.*)", row)
        if m:
            out[m.group(1)] = set(re.findall(r"`([\w.]+\.safetensors)`", m.group(2)))
    return out


def test_demo_looks_for_the_readme_model_files() -> None:
    assert readme_model_files() == {
        "diffusion_models": set(demo.DIT_NAMES),
        "text_encoders": set(demo.T5_NAMES),
        "vae": set(demo.VAE_NAMES),
    }
    assert "t5xxl_fp8_e4m3fn.safetensors" in demo.T5_NAMES  # ComfyUI's common T5 name


def _models(root: Path, dit_bytes: int, t5: str = "t5xxl_fp8_e4m3fn.safetensors") -> Path:
    for folder, name in (("diffusion_models", demo.DIT_NAMES[0]), ("text_encoders", t5), ("vae", demo.VAE_NAMES[0])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / name, "wb") as f:
            f.truncate(dit_bytes if folder == "diffusion_models" else 16)  # sparse: no disk used
    return root


def test_real_models_are_found_under_every_published_t5_name(tmp_path: Path) -> None:
    for t5 in demo.T5_NAMES:
        models = _models(tmp_path / t5, 16, t5)
        assert demo.real_models(models) == {
            "dit_name": demo.DIT_NAMES[0],
            "t5_name": t5,
            "vae_name": "mochi_vae.safetensors",
        }


def test_real_size_weights_without_cuda_are_refused_or_rendered_small(tmp_path: Path) -> None:
    models = _models(tmp_path, 10 * 10**9)
    found = demo.real_models(models)
    with pytest.raises(demo.DemoRefused, match="no CUDA GPU.*--tiny.*--allow-cpu"):
        demo.real_weight_settings(models, found, cuda=False, allow_cpu=False, asked={})
    assert demo.real_weight_settings(models, found, cuda=True, allow_cpu=False, asked={}) == {}
    small = demo.real_weight_settings(models, found, cuda=False, allow_cpu=True, asked={"steps": 1})
    assert small == {**demo.CPU_SETTINGS, "steps": 1}
    stand_ins = _models(tmp_path / "small", 16)  # tiny files under the published names: no refusal
    assert (
        demo.real_weight_settings(stand_ins, demo.real_models(stand_ins), cuda=False, allow_cpu=False, asked={}) == {}
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_demo_refuses_real_weights_on_cpu_before_starting_anything(tmp_path: Path, caplog) -> None:
    models = _models(tmp_path / "models", 10 * 10**9)
    work = tmp_path / "work"
    with caplog.at_level(logging.ERROR, logger="mochi.demo"):
        assert demo.main(["--models", str(models), "--work", str(work)]) == 2
    assert "no CUDA GPU" in caplog.text and "--tiny" in caplog.text
    assert not work.exists()  # no ComfyUI copied or started


def test_demo_failure_is_one_clear_line(tmp_path: Path, caplog) -> None:
    work = tmp_path / "not_a_folder"
    work.write_text("")
    with caplog.at_level(logging.ERROR, logger="mochi.demo"):
        assert demo.main(["--tiny", "--work", str(work)]) == 1
    assert caplog.records[-1].getMessage().startswith("demo failed: ")
