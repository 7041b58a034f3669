"""Memory estimates the planner adds up: weight bytes per storage format, activation peaks per phase.

The model of memory is derived from *our* code, tensor by tensor, and checked against measured allocation peaks
on CPU (``tests/unit/test_planner_validation.py``); see :mod:`mochi_core.memory.planning.planner` for how the phases use it.
Shapes: DiT from :meth:`DiTConfig.expected_shapes`, T5-XXL from :class:`T5Sizes`, the VAE decoder built on the
``meta`` device; activation stages from ``mochi_core/dit/block.py`` /
``dit/attention.py`` and the VAE's own working-set formula (``mochi_core/vae/tiling.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from .. import dtypes
from ..errors import InvalidInputError
from ..precision import keeps_high_precision
from ..quants import QUANT_TYPES

__all__ = [
    "DIT_STORAGES",
    "VAE_DTYPES",
    "ATTENTIONS",
    "T5Sizes",
    "dit_weight_bytes",
    "t5_weight_bytes",
    "decoder_weight_bytes",
    "attention_backend",
    "dit_activation_bytes",
    "t5_activation_bytes",
    "decode_working_set_bytes",
]

DIT_STORAGES = (*dtypes.TORCH_DTYPES, "scaled_fp8", *dtypes.GGUF_BLOCKS)
VAE_DTYPES = tuple(dtypes.COMPUTE_DTYPES)
ATTENTIONS = ("sdpa", "flash", "sage", "math")
_DTYPE_BYTES = {k: int(v) for k, v in dtypes.BYTES.items() if k not in dtypes.GGUF_BLOCKS}


def _norm_storage(value: object, what: str, allowed: tuple[str, ...]) -> str:
    """``value`` (a name or alias of :mod:`mochi_core.dtypes`, or a ``torch.dtype``) as one of ``allowed``."""
    key = dtypes.canonical_name(value)
    if key not in allowed:
        raise InvalidInputError(f"{what}={value!r} is not supported; allowed: {', '.join(allowed)}")
    return key


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _tensor_bytes(key: str, shape: tuple[int, ...], storage: str) -> int:
    n = math.prod(shape)
    if keeps_high_precision(key):
        return n * 4  # as stored in the official fp32 file (a bf16 file keeps them in bf16: 0.2 GB less)
    if storage in QUANT_TYPES:  # GGUF blocks: the type's own bytes per block where rows are whole blocks
        q = QUANT_TYPES[storage]
        return q.nbytes(n) if len(shape) == 2 and shape[1] % q.block_size == 0 else n * 4
    extra = 4 if storage == "scaled_fp8" and len(shape) >= 2 else 0  # the fp32 scale_weight scalar
    return n * _DTYPE_BYTES[storage] + extra


def dit_weight_bytes(config: Any = None, storage: str = "fp8_e4m3fn") -> tuple[int, list[int]]:
    """(bytes outside the blocks, [bytes of block i]) of a DiT stored as ``storage`` (see module docstring)."""
    from ..dit.config import DiTConfig

    cfg = config or DiTConfig()
    storage = _norm_storage(storage, "dit_storage", DIT_STORAGES)
    other = 0
    blocks = [0] * cfg.depth
    for key, shape in cfg.expected_shapes().items():
        b = _tensor_bytes(key, tuple(shape), storage)
        if key.startswith("blocks."):
            blocks[int(key.split(".")[1])] += b
        else:
            other += b
    return other, blocks


@dataclass(frozen=True)
class T5Sizes:
    """T5 v1.1 encoder sizes; defaults are T5-XXL (4,762,310,656 parameters)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    tokens: int = 256

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """HF ``T5EncoderModel`` state-dict keys (encoder only, gated FFN) with shapes."""
        d, inner = self.d_model, self.d_kv * self.num_heads
        s: dict[str, tuple[int, ...]] = {"shared.weight": (self.vocab_size, d)}
        for i in range(self.num_layers):
            p = f"encoder.block.{i}.layer."
            for n in "qkv":
                s[p + f"0.SelfAttention.{n}.weight"] = (inner, d)
            s[p + "0.SelfAttention.o.weight"] = (d, inner)
            if i == 0:
                s[p + "0.SelfAttention.relative_attention_bias.weight"] = (self.num_buckets, self.num_heads)
            s[p + "0.layer_norm.weight"] = (d,)
            s[p + "1.DenseReluDense.wi_0.weight"] = (self.d_ff, d)
            s[p + "1.DenseReluDense.wi_1.weight"] = (self.d_ff, d)
            s[p + "1.DenseReluDense.wo.weight"] = (d, self.d_ff)
            s[p + "1.layer_norm.weight"] = (d,)
        s["encoder.final_layer_norm.weight"] = (d,)
        return s


