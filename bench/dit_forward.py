"""Benchmark: our AsymmDiT forward vs diffusers ``MochiTransformer3DModel`` on identical weights (CPU, fp32).

Mid-size configuration (default depth 4, visual width 768 = 6 heads x 128, text width 384, T5 width 4096,
256 text tokens of which 40 are valid), latent of the real 848x480 aspect ratio (60x106 per frame, 2 latent
frames = 3180 visual tokens). Both models get the same random weights (written once as an official file and
loaded with ``load_dit``; the diffusers copy is mapped with ``to_diffusers_state_dict``). Prints the median
time ratio (ours / diffusers; each implementation timed in its own fresh processes, ``--rounds`` of them in
alternating order, with the default allocator, so neither's allocations change the other's page faults), the
achieved GFLOP/s against one large matmul's, and the peak-memory ratio (peak RSS increase during one forward,
measured in a fresh subprocess per implementation).

``--dtype bf16`` runs both in bfloat16 (weights stored bf16; ours keeps norms/RoPE/modulation in fp32 as its
precision policy says; diffusers keeps its own internal fp32 upcasts).

Usage: python bench/dit_forward.py [--depth 4] [--width 768] [--frames 2] [--batch 1] [--repeats 5] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mochi_core.dit.config import DiTConfig  # noqa: E402
from mochi_core.testing.dit import random_dit_state_dict, to_diffusers_state_dict, write_dit  # noqa: E402


def make_config(args: argparse.Namespace) -> DiTConfig:
    return DiTConfig(
        depth=args.depth,
        num_heads=args.width // 128,
        hidden_size_x=args.width,
        hidden_size_y=args.width // 2,
        t5_feat_dim=args.t5_dim,
    )


def make_inputs(cfg: DiTConfig, args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    b = args.batch
    x = torch.randn(b, 12, args.frames, args.height, args.width_px, generator=g)
    sigma = torch.linspace(0.9, 0.3, b)
    feat = torch.randn(b, args.tokens, cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(b, args.tokens, dtype=torch.bool)
    for i in range(b):
        mask[i, : max(0, args.valid - 17 * i)] = True  # batch > 1: different prompt lengths (CFG-like)
    return x, sigma, feat, mask


def forward_flops(cfg: DiTConfig, batch: int, visual: int, text: int, valid: int) -> float:
    """Multiply-add FLOPs (x2) of one forward in the blocks' matmuls and joint attention (the rest is < 1 %).

    Per block: qkv_x, proj_x and the visual SwiGLU over ``visual`` tokens; qkv_y, proj_y and the text SwiGLU over
    all ``text`` tokens (the last block has no text update); attention over ``visual + valid`` tokens.
    """
    dx, dy, fx, fy = cfg.hidden_size_x, cfg.hidden_size_y, cfg.mlp_hidden_x, cfg.mlp_hidden_y
    per_visual = dx * 3 * dx + dx * dx + dx * 2 * fx + fx * dx
    per_text = dy * 3 * dx + dx * dy + dy * 2 * fy + fy * dy
    s = visual + valid
    attention = 2 * s * s * dx  # q k^T and p v
    total = cfg.depth * (visual * per_visual + attention) + (cfg.depth - 1) * text * per_text
    return 2.0 * batch * total


def matmul_rate(rows: int, width: int, hidden: int, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of one (rows x width) @ (width x hidden) matmul here: the CPU's practical ceiling."""
    a, b = torch.randn(rows, width), torch.randn(width, hidden)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * rows * width * hidden / best / 1e9


def build_diffusers(cfg: DiTConfig, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        num_layers=cfg.depth,
        pooled_projection_dim=cfg.hidden_size_y,
        in_channels=cfg.in_channels,
        text_embed_dim=cfg.t5_feat_dim,
    )
    model.load_state_dict(to_diffusers_state_dict(sd), strict=True)
    return model.eval().requires_grad_(False)


def _loader(which: str, path: str, cfg: DiTConfig, dtype: str = "fp32"):
    """A forward function of one implementation; weights stored and computed in ``dtype`` for both."""
    if which == "ours":
        from mochi_core.dit import load_dit

        model = load_dit(path, compute_dtype=dtype, storage_dtype=None if dtype == "fp32" else dtype)
        return lambda x, s, f, m: model(x, s, f, m)
    from safetensors.torch import load_file

    model = build_diffusers(cfg, load_file(path))
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
        return lambda x, s, f, m: model(
            x.to(torch.bfloat16), f.to(torch.bfloat16), (1 - s) * 1000, m, return_dict=False
        )[0].float()
    return lambda x, s, f, m: model(x, f, (1 - s) * 1000, m, return_dict=False)[0]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_memory(which: str, path: str, args: argparse.Namespace) -> dict[str, float]:
    """Fresh process: load one implementation, run one forward, then sample RSS every 2 ms during a second one.

    Also returns the process's peak RSS (load + forwards), where loading two copies of the weights shows up.
    """
    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    fwd = _loader(which, path, cfg, args.dtype)
    x, s, f, m = make_inputs(cfg, args)
    with torch.inference_mode():
        fwd(x, s, f, m)  # warm-up: pages memory-mapped weights in, so only activations are measured below
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with torch.inference_mode():
        fwd(x, s, f, m)
    done.set()
    th.join()
    import resource

    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"forward_peak_growth": peak[0] - base, "process_peak": process_peak}


