"""Block streaming inside ComfyUI honours the host's pinned-memory settings (``nodes.host.pin_policy``).

ComfyUI decides them when ``comfy.model_management`` is imported (``--disable-pinned-memory``, NVIDIA/AMD only,
a cap of 95 % of system RAM on Linux), so on this CPU-only machine the real module always says "none"; the
values a GPU host would hold are set on a stand-in module, and the real source is checked for the names read.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from mochi_core.memory.streaming.pinning import PinPolicy
from nodes import host


def _fake_mm(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    mm = types.ModuleType("comfy.model_management")
    for k, v in values.items():
        setattr(mm, k, v)
    comfy = types.ModuleType("comfy")
    comfy.model_management = mm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)


def test_disabled_pinned_memory_turns_pinning_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mm(monkeypatch, MAX_PINNED_MEMORY=-1, TOTAL_PINNED_MEMORY=0)
    assert host.pin_policy() == PinPolicy.disabled()


def test_pinning_is_capped_at_what_comfyui_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mm(monkeypatch, MAX_PINNED_MEMORY=30e9, TOTAL_PINNED_MEMORY=12_000_000_000)
    policy = host.pin_policy()
    assert policy.enabled and policy.limit_bytes == 18_000_000_000
    _fake_mm(monkeypatch, MAX_PINNED_MEMORY=10e9, TOTAL_PINNED_MEMORY=11_000_000_000)
    assert host.pin_policy().limit_bytes == 0


def test_outside_comfyui_or_without_the_settings_the_core_default_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mm(monkeypatch)
    assert host.pin_policy() is None
    monkeypatch.setitem(sys.modules, "comfy.model_management", None)  # import fails
    assert host.pin_policy() is None


def test_the_real_host_defines_the_settings_read(comfyui_src: Path) -> None:
    mm = (comfyui_src / "comfy" / "model_management.py").read_text()
    args = (comfyui_src / "comfy" / "cli_args.py").read_text()
    assert "MAX_PINNED_MEMORY = -1" in mm and "TOTAL_PINNED_MEMORY = 0" in mm
    assert "if not args.disable_pinned_memory:" in mm
    assert '"--disable-pinned-memory"' in args
