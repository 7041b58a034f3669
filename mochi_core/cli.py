"""Headless command line: ``python -m mochi_core generate ...`` (and ``plan`` when the memory package adds it).

Reproduces the settings of genmoai/mochi ``demos/cli.py`` (848x480, 64 steps, cfg 6.0, 30 fps MP4)
without a graph; see README "CLI". Errors the user can cause are printed as one line (no stack trace) with
exit status 2 (bad input or checkpoint), 3 (does not fit), 4 (a multi-process run stopped because a rank failed; the
message names it), 130 (interrupted) or 1 (other pack errors, e.g. an MP4 that could not be written: its frames are
then saved as PNG files and the message says where). Multi-process runs (``torchrun``, ``--cfg-parallel``, ``--sp``,
``--prompts``): :mod:`mochi_core.parallel.launch`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import (
    DoesNotFitError,
    InvalidInputError,
    MochiError,
    MochiInterrupted,
    OutputWriteError,
    ParallelError,
    UnsupportedCheckpointError,
)

__all__ = ["main", "build_parser", "parse_bytes"]

logger = logging.getLogger(__name__)


def parse_bytes(text: str, *, name: str = "--budget") -> int:
    """'20GB' -> 20e9, '18GiB' -> 18 * 2**30, '123456' -> bytes: the planner's parser (one rule for every command);
    an error names the option ``name`` (e.g. ``--memory-budget``)."""
    from .units import parse_bytes as _parse

    return _parse(text, what=name)


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    """--width, --height, --frames with the defaults every entry point shares (:data:`options.DEFAULT_SIZE`)."""
    from .options import DEFAULT_SIZE

    w, h, f = DEFAULT_SIZE["width"], DEFAULT_SIZE["height"], DEFAULT_SIZE["frames"]
    p.add_argument("--width", type=int, default=w, help=f"multiple of 16 (default {w})")
    p.add_argument("--height", type=int, default=h, help=f"multiple of 16 (default {h})")
    p.add_argument("--frames", type=int, default=f, help=f"6k+1 frames: 1, 7, 13, ..., 163 (default {f})")


def _add_generate_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="render a video from a prompt (T5 -> DiT sampling -> VAE decode)",
        description="Render one Mochi 1 video from a text prompt and write it as MP4 (30 fps) and/or PNG frames.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", help="text prompt")
    which.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="render a list: one prompt a line (blank lines and # comments skipped), seeds from --seed upward; "
        "outputs are numbered (fox.mp4 -> fox_000.mp4, ...; --frames-dir DIR -> DIR/000/, ...). Under torchrun "
        "without --cfg-parallel/--sp the prompts are spread over the processes",
    )
    p.add_argument("--negative", default="", help="negative prompt (default: empty, the official unconditional)")
    p.add_argument("--dit", required=True, help="DiT checkpoint (any supported layout)")
    p.add_argument("--vae", required=True, help="VAE checkpoint holding the decoder")
    p.add_argument("--t5", required=True, help="T5 v1.1 XXL encoder: file (fp16, fp8, fp8_scaled) or HF folder")
    p.add_argument("--tokenizer", default=None, help="T5 tokenizer: tokenizer.json, spiece.model or their folder")
    add_size_arguments(p)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 64; set by --preset fast)")
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="classifier-free guidance scale (default 6.0; 1 = off; set by --preset fast)",
    )
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: random, reported in the summary)")
    p.add_argument("--threshold-noise", type=float, default=0.025, help="linear-quadratic schedule threshold")
    p.add_argument("--linear-steps", type=int, default=None, help="linear part of the schedule (default steps//2)")
    p.add_argument("--no-batch-cfg", action="store_true", help="run cond and uncond as two DiT calls per step")
    p.add_argument(
        "--preset", default="default", help="default, or fast (FastMochi: 8 steps, cfg 1.5, its schedule; for the "
        "distilled FastMochi weights)",
    )  # fmt: skip
    p.add_argument(
        "--teacache-threshold", type=float, default=0.0,
        help="TeaCache: skip DiT passes while the input barely changes (0 = off; 0.06 / 0.09 published)",
    )  # fmt: skip
    p.add_argument("--max-skip-steps", type=int, default=0, help="TeaCache: most skips in a row (0 = no limit)")
    p.add_argument(
        "--stg-scale", type=float, default=0.0, help="spatiotemporal skip guidance scale (0 = off, 1 typical)"
    )
    p.add_argument(
        "--stg-blocks", default="34", help="STG: DiT blocks skipped in the perturbed pass (e.g. 34 or 30,34)"
    )
    p.add_argument("--stg-rescale", type=float, default=0.0, help="STG rescale (0 = off, 0.7 typical)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda when available)")
    p.add_argument(
        "--compute-dtype",
        "--dtype",
        dest="compute_dtype",
        default=None,
        help="DiT compute dtype: fp32, bf16, fp16 (default fp32 on CPU, bf16 on CUDA; --dtype is the earlier name)",
    )
    p.add_argument("--dit-storage-dtype", default=None, help="convert DiT weights: bf16, fp16, fp8_e4m3fn, q8_0 ...")
    p.add_argument("--t5-storage-dtype", default=None, help="convert T5 weights: bf16, fp16, fp8_e4m3fn ...")
    p.add_argument(
        "--vae-compute-dtype",
        "--vae-dtype",
        dest="vae_compute_dtype",
        default=None,
        help="VAE compute dtype (default fp32 on CPU, bf16 on CUDA; fp32 on GPUs without native bf16; --vae-dtype is the earlier name)",
    )
    p.add_argument("--vae-storage-dtype", default=None, help="convert VAE weights: bf16, fp16 ...")
    p.add_argument("--attention", default="sdpa", help="DiT attention backend: sdpa, flash, sage")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="apply a LoRA (Genmo's fine-tuner file or a diffusers / peft file) at STRENGTH (default 1; negative "
        "subtracts); repeat to stack several",
    )
    p.add_argument("--memory-budget", default=None, help="decode memory budget, e.g. 8GB (tiles to fit)")
    p.add_argument(
        "--budget",
        default=None,
        help="device memory for the whole job, e.g. 12GB: the planner chooses block streaming, CFG batching and "
        "decode tiles, and refuses a job that cannot fit before loading anything",
    )
    p.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="under torchrun: cond and uncond on two processes (with --sp N: 2 x N processes)",
    )
    p.add_argument(
        "--sp",
        type=int,
        default=1,
        help="under torchrun: sequence parallelism over N processes (N must divide the DiT's 24 heads)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        help="seconds a process waits for a slow peer in a collective (default 1800); a dead peer is detected "
        "within about 30 s regardless",
    )
    p.add_argument("--out", default=None, help="output MP4 path")
    p.add_argument(
        "--frames-dir",
        default=None,
        help="also write PNG frames into this folder (if writing the MP4 fails, the frames are written as PNG "
        "here, or beside the MP4 in <name>_frames/, and the exit status is 1)",
    )
    p.add_argument("--fps", type=int, default=30, help="MP4 frame rate (default 30, Mochi's rate)")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality 0..51 (lower is better; default 18)")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log loading details")
    p.set_defaults(func=_run_generate)


def _add_plugin_parsers(subparsers: Any) -> None:
    """HOOK for the memory package: ``mochi_core/memory/planning/cli.py`` may define ``add_plan_parser(subparsers)``,
    which adds the ``plan`` subcommand and sets ``func=callable(args) -> int`` on it with ``set_defaults``."""
    try:
        spec = importlib.util.find_spec("mochi_core.memory.planning.cli")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return
    from .memory.planning import cli as memory_cli

    add = getattr(memory_cli, "add_plan_parser", None)
    if callable(add):
        add(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mochi_core", description="Genmo Mochi 1 text-to-video without a graph."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_generate_parser(sub)
    _add_plugin_parsers(sub)
    return parser


class _Bars:
    """tqdm bars on stderr: one for the sampling steps, one for the decode tiles (created on first use)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def _update(self, name: str, unit: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(name)
        if bar is None:
            from tqdm import tqdm

            bar = self.bars[name] = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, dynamic_ncols=True)
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)
        if done >= total:  # the next video (a --prompts list) starts a new bar
            bar.close()
            del self.bars[name]

    def sampling(self, step: int, total: int, _x0: Any) -> None:
        self._update("sampling", "step", step + 1, total)

    def decode(self, done: int, total: int) -> None:
        self._update("decoding", "tile", done, total)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _folder_problem(folder: Path, option: str) -> str | None:
    """Why ``folder`` cannot receive files (None: it is writable, or can be created in the nearest existing one)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {str(folder)!r}: {str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {str(folder)!r}: the folder {str(existing)!r} is not writable"
    return None


def _outputs_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the output options (None: a finished render has somewhere to go)."""
    if args.out is None and args.frames_dir is None:
        return "give --out video.mp4 and/or --frames-dir DIR"
    if args.out is not None:
        out = Path(args.out)
        if out.suffix.lower() != ".mp4":
            return f"--out {args.out!r}: the output must be an .mp4 file"
        if out.is_dir():
            return f"--out {args.out!r} is a folder; give a file name ending in .mp4"
        if (problem := _folder_problem(out.parent, "--out")) is not None:
            return problem
    return None if args.frames_dir is None else _folder_problem(Path(args.frames_dir), "--frames-dir")


