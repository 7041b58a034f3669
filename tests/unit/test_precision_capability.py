"""GPUs without native bf16 (compute capability < 8.0: T4, V100, RTX 20xx): every default agrees on fp32.

The loaders, the VAE loader node's ``auto`` and the planner take the same default, so a plan counts the
activations the job will really have. The device is faked by answering torch's capability queries (7.5 = a T4;
8.0 = an A100 as the control); torch < 2.4 answers ``is_bf16_supported()`` True for emulated bf16, which is
faked too and must not matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mochi_core import plan
from mochi_core.memory import plan_for_files
from mochi_core.precision import check_compute_dtype, default_compute_dtype, supports_bf16
from mochi_core.testing.dit import write_dit
from mochi_core.testing.t5 import write_t5
from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae


def _gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # torch < 2.4: emulation counts
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("capability")
    return {
        "dit": write_dit(root / "dit.safetensors", "comfy_bf16"),
        "text_encoder": write_t5(root / "t5.safetensors", "fp16"),
        "vae": write_comfy_vae(root / "mochi_vae.safetensors", random_decoder_state_dict(), None),
    }


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float32), ((8, 0), torch.bfloat16)])
def test_core_defaults_follow_the_capability(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    _gpu(monkeypatch, capability)
    assert supports_bf16("cuda") == (expected == torch.bfloat16)
    assert default_compute_dtype("cuda", warn=False) == expected
    for what in ("dtype", "vae_dtype", "compute_dtype"):  # the defaults of load_dit / generate / load_vae
        assert check_compute_dtype(what, None, device="cuda") == expected


def test_planner_plans_fp32_on_a_t4(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, (8, 0))
    ampere = plan(848, 480, 31, budget_bytes="80GB", device="cuda")
    _gpu(monkeypatch, (7, 5))
    turing = plan(848, 480, 31, budget_bytes="80GB", device="cuda")
    assert (ampere.compute_dtype, ampere.vae_dtype) == ("bf16", "bf16")
    assert (turing.compute_dtype, turing.vae_dtype) == ("fp32", "fp32")
    # the compute-dtype tensors of a block double in fp32 (RoPE tables and norm temporaries are float32 in both)
    assert turing.phase("sampling").activation_bytes > 1.5 * ampere.phase("sampling").activation_bytes


def test_plan_for_files_plans_what_the_loaders_pick(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]) -> None:
    _gpu(monkeypatch, (7, 5))
    job = plan_for_files(848, 480, 31, budget_bytes="80GB", device="cuda", **files)
    assert (job.compute_dtype, job.vae_dtype) == ("fp32", "fp32")
    _gpu(monkeypatch, (8, 6))
    job = plan_for_files(848, 480, 31, budget_bytes="80GB", device="cuda", **files)
    assert (job.compute_dtype, job.vae_dtype) == ("bf16", "bf16")


def test_vae_loader_node_auto_is_fp32_on_a_t4(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]) -> None:
    """The node loads on ComfyUI's offload device (the CPU here) and computes where ComfyUI computes (a faked
    capability-7.5 GPU): ``auto`` gives fp32, as for the DiT loader node."""
    from nodes import host, loaders

    _gpu(monkeypatch, (7, 5))
    monkeypatch.setattr(host, "compute_device", lambda: torch.device("cuda"))
    (vae,) = loaders.MochiVAELoader().load(str(files["vae"]), "auto")
    assert vae.dtype == torch.float32
    assert loaders._dit_compute_dtype() == torch.float32
    _gpu(monkeypatch, (8, 9))
    assert loaders._vae_compute_dtype() == "bf16"
