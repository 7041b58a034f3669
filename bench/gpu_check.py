"""GPU confirmation: one command for the first CUDA machine that runs this pack.

No GPU was available while the pack was built, so its CUDA figures (memory per phase, block streaming, pinned
memory, kernel limits) are predictions. This script measures them and prints one table:

1. golden cases on the GPU against the CPU: the tiny DiT of ``shared/golden`` (four forward cases) and the tiny VAE
   decoder and encoder, in float32 and bfloat16 compute;
2. block streaming against all resident on the GPU (tiny DiT: same outputs), the pinned host bytes of the streamed
   blocks (against their size) and the allocator overshoot of the prefetch (device memory of the streamed
   buffers against the planned 1 + prefetch blocks);
3. full size with random weights (a 10.1 GB fp8 DiT and a full-size VAE, written once to ``--cache-dir``): at
   848x480 with 31 and 163 frames, the measured peak of sampling and of decoding against the planner's
   prediction for the published files (``mochi_core.plan``: fp8 DiT, bf16 VAE, under ``--budget``, default: the
   free GPU memory; the planner's reserve is not allocated, so it is left out of the comparison), and seconds per
   sampling step (random T5-shaped conditioning: no T5 weights are needed);
4. the largest batch of one ``scaled_dot_product_attention`` call in the VAE encoder at 848x480 (CUDA launches
   fail above 65,535);
5. the checks of ``bench/gpu_cuda_paths.py`` (encoder attention split, bf16 defaults by compute capability, decode
   convolution sizes, block copies and pinned bytes of streaming, host syncs inside blocks), as rows of the table.

Each row says whether the figure is within its bound: the planner's stated accuracy (15 %) for memory, the
float-rounding bounds stated below for outputs, hard limits for kernel batches. Exit status 1 when any row is off,
0 otherwise. Without CUDA it prints one line and exits 0. ``--device cpu`` runs the small checks on the CPU
(a self-test of this script; no memory rows).

Usage: python bench/gpu_check.py [--device cuda:0] [--cache-dir ~/.cache/mochi-bench] [--frames 31 163]
                                 [--budget 24GB] [--steps 2] [--skip-full]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the planner's stated accuracy: predictions within 15 % of measured peaks (README "Memory")
PLANNER_MARGIN = 0.15
#: CUDA's largest grid dimension: a kernel launched over more rows fails ("invalid configuration argument")
CUDA_GRID_LIMIT = 65_535
#: float32 on another device: the same math in another summation order. Tiny DiT outputs up to 1.84 with 22 chained
#: reductions of <= 256 terms: 6 sd of the random-walk rounding model = 7e-5 (tests/numerics.py), rounded up to 1e-4.
FP32_TOL = 1e-4
#: bfloat16 compute against float32: 8 significant bits (u = 2^-8) on activations of order 1 through 22 chained
#: layers whose rounding errors add like a random walk: sqrt(22) * 2^-8 * 1.84 = 0.034; 0.1 allows 3 sd.
BF16_TOL = 0.1
#: streamed blocks run the same kernels on copies of the same weights: equal up to kernel choice for new buffers
STREAM_TOL = 1e-6


@dataclass
class Row:
    """One line of the table: ``ok`` None = informative only (no bound)."""

    check: str
    measured: str
    expected: str
    ok: bool | None
    note: str = ""


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _within(measured: float, predicted: float, margin: float = PLANNER_MARGIN) -> bool:
    return predicted > 0 and abs(measured - predicted) <= margin * predicted


def golden_dir() -> Path | None:
    """``$MOCHI_GOLDEN_DIR``, else ``shared/golden`` beside the checkout or one of its parents (as the tests)."""
    env = os.environ.get("MOCHI_GOLDEN_DIR")
    if env:
        return Path(env) if (Path(env) / "manifest.json").exists() else None
    for parent in ROOT.parents:
        if (parent / "shared" / "golden" / "manifest.json").exists():
            return parent / "shared" / "golden"
    return None


# ---------------------------------------------------------------------------------------------- 1. golden cases


def check_golden(device: torch.device) -> Iterator[Row]:
    from safetensors.torch import load_file

    from mochi_core import load_dit, load_vae

    gd = golden_dir()
    if gd is None:
        yield Row("golden cases", "skipped", "shared/golden", None, "golden folder not found (set MOCHI_GOLDEN_DIR)")
        return
    cases = load_file(str(gd / "dit_tiny_cases.safetensors"))
    cpu = load_dit(gd / "dit_tiny.safetensors", device="cpu", dtype="fp32")
    for dtype, tol in (("fp32", FP32_TOL), ("bf16", BF16_TOL)):
        dev_model = load_dit(gd / "dit_tiny.safetensors", device=device, dtype=dtype)
        worst = 0.0
        for case in ("case_a", "case_b", "case_c", "case_d"):
            args = [cases[f"{case}_{n}"] for n in ("x", "sigma", "t5_feat", "t5_mask")]
            with torch.inference_mode():
                ref = cpu(*args)
                out = dev_model(*[a.to(device) for a in args]).float().cpu()
            worst = max(worst, (out - ref).abs().max().item())
        yield Row(f"golden DiT {dtype} {device.type} vs cpu", f"{worst:.2e}", f"<= {tol:g}", worst <= tol)
    dec_cases = load_file(str(gd / "vae_decoder_tiny_cases.safetensors"))
    enc_cases = load_file(str(gd / "vae_encoder_tiny_cases.safetensors"))
    dec_cpu = load_vae(gd / "vae_decoder_tiny.safetensors", device="cpu", compute_dtype="fp32")
    enc_cpu = load_vae(gd / "vae_encoder_tiny.safetensors", device="cpu", compute_dtype="fp32")
    for dtype, tol in (("fp32", FP32_TOL), ("bf16", BF16_TOL)):
        dec = load_vae(gd / "vae_decoder_tiny.safetensors", device=device, compute_dtype=dtype)
        enc = load_vae(gd / "vae_encoder_tiny.safetensors", device=device, compute_dtype=dtype)
        z = dec_cases["case_a_z"]
        video = enc_cases["case_a_video"]
        d = (dec.decode(z.to(device)).float().cpu() - dec_cpu.decode(z)).abs().max().item()
        e = (enc.encode(video.to(device)).float().cpu() - enc_cpu.encode(video)).abs().max().item()
        yield Row(f"golden VAE decode {dtype} vs cpu", f"{d:.2e}", f"<= {tol:g}", d <= tol)
        yield Row(f"golden VAE encode {dtype} vs cpu", f"{e:.2e}", f"<= {tol:g}", e <= tol)


# ---------------------------------------------------------------------------------------------- 2. streaming


def _host_pinned_bytes() -> int | None:
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None:
        return None
    try:
        return int(stats().get("allocated_bytes.all.current", stats().get("allocated_bytes.current", 0)))
    except (RuntimeError, AttributeError):
        return None


def check_streaming(device: torch.device) -> Iterator[Row]:
    from mochi_core import DiTConfig, load_dit
    from mochi_core.memory import block_nbytes, enable_block_streaming
    from mochi_core.testing.dit import random_dit_state_dict, write_dit

    # blocks large enough that the allocator's behaviour shows (about 50 MB each in fp32), activations small
    cfg = DiTConfig(depth=6, num_heads=8, hidden_size_x=1024, hidden_size_y=512, t5_feat_dim=64)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dit(Path(tmp) / "stream.safetensors", "official", random_dit_state_dict(cfg))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 12, 2, 8, 8, generator=g)
        feat = torch.randn(1, cfg.t5_token_length, cfg.t5_feat_dim, generator=g)
        mask = torch.zeros(1, cfg.t5_token_length, dtype=torch.bool)
        mask[0, :8] = True
        sigma = torch.full((1,), 0.5)
        inputs = [t.to(device) for t in (x, sigma, feat, mask)]
        resident = load_dit(path, device=device, dtype="fp32")
        with torch.inference_mode():
            ref = resident(*inputs).cpu()
        del resident
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
        model = load_dit(path, device="cpu", dtype="fp32")
        pinned_before = _host_pinned_bytes() if cuda else None
        handle = enable_block_streaming(model, 1, device=device, offload_device="cpu", prefetch=True)
        streamed = sum(block_nbytes(b) for b in model.blocks[1:])
        biggest = max(block_nbytes(b) for b in model.blocks[1:])
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            out = model(*inputs).cpu()
            out2 = model(*inputs).cpu()
        diff = max((out - ref).abs().max().item(), (out2 - ref).abs().max().item())
        yield Row("streaming (1 of 6 resident) vs resident", f"{diff:.2e}", f"<= {STREAM_TOL:g}", diff <= STREAM_TOL)
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            # activations of this forward are tiny (128 visual tokens); the streamed buffers dominate the peak
            planned = 2 * biggest
            yield Row(
                "prefetch: streamed buffers on the GPU",
                _gb(peak),
                f"~{_gb(planned)} (2 blocks) +{PLANNER_MARGIN:.0%}",
                peak <= planned * (1 + PLANNER_MARGIN),
                f"overshoot {peak / planned - 1:+.0%}",
            )
            pinned = _host_pinned_bytes()
            if pinned is None or pinned_before is None:
                yield Row(
                    "pinned host bytes of streaming", "n/a", _gb(streamed), None, "torch has no host_memory_stats"
                )
            else:
                got = pinned - pinned_before
                yield Row(
                    "pinned host bytes of streaming", _gb(got), f"{_gb(streamed)} +{PLANNER_MARGIN:.0%}", None
                    if got == 0
                    else got <= streamed * (1 + PLANNER_MARGIN), f"{got / max(streamed, 1):.2f}x the streamed blocks"
                )  # fmt: skip
        handle.remove()
        if cuda:
            after = _host_pinned_bytes()
            if after is not None and pinned_before is not None:
                left = after - pinned_before
                yield Row("pinned bytes after remove()", _gb(left), "0 GB", left <= 0.01 * streamed)


# ---------------------------------------------------------------------------------------------- 3. full size


def _full_files(cache: Path) -> tuple[Path, Path]:
    """The cached full-size random DiT (fp8, Comfy layout) and VAE (Comfy layout, bf16), written once."""
    from mochi_core.testing.vae import random_decoder_state_dict, random_encoder_state_dict, write_comfy_vae
    from mochi_core.vae import DecoderConfig, EncoderConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from full_size_cpu import FILE_NAME, write_full_fp8

    cache.mkdir(parents=True, exist_ok=True)
    dit = cache / FILE_NAME
    if not dit.exists():
        print(f"writing the full-size random fp8 DiT to {dit} (once, 10.1 GB) ...", flush=True)
        write_full_fp8(dit)
    vae = cache / "mochi_vae_random_full.safetensors"
    if not vae.exists():
        write_comfy_vae(
            vae, random_decoder_state_dict(DecoderConfig()), random_encoder_state_dict(EncoderConfig(), seed=2)
        )
    return dit, vae


@contextmanager
def _peak(device: torch.device) -> Iterator[dict[str, int]]:
    out: dict[str, int] = {}
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        torch.cuda.synchronize(device)
        out["allocated"] = torch.cuda.max_memory_allocated(device)
        out["reserved"] = torch.cuda.max_memory_reserved(device)


def check_full_size(device: torch.device, cache: Path, frames_list: list[int], budget: int | None, steps: int):
    from mochi_core import denormalize_latent, load_dit, load_vae, make_noise, plan, sample
    from mochi_core.memory import enable_block_streaming

    dit_path, vae_path = _full_files(cache)
    free, _total = torch.cuda.mem_get_info(device)
    for frames in frames_list:
        job = f"848x480x{frames}"
        b = budget or int(free * 0.95)
        p = plan(848, 480, frames, budget_bytes=b, device=str(device), dit_storage="fp8_e4m3fn", vae_dtype="bf16")
        if not p.fits:
            yield Row(f"{job} plan", "does not fit", _gb(b), None, f"smallest budget {_gb(p.min_budget_bytes)}")
            continue
        yield Row(f"{job} plan", f"{p.resident_blocks}/{p.depth} resident", _gb(b), None, f"batch_cfg={p.batch_cfg}")
        cfg_tokens = 256
        g = torch.Generator().manual_seed(0)
        pos = (torch.randn(1, cfg_tokens, 4096, generator=g), torch.arange(cfg_tokens)[None] < 12)
        neg = (torch.randn(1, cfg_tokens, 4096, generator=g), torch.arange(cfg_tokens)[None] < 1)
        with _peak(device) as sampling:
            streamed = p.resident_blocks < p.depth
            model = load_dit(dit_path, device="cpu" if streamed else device, dtype=p.compute_dtype)
            handle = enable_block_streaming(model, p.resident_blocks, device=device) if streamed else None
            stamps: list[float] = []
            noise = make_noise(0, frames=frames, height=480, width=848).to(device)
            with torch.inference_mode():
                z = sample(
                    model,
                    noise,
                    tuple(t.to(device) for t in pos),
                    tuple(t.to(device) for t in neg),
                    steps=steps,
                    cfg=4.5,
                    batch_cfg=p.batch_cfg,
                    callback=lambda i, n, x0, stamps=stamps: (
                        torch.cuda.synchronize(device),
                        stamps.append(time.perf_counter()),
                    ),
                )
            if handle is not None:
                handle.remove()
            del model, handle
        phase = p.phase("sampling")
        predicted = phase.peak_bytes - phase.reserve_bytes
        yield Row(
            f"{job} sampling peak",
            f"{_gb(sampling['allocated'])} (reserved {_gb(sampling['reserved'])})",
            f"{_gb(predicted)} ±{PLANNER_MARGIN:.0%}",
            _within(sampling["allocated"], predicted),
        )
        per_step = [b2 - a for a, b2 in zip(stamps, stamps[1:])]
        if per_step:
            yield Row(f"{job} seconds per step", f"{sum(per_step) / len(per_step):.1f} s", "-", None)
        with _peak(device) as decoding:
            vae = load_vae(vae_path, device=device)
            with torch.inference_mode():
                frames_out = vae.decode(denormalize_latent(z.float()), memory_budget=p.memory_budget, tile=p.tile)
            del vae, frames_out
        phase = p.phase("decoding")
        predicted = phase.peak_bytes - phase.reserve_bytes
        yield Row(
            f"{job} decoding peak",
            f"{_gb(decoding['allocated'])} (reserved {_gb(decoding['reserved'])})",
            f"{_gb(predicted)} ±{PLANNER_MARGIN:.0%}",
            _within(decoding["allocated"], predicted),
        )


# ---------------------------------------------------------------------------------------------- 4. SDPA batch


@contextmanager
def _count_sdpa_batches() -> Iterator[list[int]]:
    """Record the launch batch (all dims but the last two) of every ``F.scaled_dot_product_attention`` call."""
    seen: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(math.prod(q.shape[:-2]))
        return real(q, *args, **kwargs)

    F.scaled_dot_product_attention = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        F.scaled_dot_product_attention = real  # type: ignore[assignment]


def check_encoder_batch(device: torch.device, width: int, height: int, frames: int) -> Iterator[Row]:
    from mochi_core.testing.vae import random_encoder_state_dict, write_official_encoder
    from mochi_core.vae import EncoderConfig, load_vae

    with tempfile.TemporaryDirectory() as tmp:
        path = write_official_encoder(Path(tmp) / "encoder.safetensors", random_encoder_state_dict(EncoderConfig()))
        vae = load_vae(path, device=device)
        video = torch.rand(1, 3, frames, height, width, device=device) * 2 - 1
        with _count_sdpa_batches() as seen, torch.inference_mode():
            vae.encode(video)
    biggest = max(seen, default=0)
    yield Row(
        f"VAE encoder SDPA batch {width}x{height}x{frames}",
        f"{biggest:,} ({len(seen)} calls)",
        f"<= {CUDA_GRID_LIMIT:,}",
        0 < biggest <= CUDA_GRID_LIMIT,
    )


# ---------------------------------------------------------------------------------------------- 5. CUDA paths


def check_cuda_paths(device: torch.device) -> Iterator[Row]:
    """Run ``bench/gpu_cuda_paths.py``'s checks in this process and turn its rows into ours."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_cuda_paths as paths

    from mochi_core.precision import default_compute_dtype

    paths.ROWS.clear()
    dtype = default_compute_dtype(device, warn=False)
    steps = [
        ("check_dtypes", (device,)),
        ("check_encoder_attention", (device, dtype, False)),
        ("check_decode", (device, dtype, False)),
        ("check_streaming", (device, 6, False)),
    ]
    for name, args in steps:
        fn = getattr(paths, name, None)
        if fn is None:
            yield Row(f"gpu_cuda_paths.{name}", "missing", "-", None, "renamed or removed: run the script itself")
            continue
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failed check is a row; the others still run
            paths.row(f"gpu_cuda_paths.{name}", f"error: {type(exc).__name__}: {str(exc)[:120]}", "-", False)
        for check, measured, expected, verdict in paths.ROWS:
            yield Row(check, measured, expected, None if verdict == "info" else verdict == "ok")
        paths.ROWS.clear()


