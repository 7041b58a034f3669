"""Benchmark: the full 10B Mochi DiT on this CPU, ours vs ComfyUI's native Mochi (issue 7 "Benchmark").

1. Writes once, outside the repository (``--cache-dir``, default ``~/.cache/mochi-bench``), the full-size AsymmDiT
   with random weights as ONE fp8 safetensors file in the Comfy layout (``model.diffusion_model.`` prefix; block
   Linear weights fp8_e4m3fn, everything else bf16). The file is streamed tensor by tensor: the writer never holds
   more than one tensor.
2. Runs our pipeline on it in a fresh subprocess per variant: ``load_dit`` (weights kept in fp8, cast on use) and
   ``sampling.sample`` at a small size (default 128x128, 7 frames, 2 steps, CFG 4.5, batched CFG), conditioning
   with 12 valid prompt tokens vs 1 (as measured for the peer). Variants: all blocks resident, and block
   streaming with N resident blocks (``--resident``). Reports seconds per step and the child's peak RSS.
3. Peer: by default the figures measured here for ComfyUI (UNETLoader weight_dtype fp8_e4m3fn + KSampler, 2 cores,
   128x128, 7 frames, 2 steps, CFG 4.5, 12 vs 1 valid text tokens): 142-158 s per step, peak RSS 20.6 GB.
   With ``--comfy-url`` and ``--comfy-workflow`` (API-format JSON using the cached file), the script queues the
   workflow through the host's ``/prompt`` API, waits on ``/history`` and measures wall time; ``--comfy-pid`` adds
   the server's peak RSS (VmHWM, reset through /proc/<pid>/clear_refs when allowed).

Goals (issue 7): time ratio ours/peer <= 0.5, our peak RSS <= 11 GB.
It takes the whole machine for many minutes: run it only when nothing else runs.

Usage: python bench/full_size_cpu.py [--cache-dir DIR] [--width 128 --height 128 --frames 7 --steps 2]
                                     [--resident 4] [--comfy-url http://127.0.0.1:8188 --comfy-workflow wf.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_S_PER_STEP = (142.0, 158.0)
PEER_PEAK_RSS = 20.6e9
FILE_NAME = "mochi_dit_random_fp8_comfy.safetensors"


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
stamps = [time.perf_counter()]
with torch.inference_mode():
    sample(model, noise, (feat, mask), (nfeat, nmask), steps=a["steps"], cfg=a["cfg"], batch_cfg=a["batch_cfg"],
           callback=lambda i, n, x0: stamps.append(time.perf_counter()))
steps = [b - a_ for a_, b in zip(stamps, stamps[1:])]
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


def _vmhwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_peer(args: argparse.Namespace) -> dict[str, object]:
    if not (args.comfy_url and args.comfy_workflow):
        lo, hi = PEER_S_PER_STEP
        return {"step_s": [(lo + hi) / 2], "peak_rss": PEER_PEAK_RSS, "source": "recorded (issue 7)"}
    workflow = json.loads(Path(args.comfy_workflow).read_text())
    if args.comfy_pid:
        try:
            Path(f"/proc/{args.comfy_pid}/clear_refs").write_text("5")
        except OSError:
            pass
    body = json.dumps({"prompt": workflow}).encode()
    t0 = time.perf_counter()
    req = urllib.request.Request(
        args.comfy_url.rstrip("/") + "/prompt", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - local host URL given by the user
        prompt_id = json.loads(r.read())["prompt_id"]
    while True:
        time.sleep(2)
        with urllib.request.urlopen(args.comfy_url.rstrip("/") + f"/history/{prompt_id}", timeout=60) as r:  # noqa: S310
            hist = json.loads(r.read())
        if prompt_id in hist:
            break
    wall = time.perf_counter() - t0
    rss = _vmhwm(args.comfy_pid) if args.comfy_pid else None
    return {"step_s": [wall / args.steps], "peak_rss": rss, "source": "measured via the host API (wall / steps)"}


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mochi-bench"))
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=7)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--no-batch-cfg", action="store_true")
    p.add_argument("--resident", type=int, nargs="*", default=[4], help="streaming variants (resident blocks)")
    p.add_argument("--comfy-url", default=None)
    p.add_argument("--comfy-workflow", default=None)
    p.add_argument("--comfy-pid", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model instead of the 10B one (checks the script)")
    args = p.parse_args()

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / FILE_NAME
    if args.smoke:
        from mochi_core.dit.config import DiTConfig

        path = cache / "smoke_dit_fp8_comfy.safetensors"
        write_full_fp8(path, config=DiTConfig(depth=3, num_heads=2, hidden_size_x=128, hidden_size_y=64))
    elif not path.exists():
        print(f"writing the full-size random fp8 DiT to {path} (once) ...", flush=True)
        write_full_fp8(path)
    print(f"DiT file: {path} ({path.stat().st_size / 1e9:.2f} GB)")

    peer = run_peer(args)
    rows = []
    for resident in [None, *args.resident]:
        label = "ours, all resident" if resident is None else f"ours, streaming N={resident}"
        res = run_ours(path, args, resident)
        steps = res["step_s"]
        per_step = sum(steps) / len(steps)
        rows.append((label, per_step, res["peak_rss"], res["load_s"]))
    peer_step = sum(peer["step_s"]) / len(peer["step_s"])
    print(f"\n{args.width}x{args.height}x{args.frames}, {args.steps} steps, CFG {args.cfg}, threads {os.cpu_count()}")
    print(f"peer (ComfyUI native, {peer['source']}): {peer_step:.1f} s/step, peak RSS "
          + (f"{peer['peak_rss'] / 1e9:.2f} GB" if peer["peak_rss"] else "n/a"))  # fmt: skip
    print(f"{'variant':28s} {'s/step':>8s} {'ratio':>7s} {'peak RSS':>10s} {'RSS ratio':>9s} {'load s':>7s}")
    for label, per_step, rss, load_s in rows:
        rss_ratio = f"{rss / peer['peak_rss']:.2f}" if peer["peak_rss"] else "n/a"
        print(
            f"{label:28s} {per_step:8.1f} {per_step / peer_step:7.2f} {rss / 1e9:8.2f}GB {rss_ratio:>9s} {load_s:7.1f}"
        )
    print("goals: time ratio <= 0.5, peak RSS <= 11 GB")


if __name__ == "__main__":
    main()