def t5_weight_bytes(sizes: T5Sizes | None = None, storage: str = "fp16") -> tuple[int, list[int]]:
    """(bytes outside the layers, [bytes of layer i]) of a T5 encoder stored as ``storage``.

    fp8 storages are scaled fp8 (what :func:`mochi_core.text.load_text_encoder` installs). The embedding, norms and
    relative bias keep the file's 16-bit storage (fp32 when ``storage`` is fp32).
    """
    sz = sizes or T5Sizes()
    storage = _norm_storage(storage, "t5_storage", DIT_STORAGES)
    hp = 4 if storage == "fp32" else 2
    other = 0
    layers = [0] * sz.num_layers
    for key, shape in sz.shapes().items():
        n = math.prod(shape)
        if keeps_high_precision(key) or len(shape) < 2:
            b = n * hp
        else:
            b = _tensor_bytes("x", shape, "scaled_fp8" if storage.startswith("fp8") else storage)
        m = re.match(r"encoder\.block\.(\d+)\.", key)
        if m:
            layers[int(m.group(1))] += b
        else:
            other += b
    return other, layers


def decoder_weight_bytes(config: Any = None, dtype: str = "bf16") -> int:
    """Bytes of the VAE decoder's parameters in ``dtype`` (counted on a ``meta``-device model)."""
    from ..vae.config import DecoderConfig
    from ..vae.decoder import Decoder

    with torch.device("meta"):
        dec = Decoder(config or DecoderConfig())
    n = sum(p.numel() for p in dec.parameters())
    return n * _DTYPE_BYTES[_norm_storage(dtype, "vae_dtype", VAE_DTYPES)]


# ----------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------


def _cast_factor(storage: str, compute: str) -> int:
    """Weight-sized temporaries while a Linear casts its weight: 0 (stored in the compute dtype), 1 (a cast; scaled
    fp8 scales that buffer in place, ``mochi_core.ops``), 2 for GGUF blocks (the expanded weight, scaled in place,
    plus the uint8 code tensors ``mochi_core.quants`` builds first: up to about one more weight-sized buffer)."""
    if storage in QUANT_TYPES:
        return 2
    return 0 if storage == compute else 1


def linear_cast_bytes(
    out_features: int, in_features: int, *, tokens: int, compute_bytes: int, factor: int, device_type: str
) -> int:
    """Transient bytes of one cast-on-use Linear beyond its input and output: the cast weight (``factor`` 0 or 1,
    :func:`_cast_factor`), or on the CPU, where ``mochi_core.ops.Linear`` casts a large weight in slices of rows,
    one slice plus that slice's output for ``tokens`` input rows."""
    from .. import ops

    full = factor * out_features * in_features * compute_bytes
    rows = ops.cast_chunk_rows(out_features, in_features, compute_bytes) if device_type == "cpu" else None
    if full == 0 or rows is None:
        return full
    return rows * in_features * compute_bytes + tokens * rows * compute_bytes


def attention_backend(device: str, attention: str, compute_bytes: int, head_dim: int) -> str:
    """The kernel torch would run: 'flash' / 'efficient' / 'cpu_flash' (O(N) memory) or 'math' (O(N²))."""
    if attention == "math":
        return "math"
    if attention in ("flash", "sage"):
        return attention
    if device == "cpu":
        return "cpu_flash"
    if head_dim > 256:
        return "math"
    return "flash" if compute_bytes == 2 else "efficient"


def _cpu_flash_workspace(batch: int, heads: int, q_len: int, head_dim: int, compute_bytes: int, threads: int) -> int:
    """Scratch of aten's CPU flash attention: per thread a q-block x kv-block score tile, row max / sum and an
    output accumulator (fp32; plus a 16-bit copy of the tile for bf16 inputs), and the (B, H, S) log-sum-exp."""
    qs = 256 if q_len >= 768 else (64 if q_len >= 192 else 32)
    qs = min(qs, q_len)
    kvs = min(512, q_len)
    per_thread = (qs * kvs + 2 * qs + qs * head_dim) * 4 + (qs * kvs * 2 if compute_bytes == 2 else 0)
    return threads * per_thread + batch * heads * q_len * 4