# ---------------------------------------------------------------------------------------------- main


def _run(name: str, rows: list[Row], make: Callable[[], Iterator[Row]]) -> None:
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        for row in make():
            rows.append(row)
            print(f"  {row.check}: {row.measured}", flush=True)
    except Exception as exc:  # noqa: BLE001 - one failed check is a row of the table, the others still run
        rows.append(Row(name, "error", "-", False, f"{type(exc).__name__}: {str(exc)[:200]}"))
        print(f"  error: {type(exc).__name__}: {exc}", flush=True)


def print_table(rows: list[Row]) -> None:
    width = max([len(r.check) for r in rows] + [5])
    mw = max([len(r.measured) for r in rows] + [8])
    ew = max([len(r.expected) for r in rows] + [8])
    print(f"\n{'check':{width}s}  {'measured':{mw}s}  {'expected':{ew}s}  ok    note")
    for r in rows:
        ok = "-" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"{r.check:{width}s}  {r.measured:{mw}s}  {r.expected:{ew}s}  {ok:4s}  {r.note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (self-test of the small checks)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mochi-bench"))
    ap.add_argument("--frames", type=int, nargs="*", default=[31, 163])
    ap.add_argument("--budget", default=None, help="memory budget for the full-size plans (default: free memory)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="skip the full-size runs (minutes, 11+ GB of disk)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check")
        return 0
    if device.type not in ("cuda", "cpu"):
        ap.error(f"--device {args.device}: cuda, cuda:N or cpu")
    rows: list[Row] = []
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        print(f"[gpu_check] {name} (capability {cap}), torch {torch.__version__}, CUDA {torch.version.cuda}")
    _run("golden cases", rows, lambda: check_golden(device))
    _run("block streaming", rows, lambda: check_streaming(device))
    small = device.type == "cpu"
    w, h, f = (128, 64, 7) if small else (848, 480, 31)
    _run("VAE encoder attention", rows, lambda: check_encoder_batch(device, w, h, f))
    if device.type == "cuda":
        _run("CUDA paths (bench/gpu_cuda_paths.py)", rows, lambda: check_cuda_paths(device))
    if device.type == "cuda" and not args.skip_full:
        from mochi_core.memory import parse_bytes

        budget = parse_bytes(args.budget) if args.budget else None
        _run(
            "full size",
            rows,
            lambda: check_full_size(device, Path(args.cache_dir), args.frames, budget, max(2, args.steps)),
        )
    print_table(rows)
    off = [r for r in rows if r.ok is False]
    print(f"\n{len(off)} of {len(rows)} figures off their bound" if off else f"\nall {len(rows)} figures within bounds")
    return 1 if off else 0


if __name__ == "__main__":
    raise SystemExit(main())