def run_timing(which: str, path: str, out_path: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Fresh process, one implementation, the process's allocator as given: warm-up, then ``repeats`` timed
    forwards; the output is saved to ``out_path`` for the comparison of the two implementations."""
    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    fn = _loader(which, path, cfg, args.dtype)
    x, s, f, m = make_inputs(cfg, args)
    times = []
    with torch.inference_mode():
        out = fn(x, s, f, m)  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(x, s, f, m)
            times.append(time.perf_counter() - t0)
    torch.save(out, out_path)
    return {"times": times}


# Each implementation is timed in its own processes with the default allocator (no MALLOC_* settings), so
# neither's allocations change the other's page faults; rounds alternate the order.
IMPLEMENTATIONS = ("diffusers", "ours")


def _child(
    args: argparse.Namespace, mode: str, path: str, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--child", mode, "--weights", path, *(extra or [])]
    if env is None:
        # memory runs: a fixed mmap threshold sends freed activations back to the OS at once, so RSS tracks live
        # memory
        env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env))
    if proc.returncode:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--t5-dim", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--width-px", type=int, default=106, help="latent width (848 px / 8)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--valid", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="storage and compute dtype of both models"
    )
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=2, help="timing processes per variant (alternated)")
    ap.add_argument("--child", choices=["ours", "diffusers", "time-ours", "time-diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child and args.child.startswith("time-"):
        print(json.dumps(run_timing(args.child[5:], args.weights, args.out, args)))
        return
    if args.child:
        print(json.dumps(run_memory(args.child, args.weights, args)))
        return

    cfg = make_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_dit(Path(tmp) / "dit.safetensors", "official", random_dit_state_dict(cfg, seed=0)))
        times: dict[str, list[float]] = {w: [] for w in IMPLEMENTATIONS}
        outs = {w: str(Path(tmp) / f"out-{w}.pt") for w in IMPLEMENTATIONS}
        for r in range(args.rounds):
            for w in IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]:
                times[w] += _child(args, f"time-{w}", path, {}, ["--out", outs[w]])["times"]
        diff = float((torch.load(outs["ours"]) - torch.load(outs["diffusers"])).abs().max())
        mem = {w: _child(args, w, path) for w in ("diffusers", "ours")}
    t_ours = statistics.median(times["ours"])
    t_dif = statistics.median(times["diffusers"])
    tokens = args.frames * (args.height // 2) * (args.width_px // 2)
    print(
        f"config: depth {cfg.depth}, width {cfg.hidden_size_x}/{cfg.hidden_size_y}, heads {cfg.num_heads}, "
        f"T5 {cfg.t5_feat_dim}; latent (B={args.batch}, 12, {args.frames}, {args.height}, {args.width_px}) = "
        f"{tokens} visual tokens; text {args.valid}/{args.tokens} valid; threads {args.threads}; {args.dtype} CPU"
    )
    for w in IMPLEMENTATIONS:
        ts = times[w]
        print(f"{w:9s}: median {statistics.median(ts):.3f} s  (runs {', '.join(f'{t:.3f}' for t in ts)})")
    print(f"max abs difference of the outputs: {diff:.2e}")
    m_ours, m_dif = min(times["ours"]), min(times["diffusers"])
    print(f"time ratio (ours / diffusers): median {t_ours / t_dif:.3f}, best-of {m_ours / m_dif:.3f}   (goal <= 0.7)")
    flops = forward_flops(cfg, args.batch, tokens, args.tokens, args.valid)
    print(
        f"matmul + attention work: {flops / 1e9:.0f} GFLOP per forward; achieved (best run) ours "
        f"{flops / m_ours / 1e9:.0f} GFLOP/s, diffusers {flops / m_dif / 1e9:.0f} GFLOP/s; ratio 0.7 would need "
        f"{flops / (0.7 * m_dif) / 1e9:.0f} GFLOP/s; one {tokens}x{cfg.hidden_size_x} @ "
        f"{cfg.hidden_size_x}x{2 * cfg.mlp_hidden_x} matmul alone runs at "
        f"{matmul_rate(tokens, cfg.hidden_size_x, 2 * cfg.mlp_hidden_x):.0f} GFLOP/s"
    )
    pd, po = mem["diffusers"]["forward_peak_growth"], mem["ours"]["forward_peak_growth"]
    rd, ro = mem["diffusers"]["process_peak"], mem["ours"]["process_peak"]
    print(
        f"peak RSS growth during one forward: diffusers {pd / 2**20:.1f} MiB, ours {po / 2**20:.1f} MiB, "
        f"ratio {po / max(pd, 1):.3f}\nprocess peak RSS (load + 2 forwards): diffusers {rd / 2**20:.0f} MiB, "
        f"ours {ro / 2**20:.0f} MiB, ratio {ro / max(rd, 1):.3f}"
    )


if __name__ == "__main__":
    main()
