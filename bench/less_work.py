"""Benchmark: TeaCache against no cache on the full-size DiT, and the chunked forward's memory (CPU).

1. TeaCache: the full 10B DiT with random weights (the fp8 Comfy-layout file of ``bench/full_size_cpu.py``,
   written once to ``--cache-dir``, ~10 GB) samples 128x128x7 for ``--steps`` steps (default 16), CFG 4.5 as one
   batch, three times in one process: no cache, TeaCache 0.06, TeaCache 0.09. Printed per run: DiT passes run
   and skipped, wall time, time ratio against the no-cache run, and the max abs deviation of the final latent
   from the no-cache latent. RANDOM WEIGHTS SAY NOTHING ABOUT QUALITY (nor about how many steps a real model
   skips): the deviation is a sanity figure only. A warm-up forward pages the weights in before any run is timed.
2. Memory: the mid-size DiT of ``bench/dit_forward.py`` (depth 4, width 768, 2 x 60 x 106 latent = 3180 visual
   tokens, fp32) runs one forward whole and one in chunks of ``--chunk`` tokens; printed: tracked tensor peaks
   (CPU allocator events), their ratio, the planner's predicted ratio, and the max abs difference of the outputs.

Usage: python bench/less_work.py [--steps 16] [--thresholds 0.06 0.09] [--chunk 512] [--skip-full] [--smoke]
                                 [--parallel]
It takes the whole machine for a long time (three 16-step runs of the 10B model, ~30 s per step on 2 cores).
CPU seconds per run are printed next to wall time: on a machine shared with other work they are the figure to
trust. ``--parallel`` runs the three sampling runs as three processes at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from mochi_core import load_dit  # noqa: E402
from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.memory.estimates import dit_activation_bytes  # noqa: E402
from mochi_core.sampling import SamplingStats, make_noise, sample  # noqa: E402
from mochi_core.testing.dit import random_dit_state_dict, write_dit  # noqa: E402
from mochi_core.testing.memory import track_memory  # noqa: E402


def _load(path: Path, args: argparse.Namespace) -> tuple[torch.nn.Module, tuple, tuple, torch.Tensor]:
    model = load_dit(path, device="cpu")
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, cfg.t5_token_length, cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(1, cfg.t5_token_length, dtype=torch.bool)
    mask[0, :12] = True
    neg = (torch.zeros_like(feat), torch.zeros_like(mask))
    noise = make_noise(0, frames=args.frames, height=args.height, width=args.width)
    t0 = time.perf_counter()
    touched = 0
    for prm in model.parameters():  # page the memory-mapped weights in before anything is timed
        touched += int(prm.detach().view(-1)[:: max(1, 4096 // prm.element_size())].float().sum().isfinite())
    print(f"weights paged in: {time.perf_counter() - t0:.1f} s ({touched} tensors)", flush=True)
    return model, (feat, mask), neg, noise


def one_run(path: Path, args: argparse.Namespace, thr: float) -> dict:
    """One sampling run (TeaCache ``thr``, 0 = off): passes, wall and CPU seconds, the final latent."""
    model, pos, neg, noise = _load(path, args)
    stats = SamplingStats()
    w0, c0 = time.perf_counter(), time.process_time()

    def progress(i: int, total: int, x0: torch.Tensor) -> None:
        print(f"    [teacache {thr:g}] step {i + 1}/{total} at {time.perf_counter() - w0:.0f} s", flush=True)

    with torch.inference_mode():
        z = sample(
            model, noise, pos, neg, steps=args.steps, cfg=4.5, batch_cfg=True, teacache_threshold=thr,
            stats=stats, callback=progress,
        )  # fmt: skip
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"thr": thr, "stats": stats.as_dict(), "wall": wall, "cpu": cpu, "z": z}


def teacache_runs(path: Path, args: argparse.Namespace) -> None:
    thresholds = [0.0, *args.thresholds]
    if args.parallel:
        with tempfile.TemporaryDirectory() as tmp:
            procs = []
            for thr in thresholds:
                out = Path(tmp) / f"run_{thr:g}.pt"
                cmd = [sys.executable, __file__, "--child", str(thr), "--child-out", str(out), "--steps",
                       str(args.steps), "--width", str(args.width), "--height", str(args.height), "--frames",
                       str(args.frames), "--cache-dir", args.cache_dir] + (["--smoke"] if args.smoke else [])  # fmt: skip
                procs.append((subprocess.Popen(cmd), out))
            for proc, _ in procs:
                if proc.wait() != 0:
                    raise SystemExit(f"a run failed (exit {proc.returncode})")
            runs = [torch.load(out) for _, out in procs]
    else:
        runs = [one_run(path, args, thr) for thr in thresholds]
    ref = runs[0]
    mode = "3 runs at once (--parallel)" if args.parallel else "one run after the other"
    print(f"\nTeaCache on the full-size random DiT, {args.width}x{args.height}x{args.frames}, {args.steps} steps, "
          f"CFG 4.5 batched, {torch.get_num_threads()} threads per run, {mode}")  # fmt: skip
    print(f"{'threshold':>9s} {'passes run':>10s} {'skipped':>8s} {'pattern':>{max(7, args.steps)}s} {'wall s':>8s} "
          f"{'wall ratio':>10s} {'CPU s':>8s} {'CPU ratio':>9s} {'max|dz|':>9s}")  # fmt: skip
    for r in runs:
        st = r["stats"]
        name = "no cache" if r["thr"] == 0 else f"{r['thr']:g}"
        dev = (r["z"] - ref["z"]).abs().max().item()
        print(
            f"{name:>9s} {st['dit_passes']:10d} {st['dit_passes_skipped']:8d} "
            f"{st['teacache_pattern'] or '-':>{max(7, args.steps)}s} {r['wall']:8.1f} {r['wall'] / ref['wall']:10.3f} "
            f"{r['cpu']:8.1f} {r['cpu'] / ref['cpu']:9.3f} {dev:9.3g}"
        )
    print("random weights: the deviation is a sanity figure only, not a measure of quality; CPU seconds are the")
    print("figure to trust on a shared machine (wall time includes waiting for other processes)")


def memory_runs(args: argparse.Namespace) -> None:
    cfg = DiTConfig(depth=4, num_heads=6, hidden_size_x=768, hidden_size_y=384, t5_feat_dim=4096)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_dit(write_dit(Path(tmp) / "mid.safetensors", "official", random_dit_state_dict(cfg, seed=0)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 2, 60, 106, generator=g)
    feat = torch.randn(1, 256, cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[0, :12] = True
    n = 2 * 30 * 53
    peaks, outs = {}, {}
    with torch.inference_mode():
        for chunk in (None, args.chunk):
            model.token_chunk = chunk
            outs[chunk] = model(x, torch.tensor([0.6]), feat, mask)  # warm-up
            with track_memory(rss=False) as rep:
                model(x, torch.tensor([0.6]), feat, mask)
            peaks[chunk] = rep.tensor_peak_bytes
    pred = {
        c: dit_activation_bytes(
            cfg, visual_tokens=n, text_tokens=12, batch=1, compute_dtype="fp32", storage="fp32",
            backend="cpu_flash", device_type="cpu", token_chunk=c,
        )["total"]
        for c in (None, args.chunk)
    }  # fmt: skip
    diff = (outs[args.chunk] - outs[None]).abs().max().item()
    print(f"\nchunked forward, mid-size DiT (depth 4, width 768, {n} visual tokens, fp32), chunk {args.chunk} tokens")
    print(f"  tracked tensor peak: whole {peaks[None] / 1e6:.1f} MB, chunked {peaks[args.chunk] / 1e6:.1f} MB, "
          f"ratio {peaks[args.chunk] / peaks[None]:.3f} (planner predicts {pred[args.chunk] / pred[None]:.3f})")  # fmt: skip
    print(f"  max abs difference of the outputs: {diff:.2e} (|out| max {outs[None].abs().max().item():.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mochi-bench"))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.06, 0.09])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=7)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--skip-full", action="store_true", help="only the memory part")
    p.add_argument("--skip-memory", action="store_true", help="only the TeaCache part")
    p.add_argument("--smoke", action="store_true", help="a 3-block model instead of the 10B one (checks the script)")
    p.add_argument("--parallel", action="store_true", help="run the three sampling runs at once (shared machines)")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.child is not None:  # one run of --parallel
        torch.save(one_run(_dit_path(args), args, args.child), args.child_out)
        return
    if not args.skip_memory:
        memory_runs(args)
    if args.skip_full:
        return
    path = _dit_path(args)
    print(f"DiT file: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    teacache_runs(path, args)


def _dit_path(args: argparse.Namespace) -> Path:
    """The cached random DiT file (written once; ``--smoke``: a 3-block one)."""
    import full_size_cpu

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        path = cache / "smoke_dit_fp8_comfy.safetensors"
        if not path.exists():
            cfg = DiTConfig(depth=3, num_heads=2, hidden_size_x=128, hidden_size_y=64)
            full_size_cpu.write_full_fp8(path, config=cfg)
        return path
    path = cache / full_size_cpu.FILE_NAME
    if not path.exists():
        print(f"writing the full-size random fp8 DiT to {path} (once, ~10 GB) ...", flush=True)
        full_size_cpu.write_full_fp8(path)
    return path


if __name__ == "__main__":
    main()
