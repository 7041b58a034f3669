"""Bytes each rank sends per sampling step for every parallel layout at 848x480x163 (computed, not measured).

The formula is the one the tests check against the bytes the gloo runs really send
(:func:`mochi_core.parallel.volume.step_bytes`); the link rates below turn it into seconds per step for orientation
only. Run: ``python bench/parallel_volume.py [--width 848 --height 480 --frames 163 --text-tokens 256]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.parallel import ParallelLayout  # noqa: E402
from mochi_core.parallel.volume import step_bytes  # noqa: E402

LINKS = {"PCIe 4.0 x16 (~25 GB/s)": 25e9, "NVLink H100 (~450 GB/s per direction)": 450e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--text-tokens", type=int, default=256, help="valid prompt tokens (256 = the most)")
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    cfg = DiTConfig()
    latent = ((args.frames - 1) // 6 + 1, args.height // 8, args.width // 8)
    layouts = [ParallelLayout(True, 1)] + [ParallelLayout(False, s) for s in (2, 3, 4, 6, 8)]
    layouts += [ParallelLayout(True, s) for s in (2, 3, 4)]
    print(f"{args.width}x{args.height}x{args.frames}, latent {latent}, bf16 DiT, {args.text_tokens} text tokens")
    print(f"{'GPUs':>4}  {'layout':<26} {'per step (GB)':>14} {'per video (GB)':>15}  " + "  ".join(LINKS))
    for layout in layouts:
        b = step_bytes(layout, dit_config=cfg, latent=latent, text_tokens=args.text_tokens, compute_bytes=2)
        secs = "  ".join(f"{b['total'] / rate:>8.2f} s/step" for rate in LINKS.values())
        print(
            f"{layout.ranks:>4}  {layout.flags():<26} {b['total'] / 1e9:>14.3f} {args.steps * b['total'] / 1e9:>15.1f}"
            f"  {secs}"
        )


if __name__ == "__main__":
    main()
