"""nodes/host.py against a stand-in ComfyUI (fake ``comfy.*`` modules): interrupt mapping, progress and previews.

The real host is exercised by tests/host; these checks pin the adapter's contract cheaply.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from nodes import host


class FakeInterrupt(Exception):
    pass


@pytest.fixture()
def fake_comfy(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    state = types.SimpleNamespace(interrupted=False, updates=[], freed=[])

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = FakeInterrupt
    mm.OOM_EXCEPTION = torch.OutOfMemoryError
    mm.processing_interrupted = lambda: state.interrupted

    def throw() -> None:
        if state.interrupted:
            state.interrupted = False
            raise FakeInterrupt()

    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.free_memory = lambda n, d: state.freed.append((n, d))
    mm.get_free_memory = lambda d=None: 123
    mm.soft_empty_cache = lambda: None

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int) -> None:
            self.total = total

        def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
            state.updates.append((value, total, preview))

    utils.ProgressBar = ProgressBar

    cli = types.ModuleType("comfy.cli_args")

    class LatentPreviewMethod:
        NoPreviews = "none"

    cli.LatentPreviewMethod = LatentPreviewMethod
    cli.args = types.SimpleNamespace(preview_method="auto", preview_size=256)

    formats = types.ModuleType("comfy.latent_formats")

    class Mochi:
        from mochi_core.vae import LATENT_RGB_BIAS as latent_rgb_factors_bias
        from mochi_core.vae import LATENT_RGB_FACTORS as latent_rgb_factors

    formats.Mochi = Mochi
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils, comfy.cli_args, comfy.latent_formats = mm, utils, cli, formats
    for name, mod in {
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.utils": utils,
        "comfy.cli_args": cli,
        "comfy.latent_formats": formats,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return state


def test_mochi_interrupted_becomes_comfy_interrupt_and_resets_the_flag(fake_comfy) -> None:
    from mochi_core.errors import MochiInterrupted

    fake_comfy.interrupted = True
    assert host.should_stop() is True
    with pytest.raises(FakeInterrupt):
        with host.interrupt_errors():
            raise MochiInterrupted("stopped")
    assert fake_comfy.interrupted is False  # the next prompt starts clean


def test_other_errors_are_not_touched(fake_comfy) -> None:
    with pytest.raises(ValueError):
        with host.interrupt_errors():
            raise ValueError("x")


def test_sampler_progress_sends_jpeg_previews(fake_comfy) -> None:
    rep = host.ProgressReporter(3, previews=True)
    assert rep.sends_previews
    cb = rep.callback()
    for step in range(3):
        cb(step, 3, torch.randn(1, 12, 2, 4, 6))
    assert [u[0] for u in fake_comfy.updates] == [1, 2, 3]
    kind, image, size = fake_comfy.updates[-1][2]
    assert kind == "JPEG" and image.size == (6, 4) and size == 256


def test_no_previews_when_the_server_disables_them(fake_comfy) -> None:
    sys.modules["comfy.cli_args"].args.preview_method = "none"
    rep = host.ProgressReporter(2, previews=True)
    rep.callback()(0, 2, torch.randn(1, 12, 1, 2, 2))
    assert fake_comfy.updates == [(1, 2, None)]


def test_make_room_asks_comfy_to_free_memory_only_on_gpus(fake_comfy) -> None:
    assert host.make_room(10, torch.device("cpu")) == 123 and fake_comfy.freed == []
    host.make_room(10, torch.device("cuda", 0))
    assert fake_comfy.freed == [(10, torch.device("cuda", 0))]


def test_outside_comfyui_everything_falls_back() -> None:
    assert "comfy" not in sys.modules or not hasattr(sys.modules["comfy"], "model_management")
    assert host.compute_device() == torch.device("cpu") and host.should_stop() is False
    host.ProgressReporter(2, previews=True).update(1)  # no-op


def test_progress_update_stops_before_comfyui_progress_hook(fake_comfy, caplog) -> None:
    """Our check runs before ComfyUI's own progress hook would raise, so the pack's interrupt path is the one that
    stops a step loop (and logs which node stopped)."""
    import logging

    from mochi_core.errors import MochiInterrupted

    rep = host.ProgressReporter(5)
    rep.update(1)
    fake_comfy.interrupted = True
    with pytest.raises(MochiInterrupted, match="stopped after 2 of 5"):
        rep.update(2)
    assert fake_comfy.updates == [(1, 5, None)]  # the interrupted step was not reported to the bar
    with caplog.at_level(logging.INFO, logger="nodes.host"), pytest.raises(FakeInterrupt):
        with host.interrupt_errors("Mochi Sampler"):
            rep.update(2)
    assert "Mochi Sampler: stopped on request (stopped after 2 of 5)" in caplog.text
    assert fake_comfy.interrupted is False