def _check_outputs(args: argparse.Namespace) -> None:
    """Output options, checked before any model loads."""
    problem = _outputs_problem(args)
    if problem is not None:
        raise InvalidInputError(problem)
    from .video import check_mp4_options

    check_mp4_options(args.fps, args.crf, names=("--fps", "--crf"))


def _write_outputs(args: argparse.Namespace, frames: Any) -> dict[str, Any]:
    """Write the MP4 and/or the PNG frames; if the MP4 fails, the frames still end up on disk as PNG files and an
    :class:`OutputWriteError` says where."""
    from .video import write_mp4, write_png_frames

    outputs: dict[str, Any] = {}
    if args.out is not None:
        try:
            outputs["mp4"] = str(write_mp4(args.out, frames, fps=args.fps, crf=args.crf))
        # any writer failure (PyAV missing, codec or container error, disk): the render must not be lost
        except Exception as exc:
            out = Path(args.out)
            png_dir = Path(args.frames_dir) if args.frames_dir is not None else out.with_name(f"{out.stem}_frames")
            pngs = write_png_frames(png_dir, frames)
            raise OutputWriteError(
                f"writing {args.out} failed ({type(exc).__name__}: {exc}); the {len(pngs)} frames were written as "
                f"PNG files to {png_dir} instead"
            ) from exc
    if args.frames_dir is not None:
        pngs = write_png_frames(args.frames_dir, frames)
        outputs["png_dir"] = str(Path(args.frames_dir))
        outputs["png_count"] = len(pngs)
    return outputs


