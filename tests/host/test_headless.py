"""scripts/headless.py against the real ComfyUI host: loader overrides by file name, refusals printed once each."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from headless import main
from tiny_models import write_all

pytestmark = pytest.mark.host

API = Path(__file__).resolve().parents[2] / "workflows" / "api" / "mochi_text_to_video.json"
SMALL = ["--frames", "7", "--steps", "1", "--width", "32", "--height", "32", "--prompt", "a fox"]


@pytest.fixture(scope="module")
def models(comfy_host) -> dict[str, Path]:
    return write_all(comfy_host.models_dir, readme=False)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mochi.headless" and r.levelno >= logging.ERROR]


def test_model_overrides_choose_the_files(comfy_host, models, tmp_path: Path, caplog) -> None:
    """--dit/--t5/--vae set the loaders' file names: a file the shipped workflow does not name renders, and a
    missing one is refused by ComfyUI naming it, in one readable line."""
    renamed = comfy_host.model_path("vae", "headless/renamed_vae.safetensors")  # a subfolder, as ComfyUI lists it
    renamed.write_bytes(models["mochi_vae.safetensors"].read_bytes())
    server = ["--server", comfy_host.client.base_url, "--workflow", str(API), "--out", str(tmp_path)]
    argv = server + SMALL + ["--dit", "mochi_preview_bf16.safetensors", "--t5", "t5xxl_fp8_e4m3fn_scaled.safetensors"]
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main([*argv, "--vae", "headless/renamed_vae.safetensors"]) == 0
    assert list(tmp_path.rglob("*.mp4")), list(tmp_path.rglob("*"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main([*server, *SMALL, "--dit", "no_such_dit.safetensors"]) == 2
    head, *lines = _errors(caplog)
    assert "refused the workflow (1 error)" in head, head
    (line,) = lines
    assert "MochiDiTLoader" in line and "no_such_dit.safetensors" in line and "{" not in line, line


def test_a_wrong_frame_count_is_printed_once(comfy_host, models, tmp_path: Path, caplog) -> None:
    server = ["--server", comfy_host.client.base_url, "--workflow", str(API), "--out", str(tmp_path)]
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main([*server, *SMALL[2:], "--frames", "30"]) == 2
    errors = _errors(caplog)
    assert sum("frames=30" in e for e in errors) == 1, errors
    assert not any("{" in e for e in errors), errors