def dit_activation_bytes(
    config: Any,
    *,
    visual_tokens: int,
    text_tokens: int,
    batch: int,
    compute_dtype: str,
    storage: str,
    backend: str = "flash",
    uncond_tokens: int | None = 0,
    threads: int | None = None,
    device_type: str = "cuda",
    token_chunk: int | None = None,
) -> dict[str, int]:
    """Peak bytes one DiT forward allocates beyond its weights, by part (see module docstring).

    Stage candidates of ``mochi_core/dit/block.py`` in units U = B·N·D_x elements of the compute dtype (ρ = 2 when
    the compute dtype is 16-bit, since q/k leave RoPE in fp32): attention = block input, modulated input, qkv (3),
    roped q and k (2ρ), the joint q/k/v buffers (3), the kernel output and its reshaped copy (or, with CFG batches
    whose valid text counts differ, the per-group buffers: +5) plus the kernel workspace; MLP = input, attention
    output, residual stream, modulated input, w1 output (2·F_x/D_x), w2 output, w2's weight cast; gated residual
    (16-bit only) = 10. ``uncond_tokens``: valid tokens of the negative prompt in a batched CFG call (0 = empty
    prompt, the official default; None = same as ``text_tokens``). ``device_type`` "cpu": weight casts in slices
    (:func:`linear_cast_bytes`).
    ``token_chunk``: the DiT's chunk length (``AsymmDiT.token_chunk``; None when it does not chunk, as with the
    flash-attn backend); sequences longer than it run the chunked block (:func:`_chunked_stream_bytes`).
    Returns {"rope", "stream" (the peak stage's live tensors incl. the weight cast), "attention_workspace" (kernel
    workspace at that stage), "inputs", "total"}.
    """
    cfg = config
    n, b, a = visual_tokens, batch, _DTYPE_BYTES[compute_dtype]
    dx, dy, fx = cfg.hidden_size_x, cfg.hidden_size_y, cfg.mlp_hidden_x
    u = b * n * dx * a
    rho = 2 if a == 2 else 1
    rope = n * dx * 4  # complex64 (N, H, hd/2)
    cast_w2 = linear_cast_bytes(
        dx, fx, tokens=b * n, compute_bytes=a, factor=_cast_factor(storage, compute_dtype), device_type=device_type
    )
    chunked = token_chunk is not None and n > token_chunk
    mlp = 5 * u + 2 * b * n * fx * a + cast_w2
    gated = 10 * u if a == 2 else 5 * u
    s = n + text_tokens
    two_groups = b == 2 and uncond_tokens is not None and uncond_tokens != text_tokens
    if backend == "math":
        workspace = 2 * b * cfg.num_heads * s * s * max(a, 4)  # scores + softmax (fp32 softmax)
    elif backend in ("flash", "efficient"):
        workspace = b * cfg.num_heads * s * 4  # log-sum-exp
    elif backend == "sage":
        workspace = 2 * b * n * dx  # int8 q, k
    elif backend == "cpu_flash":
        th = threads if threads is not None else torch.get_num_threads()
        workspace = _cpu_flash_workspace(b // 2 if two_groups else b, cfg.num_heads, s, cfg.head_dim, a, th)
    else:
        workspace = 0
    latent = cfg.in_channels * n * cfg.patch_size**2 * 4
    inputs = (
        b * text_tokens * (dy + cfg.t5_feat_dim) * a + b * cfg.t5_token_length * cfg.t5_feat_dim * 4 + 3 * b * latent
    )
    if chunked:
        assert token_chunk is not None
        stream, at_peak_ws = _chunked_stream_bytes(
            cfg, n=n, b=b, a=a, text_tokens=text_tokens, two_groups=two_groups, chunk=token_chunk,
            workspace=workspace, storage=storage, compute_dtype=compute_dtype, device_type=device_type,
        )  # fmt: skip
        total = rope + stream + at_peak_ws + inputs
        return {"rope": rope, "stream": stream, "attention_workspace": at_peak_ws, "inputs": inputs, "total": total}
    base = (5 + 2 * rho) * u
    if two_groups:
        attn, attn_ws = base + 5 * u, workspace
    else:
        joint = 3 * u if text_tokens > 0 else (2 * u if a == 2 else 0)
        # the kernel's output, then either its workspace (during the call) or the reshaped copy (after it)
        attn, attn_ws = (base + joint + u, workspace) if workspace > u else (base + joint + 2 * u, 0)
    if attn + attn_ws > max(mlp, gated):
        stream, at_peak_ws = attn, attn_ws
    else:
        stream, at_peak_ws = max(mlp, gated), 0
    total = rope + stream + at_peak_ws + inputs
    return {"rope": rope, "stream": stream, "attention_workspace": at_peak_ws, "inputs": inputs, "total": total}


def _chunked_stream_bytes(
    cfg: Any,
    *,
    n: int,
    b: int,
    a: int,
    text_tokens: int,
    two_groups: bool,
    chunk: int,
    workspace: int,
    storage: str,
    compute_dtype: str,
    device_type: str,
) -> tuple[int, int]:
    """(live bytes at the peak stage, kernel workspace at that stage) of the chunked block
    (``AsymmetricAttention.forward_chunked`` and the chunked MLP of ``mochi_core/dit/block.py``).

    Whole-sequence tensors: U = B·N·D_x·a (block input, block output) and per attention group of g samples
    G = g·(N + L)·D_x·a (q, k, v, kernel output; g = B, or B/2 when the CFG halves' valid text counts differ,
    then the second group runs while the first group's output rows are already written). Chunk temporaries
    for R = g·c·D_x elements (c = chunk tokens): building q/k/v: modulated input (R·a; with 16-bit compute also
    its float32 form, 4R) and the qkv output (3R·a) with qkv_x's weight cast, then q or k normalized and
    rotated in float32 (2·4R) next to the qkv output; output projection: the gathered kernel rows, proj_x's
    output (2R·a) and the gated residual (4R, plus 2·4R + R·a of float32 copies with 16-bit compute); MLP on
    B·c rows: modulated input, w1's output (2·F_x/D_x wide), w2's output and a weight cast.
    """
    dx, fx = cfg.hidden_size_x, cfg.mlp_hidden_x
    g = b // 2 if two_groups else b
    c = min(chunk, n)
    u = b * n * dx * a
    big_g = g * (n + text_tokens) * dx * a
    r = g * c * dx
    f32_extra = 4 * r if a == 2 else 0
    factor = _cast_factor(storage, compute_dtype)

    def cast(out_f: int, in_f: int, rows: int) -> int:
        return linear_cast_bytes(out_f, in_f, tokens=rows, compute_bytes=a, factor=factor, device_type=device_type)

    build = max(4 * r * a + f32_extra + cast(3 * dx, dx, g * c), 3 * r * a + 2 * 4 * r)
    proj = 2 * r * a + 4 * r + (2 * 4 * r + r * a if a == 2 else 0) + cast(dx, dx, g * c)
    rm = b * c * dx
    mlp = rm * a + 2 * b * c * fx * a + rm * a + max(cast(2 * fx, dx, b * c), cast(dx, fx, b * c))
    out_early = u if two_groups else 0  # the block output exists while the second group runs
    stages = [
        (u + out_early + 3 * big_g + build, 0),
        (u + out_early + 4 * big_g, workspace),
        (u + big_g + u + proj, 0),
        (2 * u + mlp, 0),
    ]
    return max(stages, key=lambda st: st[0] + st[1])


def t5_activation_bytes(
    sizes: T5Sizes | None = None,
    *,
    prompts: int = 2,
    compute_dtype: str = "fp32",
    storage: str = "fp16",
    device_type: str = "cuda",
) -> int:
    """Peak bytes of one T5 encoder call beyond its weights (transformers' eager T5 layer, ``mochi_core.text``).

    Live at the peak (feed-forward of one layer): hidden states ×3, wi_0 / wi_1 outputs and their product
    (B·L·d_ff each), position bias + mask (B·H·L²), the cast of one d_ff×d weight; attention adds scores and
    probabilities (B·H·L² ×2) while the FFN terms are not alive, so the max of the two stages is taken.
    """
    sz = sizes or T5Sizes()
    bl = prompts * sz.tokens
    a = _DTYPE_BYTES[compute_dtype]
    bias = prompts * sz.num_heads * sz.tokens**2 * 4
    cast = linear_cast_bytes(
        sz.d_model,
        sz.d_ff,
        tokens=bl,
        compute_bytes=a,
        factor=_cast_factor("scaled_fp8" if storage.startswith("fp8") else storage, compute_dtype),
        device_type=device_type,
    )
    ffn = 3 * bl * sz.d_model * a + 3 * bl * sz.d_ff * a + bias + cast
    attn = 6 * bl * sz.d_model * a + 3 * bias + sz.d_model * sz.d_kv * sz.num_heads * a
    return max(ffn, attn)


def decode_working_set_bytes(
    latent_shape: tuple[int, ...], tile: Any = None, *, config: Any = None, dtype: str = "bf16"
) -> int:
    """Working set of the VAE decode of ``latent_shape`` (B, C, T, H, W) with ``tile`` (a ``TilePlan``, None = whole).

    Delegates to :func:`mochi_core.vae.tiling.decode_working_set_bytes` (the decoder's own formula, output
    accumulator included) so the planner and the decoder agree on tiles.
    """
    from ..vae.config import DecoderConfig
    from ..vae.tiling import TilePlan
    from ..vae.tiling import decode_working_set_bytes as vae_working_set

    big = 1 << 30
    tp = tile if tile is not None else TilePlan(big, big, big, 0)
    tdt = dtypes.TORCH_DTYPES[dtype]
    return int(vae_working_set(tuple(latent_shape), tp, config or DecoderConfig(), tdt))