def _numbered(args: argparse.Namespace, index: int) -> argparse.Namespace:
    """The output options of video ``index`` of a ``--prompts`` list: name_000.mp4, DIR/000/."""
    out = copy.copy(args)
    if args.out is not None:
        path = Path(args.out)
        out.out = str(path.with_name(f"{path.stem}_{index:03d}{path.suffix}"))
    if args.frames_dir is not None:
        out.frames_dir = str(Path(args.frames_dir) / f"{index:03d}")
    return out


def _run_generate(args: argparse.Namespace) -> int:
    import torch

    from .devices import check_device
    from .options import LoRAOptions, ParallelOptions, parse_lora_arg
    from .parallel import ParallelLayout
    from .parallel.launch import prepare, run
    from .parallel.prompts import read_prompts
    from .pipeline import generate

    _check_outputs(args)
    if args.device is not None:
        check_device(args.device, what="--device")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    budget = parse_bytes(args.memory_budget, name="--memory-budget") if args.memory_budget else None
    job_budget = parse_bytes(args.budget, name="--budget") if args.budget else None
    loras = LoRAOptions.resolve(loras=[parse_lora_arg(t) for t in args.lora], names={"loras": "--lora"}).loras
    prompts = read_prompts(args.prompts) if args.prompts is not None else [args.prompt]
    options = ParallelOptions.resolve(
        cfg_parallel=args.cfg_parallel,
        sp=args.sp,
        timeout_s=args.dist_timeout,
        names={"cfg_parallel": "--cfg-parallel", "sp": "--sp", "timeout_s": "--dist-timeout"},
    )
    layout = ParallelLayout.from_options(options)
    launch = prepare(layout, listed=args.prompts is not None, device=device, dit=args.dit, timeout_s=options.timeout_s)
    bars = _Bars(not args.no_progress and launch.is_root)
    summaries: list[dict[str, Any]] = []

    def render(index: int, prompt: str, seed_i: int) -> tuple[Any, dict[str, Any]]:
        result = generate(
            prompt,
            negative_prompt=args.negative,
            dit=args.dit,
            vae=args.vae,
            text_encoder=args.t5,
            tokenizer=args.tokenizer,
            width=args.width,
            height=args.height,
            frames=args.frames,
            steps=args.steps,
            cfg=args.cfg,
            seed=seed_i,
            threshold_noise=args.threshold_noise,
            linear_steps=args.linear_steps,
            batch_cfg=not args.no_batch_cfg,
            preset=args.preset,
            teacache_threshold=args.teacache_threshold,
            max_skip_steps=args.max_skip_steps,
            stg_scale=args.stg_scale,
            stg_blocks=args.stg_blocks,
            stg_rescale=args.stg_rescale,
            device=launch.device,
            compute_dtype=args.compute_dtype,
            dit_storage_dtype=args.dit_storage_dtype,
            t5_storage_dtype=args.t5_storage_dtype,
            vae_compute_dtype=args.vae_compute_dtype,
            vae_storage_dtype=args.vae_storage_dtype,
            attention=args.attention,
            memory_budget=budget,
            budget=job_budget,
            loras=list(loras),
            callback=bars.sampling,
            decode_progress=bars.decode,
            parallel=launch.parallel,
        )
        summary = dict(result.summary)
        summary.pop("sigmas", None)
        return result.frames, summary

    def write(index: int, frames: Any, summary: dict[str, Any]) -> None:
        target = _numbered(args, index) if args.prompts is not None else args
        outputs = _write_outputs(target, frames)
        summary["fps"] = args.fps
        summary["outputs"] = outputs
        summaries.append(summary)
        if not args.json:
            where = outputs.get("mp4") or outputs.get("png_dir")
            sys.stderr.write(
                f"wrote {where}: {summary['frames']} frames {args.width}x{args.height}, seed {summary['seed']}, "
                f"{summary['timings']['total_s']:.1f} s\n"
            )

    try:
        run(launch, prompts, seed, render, write)
    finally:
        bars.close()
    if args.json and launch.is_root:
        shown: Any = summaries if args.prompts is not None else summaries[0]
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except MochiInterrupted as exc:
        sys.stderr.write(f"interrupted: {exc}\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except (InvalidInputError, UnsupportedCheckpointError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except DoesNotFitError as exc:
        sys.stderr.write(f"does not fit: {exc}\n")
        return 3
    except ParallelError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 4
    except MochiError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
