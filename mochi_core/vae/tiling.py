"""Tiled decoding: exact temporal chunks with carried causal context, spatial tiles with shared GroupNorm
statistics and feathered blending, and a memory-budget planner.

Why the pieces (docs/numerics.md §5): the decoder is causal and normalises each frame on its own, so temporal chunks
that carry each causal conv's last k_t - 1 input frames decode exactly (no lost, repeated or flickering frames).
Spatially, a tile differs from the whole decode in two ways: its GroupNorm statistics cover only the tile, and its
borders are replicate-padded. Tiles overlap and are cross-faded over the middle of each overlap, so a pixel is
taken from the tile where it is farthest from a border. Optionally (``norm="global"``) a first pass collects every
GroupNorm's per-frame sums over the part of the frame each tile owns (tiles partition the frame at the middle of
each overlap) and the second pass normalises every tile with those frame statistics. Measured: the border effect
dominates; the shared statistics help on the tiny golden decoder (+1.3 dB) and not on the mid-size benchmark
decoder (-2.8 dB) at twice the cost, because the first pass collects statistics of tile-normalised
activations. Default: ``norm="tile"``.

Working-set formula (bytes; :func:`decode_working_set_bytes`), for a plan with n latent frames per chunk and
tile h x w latents, e = element size of the compute dtype:

    output accumulator   B * C_out * F_out * (8H) * (8W) * 4   (+ (8H)(8W) * 4 blend weights when tiled)
    conv caches          sum over 3x3x3 convs of 2 frames * C * (h S) * (w S) * e      (S = spatial scale there;
                         only with several temporal chunks: a single chunk carries nothing)
    stage peak           max over stages of  (K_RES + P_k) * M_k  (res blocks)  and  M_in + K_PROJ * M_out (up blocks)
                         with M = B * C * T * (h S) * (w S) * e the feature map of that stage for one chunk and
                         P_k = (T + 2) / T * (hS + 2)(wS + 2) / (hS wS) the padded conv input (a res block holds
                         its input, the padded buffer the GroupNorm writes into, and the conv output)
    + one tile chunk of decoder output (e, plus its float32 copy for 16-bit compute) when tiles are blended (whole
      frames are written straight into the accumulator) and the largest conv weight cast to the compute dtype;

everything but the (exact) accumulator times SAFETY. The decoded video is thus held once, in the accumulator, and
only while the decode runs: callers move it off the device before converting it (``mochi_core.pipeline``). The
constants were fitted to peaks measured with :class:`mochi_core.memory.PeakMemoryTracker`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import DoesNotFitError, InvalidInputError, MochiInterrupted
from ..scalars import as_int_in
from ..units import format_bytes
from .config import DecoderConfig
from .decoder import Decoder
from .layers import NormContext, frame_chunk

__all__ = [
    "TilePlan",
    "decode_working_set_bytes",
    "max_conv_input_elements",
    "CONV_INPUT_LIMIT",
    "min_decode_bytes",
    "smallest_tile",
    "count_tiles",
    "choose_tiles",
    "tiled_decode",
    "axis_tiles",
    "TileShare",
]

log = logging.getLogger(__name__)

K_RES = 2.0
K_PROJ = 2.0
SAFETY = 1.1
MIN_TILE = 8  # latents (64 px): smallest spatial tile the planner proposes
NORM_MODES = ("global", "tile")
#: every convolution input of a plan from :func:`choose_tiles` has fewer elements than this. Convolution kernels
#: index with 32-bit integers unless the build's cuDNN takes 64-bit indexing; a larger input makes such builds
#: fall back to an im2col path that needs many times the memory (at 848x480, 7 latent frames per chunk put
#: 2.3e9 elements into the last stage's 3x3x3 convs).
CONV_INPUT_LIMIT = 2**31


@dataclass(frozen=True)
class TilePlan:
    """How to decode: ``frames`` latent frames per temporal chunk; spatial tiles of ``height`` x ``width`` latents
    (including the ``overlap`` shared with each neighbour); ``norm``: "global" (frame statistics shared by all
    tiles, two passes) or "tile" (each tile normalises itself, one pass). Sizes larger than the latent mean whole."""

    frames: int
    height: int
    width: int
    overlap: int = 2
    norm: str = "tile"

    def __post_init__(self) -> None:
        lows = {"frames": 1, "height": 1, "width": 1, "overlap": 0}
        for name, low in lows.items():
            what = "a positive int (latent units)" if low else "an int >= 0 (latents)"
            object.__setattr__(self, name, as_int_in(f"tile {name}", getattr(self, name), low=low, what=what))
        if self.norm not in NORM_MODES:
            raise InvalidInputError(f"tile norm must be one of {NORM_MODES}; got {self.norm!r}")

    def clamp(self, t: int, h: int, w: int) -> TilePlan:
        """The plan with sizes clipped to a (T, H, W) latent; overlap kept below the tile size."""
        th, tw = min(self.height, h), min(self.width, w)
        split = [s for s, full in ((th, h), (tw, w)) if s < full]
        ov = min([self.overlap] + [s // 2 for s in split]) if split else 0
        return TilePlan(min(self.frames, t), th, tw, ov, self.norm)

    @classmethod
    def parse(cls, tile: object) -> TilePlan:
        """Accept a TilePlan, an int (frames per chunk, whole frames) or a tuple (frames, height, width[, overlap])."""
        if isinstance(tile, TilePlan):
            return tile
        big = 1 << 30
        if isinstance(tile, int) and not isinstance(tile, bool):
            return cls(tile, big, big, 0)
        if isinstance(tile, (tuple, list)) and len(tile) in (3, 4) and all(isinstance(v, int) for v in tile):
            return cls(*tile)  # type: ignore[arg-type]
        raise InvalidInputError(
            "tile must be a TilePlan, an int (latent frames per chunk) or (frames, height, width[, overlap]); "
            f"got {tile!r}"
        )


# ----------------------------------------------------------------------------------------------------------------
# geometry


def axis_tiles(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Tiles [start, end) of ``size`` covering [0, length) with at least ``overlap`` shared between neighbours,
    spread evenly."""
    if size >= length:
        return [(0, length)]
    step = max(1, size - overlap)
    n = math.ceil((length - size) / step) + 1
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return [(s, s + size) for s in starts]


