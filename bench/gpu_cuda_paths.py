"""GPU check of the CUDA-only paths: what the CPU tests can only prove by shapes, counts and stand-ins.

Run on a CUDA machine: ``python bench/gpu_cuda_paths.py`` (a few minutes; about 17 GB of GPU memory with the
defaults). It prints one table (check, measured, expected, verdict) and exits 1 when a check fails:

- **encoder attention**: the first encoder attention at 848x480 (101,760 locations, over CUDA's 65,535 grid
  limit for one call) runs in bounded calls, with the same values as a float32 CPU computation of a few locations;
  whether one unsplit call works on this torch build is printed for information;
- **bf16 default**: the device's compute capability, and that the planner, ``load_dit`` / ``load_vae`` defaults
  and the VAE node's ``auto`` agree (fp32 below capability 8.0);
- **decode chunk**: a full-size decoder (random weights) decodes 848x480 in the largest chunk a plan may take;
  every convolution input stays under 2**31 elements and the measured peak is within the planner's margin (15 %)
  of the predicted working set;
- **block streaming**: a DiT with full-size blocks (random bf16 weights, ``--depth`` blocks, all streamed):
  output equal to all resident, block copies on the GPU measured from the allocator (at most two: the current
  block and the prefetch), time per forward against all resident;
- **pinned memory**: the page-locked bytes equal the streamed blocks' size, the host tensors report pinned, and
  ``remove()`` unpins them (nothing is taken from torch's pinned-memory cache);
- **host syncs per block**: CUDA's sync debug mode counts synchronising calls inside the blocks of a CFG-batched
  forward with different text lengths (must be 0), for ``sdpa`` and, when installed, ``flash``.

Without CUDA it says so in one line and exits 0; ``--cpu-smoke`` runs the same code at tiny sizes on the CPU
(CUDA-only figures are skipped) to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mochi_core import ops, plan  # noqa: E402
from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.dit.model import AsymmDiT  # noqa: E402
from mochi_core.memory import enable_block_streaming  # noqa: E402
from mochi_core.memory.streaming import block_nbytes  # noqa: E402
from mochi_core.precision import check_compute_dtype, default_compute_dtype, dtype_name, supports_bf16  # noqa: E402
from mochi_core.vae import layers as vae_layers  # noqa: E402
from mochi_core.vae.config import DecoderConfig  # noqa: E402
from mochi_core.vae.decoder import Decoder  # noqa: E402
from mochi_core.vae.layers import AttentionBlock  # noqa: E402
from mochi_core.vae.tiling import (  # noqa: E402
    CONV_INPUT_LIMIT,
    choose_tiles,
    decode_working_set_bytes,
    tiled_decode,
)

PLANNER_MARGIN = 0.15
ROWS: list[tuple[str, str, str, str]] = []


def row(check: str, measured: object, expected: str, ok: bool | None) -> None:
    verdict = "info" if ok is None else ("ok" if ok else "FAIL")
    ROWS.append((check, str(measured), expected, verdict))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Fan-in scaled normal weights (activations stay O(1)); 1-D scales (norm weights) 1, biases 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "pos_frequencies" in name:
                p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.1)
            elif p.dim() <= 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_((torch.randn(p.shape, generator=gen) * (0.5 / math.sqrt(fan_in))).to(p.dtype))
        for _, b in module.named_buffers():
            if b.is_floating_point():
                b.copy_((torch.randn(b.shape, generator=gen) * 0.1).to(b.dtype))


# ------------------------------------------------------------------------------------------------ 1


def check_encoder_attention(dev: torch.device, dtype: torch.dtype, small: bool) -> None:
    c, t, h, w = (128, 7, 240, 424) if not small else (32, 5, 30, 40)
    gen = torch.Generator().manual_seed(1)
    block = AttentionBlock(c)
    randomize(block, gen)
    attn = block.attn.to(dev)
    x = (torch.randn(1, c, t, h, w, generator=gen)).to(dev, dtype)
    seen: list[int] = []
    real = F.scaled_dot_product_attention

    def recording(q, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(int(q.shape[0]))
        return real(q, *a, **k)

    F.scaled_dot_product_attention = recording
    try:
        with torch.no_grad():
            out = attn(x)
        sync(dev)
    finally:
        F.scaled_dot_product_attention = real
    row("encoder attention: largest SDPA batch", max(seen), "<= 65535", max(seen) <= 65_535)
    # every location attends on its own: a few locations on the CPU in float32 are the reference
    with torch.no_grad():
        ref = block.attn.float()(x[:, :, :, :2, :3].float().cpu())
    block.attn.to(dev)
    err = (out[:, :, :, :2, :3].float().cpu() - ref).abs().max().item()
    tol = 4e-2 if dtype != torch.float32 else 1e-4  # bf16 inputs and outputs: a few bf16 ulps of O(1) values
    row(f"encoder attention: max error vs fp32 CPU ({dtype_name(dtype)})", f"{err:.2e}", f"<= {tol:g}", err <= tol)
    if dev.type == "cuda":
        old = vae_layers.ATTENTION_MAX_ROWS
        vae_layers.ATTENTION_MAX_ROWS = 1 << 40
        try:
            with torch.no_grad():
                attn(x)
            sync(dev)
            one = "works on this build"
        except RuntimeError as exc:  # the failure the split avoids
            one = f"fails: {str(exc).splitlines()[0][:60]}"
        finally:
            vae_layers.ATTENTION_MAX_ROWS = old
        row("encoder attention: one unsplit call", one, "(information)", None)


# ------------------------------------------------------------------------------------------------ 2


def check_dtypes(dev: torch.device) -> None:
    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
    want = torch.bfloat16 if dev.type == "cuda" and cap >= (8, 0) else torch.float32
    got = default_compute_dtype(dev, warn=False)
    row("compute capability / native bf16", f"{cap} / {supports_bf16(dev)}", "bf16 from 8.0 on", None)
    picks = {
        "default": dtype_name(got),
        "load_dit": dtype_name(check_compute_dtype("dtype", None, device=dev)),
        "load_vae": dtype_name(check_compute_dtype("compute_dtype", None, device=dev)),
    }
    job = plan(848, 480, 31, budget_bytes="200GB", device=dev.type)
    picks["plan"] = job.compute_dtype
    picks["plan vae"] = job.vae_dtype
    agree = set(picks.values()) == {dtype_name(want)}
    row("default dtypes (policy, loaders, planner)", picks, dtype_name(want), agree)


# ------------------------------------------------------------------------------------------------ 3


def check_decode(dev: torch.device, dtype: torch.dtype, small: bool) -> None:
    cfg = DecoderConfig() if not small else DecoderConfig(channels=(32, 32, 64, 64))
    lat = (1, 12, 7, 60, 106) if not small else (1, 12, 3, 6, 8)
    tile = choose_tiles(lat, 10**15, cfg, dtype)  # the largest chunk any budget gets
    predicted = decode_working_set_bytes(lat, tile, cfg, dtype)
    if dev.type == "cuda" and predicted > 0.8 * torch.cuda.mem_get_info(dev)[0]:
        row("decode chunk", f"needs {predicted / 1e9:.1f} GB", "skipped: not enough free memory", None)
        return
    gen = torch.Generator().manual_seed(2)
    decoder = Decoder(cfg)
    randomize(decoder, gen)
    decoder.to(dev)
    z = torch.randn(lat, generator=gen).to(dev, dtype)
    seen: list[int] = []
    real = ops.Conv3d.forward

    def recording(self, x):  # type: ignore[no-untyped-def]
        seen.append(x.numel())
        return real(self, x)

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    ops.Conv3d.forward = recording  # every 3D convolution of the decoder (the causal ones call it directly)
    try:
        with torch.no_grad():
            out = tiled_decode(decoder, z, tile)
        sync(dev)
    finally:
        ops.Conv3d.forward = real
    row(
        f"decode chunk {tile.frames} latent frames: largest conv input",
        f"{max(seen):.3e}",
        "< 2**31",
        max(seen) < CONV_INPUT_LIMIT,
    )
    row("decode chunk: output finite", bool(torch.isfinite(out).all()), "True", bool(torch.isfinite(out).all()))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
        ok = peak <= predicted * (1 + PLANNER_MARGIN)
        row("decode chunk: peak / predicted", f"{peak / 1e9:.2f} / {predicted / 1e9:.2f} GB", "<= 1.15", ok)


# ------------------------------------------------------------------------------------------------ 4, 5, 9


@contextlib.contextmanager
def syncs_inside_blocks(model: AsymmDiT, counter: list[int]) -> Iterator[None]:
    """Count CUDA sync-debug warnings raised while a block runs (its pre-hooks included)."""
    inside = [False]

    def on(m, a):  # type: ignore[no-untyped-def]
        inside[0] = True

    def off(m, a, o):  # type: ignore[no-untyped-def]
        inside[0] = False

    hooks = [b.register_forward_pre_hook(on, prepend=True) for b in model.blocks]
    hooks += [b.register_forward_hook(off, always_call=True) for b in model.blocks]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        real_show = warnings.showwarning

        def show(message, category, *a, **k):  # type: ignore[no-untyped-def]
            if inside[0] and "synchroniz" in str(message).lower():
                counter[0] += 1
            else:
                real_show(message, category, *a, **k)

        warnings.showwarning = show
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
            for h in hooks:
                h.remove()


def check_streaming(dev: torch.device, depth: int, small: bool) -> None:
    cfg = DiTConfig().with_(depth=depth) if not small else DiTConfig.tiny().with_(depth=depth)
    compute = default_compute_dtype(dev, warn=False)
    gen = torch.Generator().manual_seed(3)
    with torch.device("meta"):
        model = AsymmDiT(cfg, compute_dtype=compute)
    model.to_empty(device="cpu")
    model.to(torch.bfloat16 if dev.type == "cuda" else torch.float32)
    randomize(model, gen)
    model.eval()
    lat_t, lat_h, lat_w = (3, 60, 106) if not small else (2, 4, 6)
    x = torch.randn(2, 12, lat_t, lat_h, lat_w, generator=gen).to(dev)
    sigma = torch.full((2,), 0.6, device=dev)
    feat = torch.randn(2, cfg.t5_token_length, cfg.t5_feat_dim, generator=gen).to(dev)
    mask = (torch.arange(cfg.t5_token_length)[None] < torch.tensor([[min(40, cfg.t5_token_length)], [0]])).to(dev)
    per_block = block_nbytes(model.blocks[0])

    def timed_forward() -> tuple[torch.Tensor, float]:
        sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(x, sigma, feat, mask)
        sync(dev)
        return out, time.perf_counter() - t0

    def measured(fn):  # type: ignore[no-untyped-def]
        """fn() with the growth of allocated and reserved memory over what was there before (bytes)."""
        if dev.type != "cuda":
            return fn(), 0, 0
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base_a, base_r = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
        result = fn()
        return result, torch.cuda.max_memory_allocated(dev) - base_a, torch.cuda.max_memory_reserved(dev) - base_r

    # all resident
    model.to(dev)
    timed_forward()  # warm-up (kernels, cuBLAS workspaces)
    (ref, t_res), act, act_reserved = measured(timed_forward)
    n_sync = [0]
    with syncs_inside_blocks(model, n_sync):
        timed_forward()
    row("host syncs inside blocks (sdpa, CFG batch)", n_sync[0], "0", n_sync[0] == 0 if dev.type == "cuda" else None)
    model.to("cpu")
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # every block streamed, prefetch on
    handle = enable_block_streaming(model, 0, device=dev, prefetch=True)
    streamed_bytes = sum(block_nbytes(b) for b in model.blocks)
    if dev.type == "cuda":
        pinned_ok = all(p.is_pinned() for b in model.blocks for p in b.parameters())
        row(
            "pinned bytes / streamed block bytes",
            f"{handle.stats.pinned_bytes} / {streamed_bytes}",
            "equal",
            handle.stats.pinned_bytes == streamed_bytes and pinned_ok,
        )
        host_stats = getattr(torch.cuda, "host_memory_stats", None)
        cached = host_stats().get("allocated_bytes.current", 0) if host_stats is not None else "n/a"
        row("torch pinned-cache bytes while streaming", cached, "(information: 0 expected)", None)
        timed_forward()
    (out, t_str), peak, peak_reserved = measured(timed_forward)
    exact = torch.equal(out, ref)
    row("streamed output == all resident", exact, "True (same kernels, exact copies)", exact)
    if dev.type == "cuda":
        # beyond the activations of the resident run: the streamed block copies the allocator holds
        in_flight = (peak - act) / per_block
        row("block copies allocated at the peak", f"{in_flight:.2f}", "<= 2.1", in_flight <= 2.1)
        # a copy freed but not yet reusable (the prefetch overshoot) shows in reserved memory only
        held = (peak_reserved - act_reserved) / per_block
        row("block copies reserved at the peak", f"{held:.2f}", "<= 2.5 (3 = overshoot)", held <= 2.5)
        n_sync = [0]
        with syncs_inside_blocks(model, n_sync):
            timed_forward()
        row("host syncs inside blocks (streamed)", n_sync[0], "0", n_sync[0] == 0)
        row("streaming stats: max reserved", f"{handle.stats.max_reserved_bytes / 1e9:.2f} GB", "(information)", None)
        row("time per forward streamed / resident", f"{t_str / t_res:.2f}", "(information)", None)
    handle.remove()
    if dev.type == "cuda":
        unpinned = not any(p.is_pinned() for b in model.blocks for p in b.parameters())
        row(
            "after remove(): pinned bytes / tensors pinned",
            f"{handle.stats.pinned_bytes} / {not unpinned}",
            "0 / False",
            handle.stats.pinned_bytes == 0 and unpinned,
        )

    if dev.type == "cuda" and compute != torch.float32:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            row("host syncs inside blocks (flash)", "flash-attn not installed", "(skipped)", None)
            return
        model.to(dev)
        model.attention = "flash"
        n_sync = [0]
        with syncs_inside_blocks(model, n_sync):
            out, _ = timed_forward()
        row("host syncs inside blocks (flash)", n_sync[0], "0", n_sync[0] == 0)
        model.attention = "sdpa"
        model.to("cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=6, help="DiT blocks in the streaming check (full-size blocks)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    args = ap.parse_args()
    if args.cpu_smoke:
        dev, small = torch.device("cpu"), True
    elif not torch.cuda.is_available():
        print("gpu_cuda_paths: no CUDA device here; nothing to check (use --cpu-smoke to test the script)")
        return 0
    else:
        dev, small = torch.device("cuda"), False
    dtype = default_compute_dtype(dev, warn=False)
    check_dtypes(dev)
    check_encoder_attention(dev, dtype, small)
    check_decode(dev, dtype, small)
    check_streaming(dev, args.depth, small)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke run)"
    print(f"CUDA path checks on {name}, torch {torch.__version__}")
    widths = [max(len(r[i]) for r in ROWS + [("check", "measured", "expected", "verdict")]) for i in range(4)]
    for r in [("check", "measured", "expected", "verdict")] + ROWS:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    failed = [r for r in ROWS if r[3] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
