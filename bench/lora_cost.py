"""Benchmark: the cost of one LoRA per DiT forward, as a ratio to the same forward without it (CPU, fp32).

The DiT benchmark's mid size (``bench/dit_forward.py``: depth 4, visual width 768, text width 384, 3180 visual tokens,
256 text tokens of which 40 valid), random weights loaded with ``load_dit`` from an official file. A random LoRA in
Genmo's fine-tuner layout (all four attention projections of every block, as Genmo trains them) is applied with
``apply_loras`` at each rank; the run-time path and the merged weights are timed against the base model in the
same process, forwards alternated (base, LoRA, merged, base, ...) so drift hits every variant alike; ratios of
the median over rounds of each round's ratio (adjacent forwards), in the process's CPU time (the steadier clock on a
machine shared with other work, where a forward can be descheduled; with ``--threads 1`` it counts exactly the work
done) and in wall-clock time. The merged model does the base model's work, so its ratio is a null control: how far
from 1.0 it lands is the noise of the measurement. Also printed: the ratio of multiply-adds the low-rank path adds (at this size and at the full model's),
for context: rank 128 is 1/6 of the width here but 1/24 of the full model's 3072.

Usage: python bench/lora_cost.py [--ranks 16 128] [--repeats 7] [--threads N] [--depth 4] [--width 768]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dit_forward import forward_flops, make_config, make_inputs  # noqa: E402

from mochi_core import apply_loras, load_dit, load_lora  # noqa: E402
from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.testing.dit import random_dit_state_dict, write_dit  # noqa: E402
from mochi_core.testing.lora import write_lora  # noqa: E402


def lora_flops(cfg: DiTConfig, rank: int, visual: int, text: int) -> float:
    """Multiply-add FLOPs (x2) of the low-rank paths on qkv_x, proj_x (visual tokens), qkv_y, proj_y (text)."""
    dx, dy = cfg.hidden_size_x, cfg.hidden_size_y
    per_visual = rank * (dx + 3 * dx) + rank * (dx + dx)
    per_text_qkv = rank * (dy + 3 * dx)
    per_text_proj = rank * (dx + dy)
    total = cfg.depth * (visual * per_visual + text * per_text_qkv) + (cfg.depth - 1) * text * per_text_proj
    return 2.0 * total


def time_forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one forward."""
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        model(*inputs)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--t5-dim", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--width-px", type=int, default=106)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--valid", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    inputs = make_inputs(cfg, args)
    visual = args.frames * (args.height // 2) * (args.width_px // 2)
    full = DiTConfig()
    print(
        f"DiT depth {cfg.depth}, width {cfg.hidden_size_x}/{cfg.hidden_size_y}, {visual} visual tokens, "
        f"{args.valid} text tokens, fp32 CPU, {args.threads} threads, {args.repeats} forwards per variant"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dit(Path(tmp) / "dit.safetensors", "official", random_dit_state_dict(cfg, seed=0))
        model = load_dit(path)
        time_forward(model, inputs)  # warm-up
        for rank in args.ranks:
            lora = load_lora(write_lora(Path(tmp) / f"r{rank}.lora.safetensors", "genmo", cfg, rank=rank, alpha=rank))
            times: dict[str, list[tuple[float, float]]] = {"base": [], "lora": [], "merged": []}
            for _ in range(args.repeats):
                apply_loras(model, [])
                times["base"].append(time_forward(model, inputs))
                apply_loras(model, [(lora, 1.0)])
                times["lora"].append(time_forward(model, inputs))
                apply_loras(model, [(lora, 1.0)], merge=True)
                times["merged"].append(time_forward(model, inputs))
            apply_loras(model, [])
            wall = {k: [t[0] for t in v] for k, v in times.items()}
            cpu = {k: [t[1] for t in v] for k, v in times.items()}

            def paired(clock: dict[str, list[float]], variant: str) -> float:
                """Median over the rounds of (variant / base) in the same round (adjacent forwards)."""
                return statistics.median(v / b for v, b in zip(clock[variant], clock["base"]))

            mid_extra = lora_flops(cfg, rank, visual, args.valid) / forward_flops(
                cfg, 1, visual, args.valid, args.valid
            )
            full_extra = lora_flops(full, rank, 44520, 256) / forward_flops(full, 1, 44520, 256, 256)
            print(
                f"rank {rank:4d}: run-time LoRA / base = {paired(cpu, 'lora'):.3f} CPU time, "
                f"{paired(wall, 'lora'):.3f} wall (base {statistics.median(wall['base']) * 1e3:.0f} ms); "
                f"null control merged / base (the same work) = {paired(cpu, 'merged'):.3f} CPU, "
                f"{paired(wall, 'merged'):.3f} wall; added FLOPs {100 * mid_extra:.2f} % here, "
                f"{100 * full_extra:.2f} % at full size 848x480x163"
            )


if __name__ == "__main__":
    main()