def count_tiles(latent_shape: tuple[int, ...], plan: TilePlan) -> int:
    """Decoder calls of one pass of ``plan`` over a (B, C, T, H, W) latent: temporal chunks x tile rows x columns."""
    _, _, t, h, w = (int(v) for v in latent_shape)
    p = plan.clamp(t, h, w)
    return math.ceil(t / p.frames) * len(axis_tiles(h, p.height, p.overlap)) * len(axis_tiles(w, p.width, p.overlap))


def _axis_weights(tiles: list[tuple[int, int]], scale: int) -> list[tuple[torch.Tensor, int, int]]:
    """Per tile: (weights over its output span, owned start, owned end). Neighbours cross-fade linearly over the
    middle half of their shared span; owned ranges split each shared span at its middle (latent units)."""
    out = []
    for i, (s, e) in enumerate(tiles):
        w = torch.ones((e - s) * scale, dtype=torch.float64)
        own0, own1 = s, e
        if i > 0:
            ps, pe = tiles[i - 1]
            lo, hi = s * scale, pe * scale  # shared output span with the previous tile
            own0 = (s + pe) // 2
            _ramp(w, lo - s * scale, hi - s * scale, rising=True)
        if i < len(tiles) - 1:
            ns, ne = tiles[i + 1]
            lo, hi = ns * scale, e * scale
            own1 = (ns + e) // 2
            _ramp(w, lo - s * scale, hi - s * scale, rising=False)
        out.append((w, own0, own1))
    return out


def _ramp(w: torch.Tensor, lo: int, hi: int, *, rising: bool) -> None:
    span = hi - lo
    if span <= 0:
        return
    a = lo + span // 4
    b = hi - span // 4
    n = max(1, b - a)
    r = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if not rising:
        r = 1 - r
    if rising:
        w[lo:a] = 0.0
    else:
        w[b:hi] = 0.0
    w[a : a + n] *= r


# ----------------------------------------------------------------------------------------------------------------
# working set


def _stage_maps(config: DecoderConfig, n: int, h: int, w: int) -> tuple[list[tuple[int, int, int]], list[int]]:
    """[(channels, frames, pixel count)] per stage for a non-first chunk of n latent frames and an h x w tile;
    and the spatial scale of each stage."""
    ch = config.channels
    stages = [(ch[-1], n, h * w)]
    scales = [1]
    t, s = n, 1
    for i in range(len(ch) - 1):
        t *= config.temporal_expansions[-i - 1]
        s *= config.spatial_expansions[-i - 1]
        stages.append((ch[-i - 2], t, h * w * s * s))
        scales.append(s)
    return stages, scales


