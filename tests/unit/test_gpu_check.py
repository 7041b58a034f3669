"""bench/gpu_check.py on a machine without CUDA: one line, exit 0; its SDPA batch probe sees the VAE's calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stdout


def test_sdpa_probe_counts_the_vae_encoder_attention_batch(golden_dir: Path) -> None:
    """The probe wraps ``F.scaled_dot_product_attention`` as the encoder calls it: the launch batch of the tiny
    encoder's attention (batch x heads x rows per frame) is recorded, so the full-size figure on a GPU is real."""
    from mochi_core.vae import load_vae

    vae = load_vae(golden_dir / "vae_encoder_tiny.safetensors")
    video = torch.rand(1, 3, 7, 32, 48) * 2 - 1
    with gpu_check._count_sdpa_batches() as seen, torch.inference_mode():
        vae.encode(video)
    assert seen and all(n > 0 for n in seen)
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_rows_off_their_bound_make_the_exit_status(capsys) -> None:
    rows = [gpu_check.Row("a", "1.00 GB", "1.00 GB ±15%", gpu_check._within(1.1e9, 1e9))]
    rows.append(gpu_check.Row("b", "1.20 GB", "1.00 GB ±15%", gpu_check._within(1.2e9, 1e9)))
    gpu_check.print_table(rows)
    out = capsys.readouterr().out
    assert rows[0].ok and not rows[1].ok and " NO " in out
