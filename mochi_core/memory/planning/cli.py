"""``python -m mochi_core plan``: print the memory plan of one generation.

``mochi_core/cli.py`` registers the subcommand with :func:`add_plan_parser`; ``python -m mochi_core.memory.planning.cli``
runs it standalone. Exit status, as for ``generate``: 0 when the job fits the budget, 3 when it does not (the
message names the smallest budget that would fit), 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ...errors import DoesNotFitError, MochiError
from .planner import ATTENTIONS, DIT_STORAGES, VAE_DTYPES, parse_bytes, plan, require_fit

__all__ = ["add_plan_parser", "run_plan", "main"]

logger = logging.getLogger(__name__)


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``plan`` subcommand to an ``argparse`` subparsers object; its ``func`` default runs it."""
    p = subparsers.add_parser(
        "plan",
        help="predict the memory peak of a generation and whether it fits a budget",
        description="Predict the peak memory of each phase (text encoding, sampling, decoding) of one generation "
        "and choose block streaming and decode tiles so it fits the budget.",
    )
    from ...cli import add_size_arguments

    add_size_arguments(p)
    p.add_argument("--budget", required=True, help="memory budget: 20GB, 12GiB, 500MB or bytes")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dit-storage", default="fp8_e4m3fn", choices=list(DIT_STORAGES))
    p.add_argument("--t5-storage", default="fp16", choices=list(DIT_STORAGES))
    p.add_argument(
        "--vae-dtype",
        default=None,
        choices=list(VAE_DTYPES),
        help="VAE dtype (default: the device's, bf16 on CUDA GPUs with native bf16, else fp32)",
    )
    p.add_argument("--attention", default="sdpa", choices=list(ATTENTIONS))
    p.add_argument("--resident-blocks", type=int, default=None, help="force this many resident DiT blocks")
    p.add_argument("--no-batch-cfg", action="store_true", help="run cond and uncond as separate DiT calls")
    p.add_argument("--no-prefetch", action="store_true", help="plan streaming without prefetch")
    p.add_argument("--text-tokens", type=int, default=None, help="valid prompt tokens (default 256, worst case)")
    p.add_argument(
        "--reserve",
        default=None,
        help="kept free for the CUDA context etc.: 768MiB, 1GB or bytes (default 768MiB on CUDA)",
    )
    p.add_argument("--cfg-parallel", action="store_true", help="plan one rank of a CFG-parallel run (torchrun)")
    p.add_argument("--sp", type=int, default=1, help="plan one rank of an N-way sequence-parallel run (torchrun)")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="count a LoRA file's run-time factors in the DiT (repeatable; the strength does not change the bytes)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Run the ``plan`` subcommand; prints the plan on stdout, returns the exit status."""
    try:
        from ...options import parse_lora_arg

        loras = [parse_lora_arg(t)[0] for t in args.lora]
        result = plan(
            args.width,
            args.height,
            args.frames,
            budget_bytes=parse_bytes(args.budget, what="--budget"),
            device=args.device,
            dit_storage=args.dit_storage,
            t5_storage=args.t5_storage,
            vae_dtype=args.vae_dtype,
            attention=args.attention,
            resident_blocks=args.resident_blocks,
            batch_cfg=False if args.no_batch_cfg else None,
            prefetch=not args.no_prefetch,
            text_tokens=args.text_tokens,
            reserve_bytes=None
            if args.reserve is None
            else parse_bytes(args.reserve, what="--reserve", allow_zero=True),
            cfg_parallel=args.cfg_parallel,
            sp=args.sp,
            loras=loras,
        )
    except MochiError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write((result.to_json() if args.json else result.summary()) + "\n")
    try:
        require_fit(result)
    except DoesNotFitError as exc:
        sys.stderr.write(f"does not fit: {exc}\n")
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m mochi_core.memory.planning.cli plan ...``."""
    parser = argparse.ArgumentParser(prog="mochi_core")
    sub = parser.add_subparsers(dest="command", required=True)
    add_plan_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
