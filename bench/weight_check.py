"""Benchmark: the cost of the NaN/inf weight check (``mochi_core.finite``) on the first DiT forward.

Cast-on-use weights are checked on their first cast, once per weight (one float32 sum of the slice just cast); later
forwards skip it. This script loads the same file twice, runs the first forward with the check and with it switched
off (``weight_origin = None`` on every layer), alternating, and prints the median times and their ratio. A tiny model
(the golden configuration) and a mid-size one (depth 4, visual width 768, T5 width 4096: 0.5 GB of fp32 weights,
stored as Comfy scaled fp8 so every weight is cast on use) at a small latent, where the check weighs most.

Usage: python bench/weight_check.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mochi_core import load_dit, ops  # noqa: E402
from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.testing.dit import random_dit_state_dict, write_dit  # noqa: E402

CONFIGS = {
    "tiny": DiTConfig.tiny(),
    "mid": DiTConfig(depth=4, num_heads=6, hidden_size_x=768, hidden_size_y=384, t5_feat_dim=4096),
}


def first_forward(path: Path, cfg: DiTConfig, check: bool) -> float:
    model = load_dit(path)
    if not check:
        for _, m in ops.cast_modules(model):
            m.weight_origin = None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 2, 16, 16, generator=g)
    feat = torch.randn(1, 256, cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[0, :40] = True
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x, torch.full((1,), 0.5), feat, mask)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS.items():
            path = write_dit(Path(tmp) / f"{name}.safetensors", "comfy_scaled_fp8", random_dit_state_dict(cfg))
            times: dict[bool, list[float]] = {True: [], False: []}
            first_forward(path, cfg, True)  # warm-up (page cache, kernels)
            for _ in range(args.repeats):
                for check in (False, True):
                    times[check].append(first_forward(path, cfg, check))
            on, off = statistics.median(times[True]), statistics.median(times[False])
            size = path.stat().st_size / 1e6
            print(
                f"{name}: file {size:.1f} MB, first forward {off * 1e3:.1f} ms unchecked, {on * 1e3:.1f} ms checked "
                f"(ratio {on / off:.3f}, +{(on - off) * 1e3:.1f} ms; median of {args.repeats})"
            )


if __name__ == "__main__":
    main()
