"""Benchmark: our memory-budgeted tiled decode vs diffusers ``AutoencoderKLMochi.enable_tiling()`` on this CPU.

Same random mid-size decoder weights (official recipe: GroupNorm weights 1 + 0.05 randn, others N(0, 0.05)) loaded
into both; same latent; same output size (848:480 aspect by default: 30 x 53 latents -> 240 x 424 px). Reports the
median wall time of each, the peak of live tensor bytes (PeakMemoryTracker, CPU) and each one's max abs error /
PSNR against its own untiled decode (diffusers drops frames differently, docs/numerics.md §4.3, so each is compared
with itself). Our budget defaults to 45% of the diffusers peak.

Run: python bench/vae_decode.py [--latent-frames 3 --height 30 --width 53 --repeats 3 --budget-frac 0.45]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mochi_core.formats.vae import to_diffusers  # noqa: E402
from mochi_core.testing.memory import PeakMemoryTracker  # noqa: E402
from mochi_core.testing.vae import random_decoder_state_dict  # noqa: E402
from mochi_core.vae import DecoderConfig, TilePlan, build_from_state_dict  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak(fn) -> int:
    with PeakMemoryTracker() as tr:
        fn()
    return tr.peak_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-frames", type=int, default=3)
    ap.add_argument("--height", type=int, default=30)
    ap.add_argument("--width", type=int, default=53)
    ap.add_argument("--channels", type=str, default="32,64,64,128")
    ap.add_argument("--res-blocks", type=str, default="1,1,1,1,1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-frac", type=float, default=0.45)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers

    cfg = DecoderConfig(
        channels=tuple(int(c) for c in args.channels.split(",")),
        num_res_blocks=tuple(int(c) for c in args.res_blocks.split(",")),
    )
    sd = random_decoder_state_dict(cfg, seed=0)
    ours = build_from_state_dict(sd, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.AutoencoderKLMochi(
            encoder_block_out_channels=(64, 32, 64, 32),
            decoder_block_out_channels=cfg.channels,
            layers_per_block=cfg.num_res_blocks,
        )
    dsd = {k: v for k, v in to_diffusers(sd, None).items()}
    missing, _ = theirs.load_state_dict(dsd, strict=False)
    assert not [k for k in missing if k.startswith("decoder.")], missing
    theirs.eval()
    z = torch.randn(1, 12, args.latent_frames, args.height, args.width, generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        ref_ours = ours.decode(z)
        theirs.disable_tiling()
        ref_theirs = theirs.decode(z).sample
        theirs.enable_tiling()
        t_theirs, out_theirs = timed(lambda: theirs.decode(z).sample, args.repeats)
        p_theirs = peak(lambda: theirs.decode(z).sample)
        budget = int(p_theirs * args.budget_frac)
        rows = []
        for norm in ("global", "tile"):
            plan = ours.plan_decode(z.shape, budget)
            plan = TilePlan(plan.frames, plan.height, plan.width, plan.overlap, norm)
            t_ours, out_ours = timed(lambda plan=plan: ours.decode(z, tile=plan), args.repeats)
            p_ours = peak(lambda plan=plan: ours.decode(z, tile=plan))
            rows.append((norm, plan, t_ours, p_ours, out_ours))

    out_px = tuple(ref_ours.shape[2:])
    print(
        f"decoder channels {cfg.channels}, res blocks {cfg.num_res_blocks}; latent {tuple(z.shape)} -> video {out_px}"
    )
    print(
        f"threads {torch.get_num_threads()}, repeats {args.repeats}; budget {budget / 2**20:.1f} MiB "
        f"({args.budget_frac:.0%} of the diffusers peak)"
    )
    print()
    print("| decode | plan | median s | peak MiB | max abs err vs untiled | PSNR dB | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    err_t = (out_theirs - ref_theirs).abs().max().item()
    print(
        f"| diffusers enable_tiling | 256 px tiles, stride 192 | {t_theirs:.2f} | {p_theirs / 2**20:.1f} | "
        f"{err_t:.3g} | {psnr(out_theirs, ref_theirs):.1f} | 1.00 | 1.00 |"
    )
    for norm, plan, t_ours, p_ours, out_ours in rows:
        err = (out_ours - ref_ours).abs().max().item()
        print(
            f"| mochi_core budget ({norm} stats) | {plan.frames} lat. frames x {plan.height}x{plan.width}, ov "
            f"{plan.overlap} | {t_ours:.2f} | {p_ours / 2**20:.1f} | {err:.3g} | {psnr(out_ours, ref_ours):.1f} | "
            f"{t_ours / t_theirs:.2f} | {p_ours / p_theirs:.2f} |"
        )
    print(
        f"\nwithin budget: {all(r[3] <= budget for r in rows)}; untiled ours vs untiled diffusers (frame-drop rule): "
        f"max {(ref_ours - ref_theirs).abs().max().item():.3g}"
    )


if __name__ == "__main__":
    main()