def decode_working_set_bytes(
    latent_shape: tuple[int, ...], tile: TilePlan, config: DecoderConfig, dtype: torch.dtype = torch.float32
) -> int:
    """Estimated peak bytes of :func:`tiled_decode` (formula in the module docstring). latent_shape: (B, C, T, H, W)."""
    b, _, t_lat, h_lat, w_lat = (int(v) for v in latent_shape)
    p = tile.clamp(t_lat, h_lat, w_lat)
    e = torch.empty((), dtype=dtype).element_size()
    sf = config.spatial_factor
    f_out = config.frames_out(t_lat)
    out_bytes = b * config.out_channels * f_out * h_lat * sf * w_lat * sf * 4
    tiled = p.height < h_lat or p.width < w_lat
    if tiled:
        out_bytes += h_lat * sf * w_lat * sf * 8
    carry = p.frames < t_lat  # several temporal chunks: every causal conv keeps its last 2 input frames
    n_res = list(reversed(config.num_res_blocks))  # stage order: input stage, up blocks coarse->fine, last
    stages, scales = _stage_maps(config, p.frames, p.height, p.width)
    cache = 0
    peak = 0
    for k, (c, t, px) in enumerate(stages):
        m = b * c * t * px * e
        # res blocks of stage k: stage 0 holds n_res[0] + n_res[1] (input block + first up block's blocks)
        nres = n_res[0] + n_res[1] if k == 0 else (n_res[k + 1] if k + 1 < len(n_res) else 0)
        if carry:
            cache += 2 * nres * 2 * b * c * px * e
        if nres:
            hs, ws = p.height * scales[k], p.width * scales[k]
            padf = (t + 2) / t * (hs + 2) * (ws + 2) / (hs * ws)
            # GroupNorm works in float32 on frame_chunk(t) frames at a time: the input and the normalised copy
            gn = 2 * frame_chunk(t) / t * 4 / e
            peak = max(peak, int((max(K_RES, 1 + gn) + padf) * m))
        if k + 1 < len(stages):
            c2, t2, px2 = stages[k + 1]
            m_out = b * c2 * t2 * px2 * e
            peak = max(peak, m + int(K_PROJ * m_out))
    _, last_t, last_px = stages[-1]
    # blended tiles: the decoder's chunk output (compute dtype) and, for 16-bit compute, its float32 copy
    out_chunk = b * config.out_channels * last_t * last_px * (e + (4 if e != 4 else 0)) if tiled else 0
    wmax = max(c * c * 27 for c in config.channels) * e
    return out_bytes + int(SAFETY * (cache + peak + out_chunk + wmax))


def max_conv_input_elements(latent_shape: tuple[int, ...], tile: TilePlan, config: DecoderConfig) -> int:
    """Elements of the largest 3x3x3 convolution input of one decoder call of ``tile`` on a (B, C, T, H, W)
    latent: the padded buffer B * C * (t + 2) * (h S + 2) * (w S + 2) of the widest stage, with t the frames a
    later temporal chunk has at that stage (the most any chunk has). Stages without res blocks have no 3x3x3 conv;
    the 1x1x1 input conv is far smaller."""
    b, _, t_lat, h_lat, w_lat = (int(v) for v in latent_shape)
    p = tile.clamp(t_lat, h_lat, w_lat)
    n_res = list(reversed(config.num_res_blocks))
    stages, scales = _stage_maps(config, p.frames, p.height, p.width)
    most = 0
    for k, (c, t, _) in enumerate(stages):
        nres = n_res[0] + n_res[1] if k == 0 else (n_res[k + 1] if k + 1 < len(n_res) else 0)
        if nres:
            most = max(most, b * c * (t + 2) * (p.height * scales[k] + 2) * (p.width * scales[k] + 2))
    return most


