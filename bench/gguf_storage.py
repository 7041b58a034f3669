"""Benchmark: GGUF block types as DiT weight storage, against fp8 storage (Comfy's scaled fp8) measured in the same run.

Per storage it prints:

- the bytes of the full-size DiT (48 blocks, widths 3072/1536, counted on the ``meta`` device: every cast-on-use
  Linear weight in that storage where its rows are whole blocks, everything else as a ``.gguf`` converter keeps
  it, fp32), and the ratio to fp8;
- the cast cost per forward at the DiT benchmark's mid size (``bench/dit_forward.py``: depth 4, width 768,
  text width 384, T5 width 4096): the time to expand every cast-on-use weight of the model once, exactly as one
  forward does (``CastWeights.compute_weight``, in the row slices ``ops.Linear`` uses on the CPU), median of
  ``--repeats`` rounds in which the storages take turns, as a ratio to fp8's; the compute dtype is fp32 on the CPU, bf16 on CUDA (``--device``).

Weights are valid random blocks (``mochi_core.testing.gguf.random_blocks``): the cost of expanding blocks does not
depend on their values.

Usage: python bench/gguf_storage.py [--repeats 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mochi_core import ops, quants  # noqa: E402
from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.dit.model import AsymmDiT  # noqa: E402
from mochi_core.testing.gguf import random_blocks  # noqa: E402

STORAGES = ("fp8", "bf16", *quants.QUANT_TYPES)


def mid_config() -> DiTConfig:
    """The mid size of ``bench/dit_forward.py`` (its defaults)."""
    return DiTConfig(depth=4, num_heads=6, hidden_size_x=768, hidden_size_y=384, t5_feat_dim=4096)


def _bytes(shape: tuple[int, ...], storage: str) -> int:
    n = math.prod(shape)
    if storage == "fp8":
        return n + 4  # fp8 values + the fp32 per-tensor scale
    if storage == "bf16":
        return 2 * n
    q = quants.QUANT_TYPES[storage]
    return q.nbytes(n) if shape[-1] % q.block_size == 0 else 4 * n


def full_size_bytes(storage: str) -> tuple[int, int]:
    """(bytes of the full-size DiT in ``storage``, number of Linear weights kept in it) from the meta device."""
    model = AsymmDiT(DiTConfig(), device="meta")
    cast = {id(m.weight) for _, m in ops.cast_modules(model) if isinstance(m, ops.Linear)}
    total = kept = 0
    for p in list(model.parameters()) + list(model.buffers()):
        shape = tuple(p.shape)
        if id(p) in cast:
            b = _bytes(shape, storage)
            kept += b != 4 * math.prod(shape)
        else:
            b = 4 * p.numel()
        total += b
    return total, kept


def build(storage: str, device: torch.device) -> AsymmDiT:
    """The mid-size model with every Linear weight in ``storage`` (random values), the rest fp32, on ``device``."""
    model = AsymmDiT(mid_config(), device="cpu")
    g = torch.Generator().manual_seed(0)
    for i, (_, mod) in enumerate(ops.cast_modules(model)):
        if not isinstance(mod, ops.Linear):
            continue
        shape = tuple(mod.weight.shape)
        w = torch.randn(shape, generator=g) * 0.05
        if storage == "fp8":
            q, s = ops.quantize_scaled_fp8(w)
            ops.set_weight(mod, q.to(device), fmt="scaled_fp8", scale=s.to(device))
        elif storage == "bf16" or shape[-1] % quants.QUANT_TYPES[storage].block_size:
            ops.set_weight(mod, w.to(device, torch.bfloat16 if storage == "bf16" else torch.float32))
        else:
            raw = torch.from_numpy(random_blocks(storage, shape, seed=i))
            ops.set_weight(mod, raw.to(device), fmt=storage, shape=shape)
    return model


def casts_of_one_forward(model: AsymmDiT, dtype: torch.dtype, device: torch.device) -> None:
    """Expand every cast-on-use weight once, as one forward does (row slices on the CPU, like ``ops.Linear``)."""
    for _, mod in ops.cast_modules(model):
        shape = mod.weight_shape or tuple(mod.weight.shape)
        step = None
        if isinstance(mod, ops.Linear) and device.type == "cpu":
            needs = mod.weight_format != "plain" or mod.weight.dtype != dtype
            step = ops.cast_chunk_rows(shape[0], shape[1], dtype.itemsize) if needs else None
        if step is None:
            mod.compute_weight(dtype, device)
            continue
        for start in range(0, shape[0], step):
            mod.compute_weight(dtype, device, (start, min(start + step, shape[0])))


def time_casts(models: dict[str, AsymmDiT], dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of one forward's casts per storage; the storages take turns within each round, so a load
    change on the machine touches all of them alike."""
    times: dict[str, list[float]] = {s: [] for s in models}
    for r in range(repeats + 1):
        for s, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            casts_of_one_forward(model, dtype, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:  # round 0 warms up
                times[s].append(time.perf_counter() - t)
    return {s: statistics.median(v) for s, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = {s: full_size_bytes(s) for s in STORAGES}
    costs = time_casts({s: build(s, device) for s in STORAGES}, dtype, device, args.repeats)
    ref_b, ref_t = sizes["fp8"][0], costs["fp8"]
    cfg = mid_config()
    print(
        f"full-size DiT bytes (meta device) and cast cost per forward at mid size (depth {cfg.depth}, width "
        f"{cfg.hidden_size_x}; {args.device}, compute {str(dtype).replace('torch.', '')}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}); ratios against fp8 storage"
    )
    print(f"{'storage':8s} {'bits/w':>7s} {'DiT GB':>8s} {'ratio':>6s} {'cast ms':>8s} {'ratio':>6s}")
    for s in STORAGES:
        bits = 8.0 if s == "fp8" else 16.0 if s == "bf16" else quants.QUANT_TYPES[s].bits_per_weight
        b, t = sizes[s][0], costs[s]
        print(f"{s:8s} {bits:7.3f} {b / 1e9:8.2f} {b / ref_b:6.2f} {t * 1e3:8.1f} {t / ref_t:6.2f}")


if __name__ == "__main__":
    main()
