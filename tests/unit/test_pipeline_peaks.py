"""Peak device memory in a job's summary is that job's own: the counters are reset when a job starts, and the
summary reports the allocator's reserved peak beside the allocated one.

No GPU here: torch's CUDA memory counters are replaced by a small allocator model that behaves as CUDA's does
(peaks are kept per process until ``reset_peak_memory_stats``); everything else is the pipeline's real code.
"""

from __future__ import annotations

import pytest
import torch

import mochi_core.pipeline as pipeline


class _CudaCounters:
    """CUDA's per-process counters: allocated / reserved now, and their peaks since the last reset."""

    def __init__(self) -> None:
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.resets: list[torch.device] = []

    def use(self, allocated: int, reserved: int) -> None:
        self.allocated, self.reserved = allocated, reserved
        self.peak_allocated = max(self.peak_allocated, allocated)
        self.peak_reserved = max(self.peak_reserved, reserved)

    def reset(self, device: torch.device) -> None:
        self.resets.append(device)
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, object]:
    from mochi_core.testing.dit import write_dit
    from mochi_core.testing.t5 import write_t5
    from mochi_core.testing.vae import random_decoder_state_dict, write_official_decoder

    root = tmp_path_factory.mktemp("peaks")
    return {
        "t5": write_t5(root / "t5_fp16.safetensors", "fp16"),
        "dit": write_dit(root / "dit.safetensors", "official"),
        "vae": write_official_decoder(root / "decoder.safetensors", random_decoder_state_dict()),
    }


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> _CudaCounters:
    c = _CudaCounters()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", c.reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: c.peak_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: c.peak_reserved)
    return c


def test_a_second_job_reports_its_own_peak_not_the_first_ones(counters: _CudaCounters) -> None:
    dev = torch.device("cuda", 0)
    pipeline.reset_device_peaks(dev)
    counters.use(allocated=9_000, reserved=12_000)  # the first job: large
    counters.use(allocated=0, reserved=2_000)  # released; the allocator keeps some cache
    first = pipeline.device_peaks(dev)
    pipeline.reset_device_peaks(dev)
    counters.use(allocated=3_000, reserved=4_000)  # the second job: small
    second = pipeline.device_peaks(dev)
    assert first == {"cuda_peak_bytes": 9_000, "cuda_peak_reserved_bytes": 12_000}
    assert second == {"cuda_peak_bytes": 3_000, "cuda_peak_reserved_bytes": 4_000}
    assert counters.resets == [dev, dev]


def test_devices_without_counters_report_nothing(counters: _CudaCounters) -> None:
    pipeline.reset_device_peaks(torch.device("cpu"))
    assert pipeline.device_peaks(torch.device("cpu")) == {} and counters.resets == []


def test_generate_resets_the_peaks_before_the_first_phase(models, t5_tokenizer_dir, monkeypatch) -> None:
    """The reset comes after the checks and before any model loads, so the summary's peak is this job's."""
    order: list[str] = []
    real_reset, real_t5 = pipeline.reset_device_peaks, pipeline.load_text_encoder

    def reset(dev):
        order.append("reset")
        real_reset(dev)

    def load_t5(*a, **k):
        order.append("load_t5")
        return real_t5(*a, **k)

    monkeypatch.setattr(pipeline, "reset_device_peaks", reset)
    monkeypatch.setattr(pipeline, "load_text_encoder", load_t5)
    result = pipeline.generate(
        "a cat", dit=models["dit"], vae=models["vae"], text_encoder=models["t5"], tokenizer=t5_tokenizer_dir,
        steps=1, cfg=1.0, width=48, height=32, frames=7,
    )  # fmt: skip
    assert order == ["reset", "load_t5"]
    assert "cuda_peak_bytes" not in result.summary  # a CPU job has no device counters to report