def _default_overlap(size: int) -> int:
    return max(1, min(8, size // 3))


def smallest_tile(latent_shape: tuple[int, ...], norm: str = "tile") -> TilePlan:
    """The smallest plan :func:`choose_tiles` proposes for a (B, C, T, H, W) latent: 1 latent frame per chunk,
    MIN_TILE x MIN_TILE-latent tiles (the whole axis when shorter)."""
    h, w = int(latent_shape[3]), int(latent_shape[4])
    th, tw = min(h, MIN_TILE), min(w, MIN_TILE)
    return TilePlan(1, th, tw, _default_overlap(min(th, tw)), norm)


def min_decode_bytes(latent_shape: tuple[int, ...], config: DecoderConfig, dtype: torch.dtype = torch.float32) -> int:
    """Working set of :func:`smallest_tile`, the least any plan of :func:`choose_tiles` needs."""
    return decode_working_set_bytes(latent_shape, smallest_tile(latent_shape), config, dtype)


def choose_tiles(
    latent_shape: tuple[int, ...],
    budget: int,
    config: DecoderConfig,
    dtype: torch.dtype = torch.float32,
    *,
    norm: str = "tile",
) -> TilePlan:
    """The cheapest plan whose working set fits ``budget`` bytes and whose convolution inputs stay under
    :data:`CONV_INPUT_LIMIT` elements: whole frames with as many latent frames per chunk as fit (exact); otherwise
    the tile grid with the least decoded area (overlaps and the statistics pass counted) that fits, then as many
    frames per chunk as fit. Raises DoesNotFitError naming the minimum, before any work."""
    _, _, t, h, w = (int(v) for v in latent_shape)

    def fits(plan: TilePlan) -> bool:
        return (
            max_conv_input_elements(latent_shape, plan, config) < CONV_INPUT_LIMIT
            and decode_working_set_bytes(latent_shape, plan, config, dtype) <= budget
        )

    for n in range(t, 0, -1):
        plan = TilePlan(n, h, w, 0, norm)
        if fits(plan):
            return plan
    minimum = min_decode_bytes(latent_shape, config, dtype)
    if minimum > budget:
        raise DoesNotFitError(
            f"VAE decode of a latent {tuple(latent_shape)} needs at least {format_bytes(minimum)} "
            f"(smallest tile, one latent frame per chunk); memory_budget is {format_bytes(budget)}",
            min_budget_bytes=minimum,
        )
    best: TilePlan | None = None
    best_cost = float("inf")
    passes = 2 if norm == "global" else 1
    for nr in range(1, h + 1):
        for nc in range(1, w + 1):
            if nr * nc == 1:
                continue
            ov = 0
            th = tw = 0
            for _ in range(3):  # overlap depends on the tile size and vice versa; settle in a few rounds
                th = h if nr == 1 else min(h, math.ceil((h + (nr - 1) * ov) / nr))
                tw = w if nc == 1 else min(w, math.ceil((w + (nc - 1) * ov) / nc))
                ov = _default_overlap(
                    min(s for s, full in ((th, h), (tw, w)) if s < full) if (th < h or tw < w) else th
                )
            if (th < min(h, MIN_TILE)) or (tw < min(w, MIN_TILE)):
                continue
            cost = passes * len(axis_tiles(h, th, ov)) * len(axis_tiles(w, tw, ov)) * th * tw
            if cost >= best_cost:
                continue
            plan = TilePlan(1, th, tw, ov, norm)
            if fits(plan):
                best, best_cost = plan, cost
    if best is None:  # the smallest tile fits (checked above)
        best = smallest_tile(latent_shape, norm)
    n = 1
    while n < t and fits(TilePlan(n + 1, best.height, best.width, best.overlap, norm)):
        n += 1
    return TilePlan(n, best.height, best.width, best.overlap, norm)


# ----------------------------------------------------------------------------------------------------------------
# decode


class TileShare(Protocol):
    """Spreads the spatial tiles of one decode over several workers (:mod:`mochi_core.parallel.vae`): tile ``k``
    (row-major order) is decoded by the worker that ``mine(k)``; the others' weighted tiles reach the root, which
    adds every tile into the output in tile order, as a single worker does."""

    @property
    def is_root(self) -> bool: ...

    def mine(self, index: int) -> bool: ...

    def send(self, tile: torch.Tensor) -> None: ...

    def receive(self, tile: torch.Tensor, index: int) -> torch.Tensor: ...

    def flush(self) -> None: ...


def tiled_decode(
    decoder: Decoder,
    z: torch.Tensor,
    plan: TilePlan,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    share: TileShare | None = None,
) -> torch.Tensor | None:
    """Decode z (B, C, T, H, W) (already in the compute dtype and on the decoder's device) by ``plan``.

    Returns (B, out_channels, 6(T-1)+1, 8H, 8W) float32. ``progress(i, n)`` after each tile x chunk work item,
    ``should_stop()`` before each (raises MochiInterrupted). ``share``: several workers decode the spatial tiles
    (one pass, ``norm="tile"``); the root returns the video, the others None. A plan of one tile, or with
    ``norm="global"``, is decoded by the root alone.
    """
    cfg = decoder.config
    b, _, t_lat, h_lat, w_lat = z.shape
    p = plan.clamp(t_lat, h_lat, w_lat)
    sf = cfg.spatial_factor
    f_out = cfg.frames_out(t_lat)
    rows = axis_tiles(h_lat, p.height, p.overlap)
    cols = axis_tiles(w_lat, p.width, p.overlap)
    chunks = [(t0, min(t_lat, t0 + p.frames)) for t0 in range(0, t_lat, p.frames)]
    tiled = len(rows) * len(cols) > 1
    if z.device.type == "cuda" and max_conv_input_elements(tuple(z.shape), p, cfg) >= CONV_INPUT_LIMIT:
        log.warning(
            "decode tile %s gives convolution inputs of 2**31 elements or more; torch builds without 64-bit conv "
            "indexing then fall back to a slow path that needs far more memory (use fewer frames per chunk)",
            p,
        )
    passes = ["collect", "apply"] if (tiled and p.norm == "global") else ["local"]
    total = len(passes) * len(rows) * len(cols) * len(chunks)
    spread = share is not None and passes == ["local"] and tiled
    if share is not None and not spread and not share.is_root:
        return None  # one tile or two passes: the root decodes alone
    root = share is None or share.is_root
    # the output accumulator lives on the root only; another worker holds one tile at a time
    shape = (b, cfg.out_channels, f_out, h_lat * sf, w_lat * sf) if root else (0,)
    out = torch.zeros(shape, dtype=torch.float32, device=z.device)
    wy = _axis_weights(rows, sf)
    wx = _axis_weights(cols, sf)
    wsum = torch.zeros(h_lat * sf, w_lat * sf, dtype=torch.float32, device=z.device) if tiled and root else None
    ctx = NormContext() if tiled and p.norm == "global" else None
    log.debug(
        "tiled decode %s: %d x %d tiles, %d chunks, passes %s",
        tuple(z.shape),
        len(rows),
        len(cols),
        len(chunks),
        passes,
    )
    done = 0
    try:
        for mode in passes:
            if ctx is not None:
                ctx.mode = mode
            for k, ((y0, y1), (wrow, oy0, oy1), (x0, x1), (wcol, ox0, ox1)) in enumerate(
                (r, wr, c, wc) for r, wr in zip(rows, wy) for c, wc in zip(cols, wx)
            ):
                if ctx is not None:
                    ctx.owned = (oy0 - y0, oy1 - y0, ox0 - x0, ox1 - x0)
                weight = None
                if tiled:
                    weight = (wrow[:, None] * wcol[None, :]).to(torch.float32).to(z.device)
                    if mode != "collect" and wsum is not None:
                        wsum[y0 * sf : y1 * sf, x0 * sf : x1 * sf] += weight
                region = (slice(None), slice(None), slice(None), slice(y0 * sf, y1 * sf), slice(x0 * sf, x1 * sf))
                tile_shape = (b, cfg.out_channels, f_out, (y1 - y0) * sf, (x1 - x0) * sf)
                if spread and share is not None and not share.mine(k):
                    if root:  # another worker's weighted tile, added in tile order
                        out[region].add_(share.receive(out.new_empty(tile_shape), k))
                        done += len(chunks)
                        if progress is not None:
                            progress(done, total)
                    continue
                own = out[region] if root else out.new_zeros(tile_shape)  # another worker: its weighted tile alone
                decoder.start_stream(ctx, carry=len(chunks) > 1)
                for t0, t1 in chunks:
                    if should_stop is not None and should_stop():
                        raise MochiInterrupted("VAE decode interrupted")
                    zc = z[:, :, t0:t1, y0:y1, x0:x1]
                    f0 = 0 if t0 == 0 else cfg.frames_out(t0)
                    dst = own[:, :, f0 : cfg.frames_out(t1)]
                    if mode == "collect":
                        decoder(zc)
                    elif weight is None:
                        decoder(zc, out=dst)  # whole frames: written straight into the accumulator
                    else:
                        dst.add_(decoder(zc).to(torch.float32).mul_(weight))
                    done += 1
                    if progress is not None and root:
                        progress(done, total)
                decoder.end_stream()
                if not root and share is not None:
                    share.send(own)
        if share is not None:
            share.flush()
    finally:
        decoder.end_stream()
    if not root:
        return None
    if wsum is not None:
        out.div_(wsum.clamp_min(1e-12))
    return out
