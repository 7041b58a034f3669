"""The peak of each phase of one generation as a function of the planner's choices.

:class:`PhaseModel` holds one job (sizes, configurations, storage and compute dtypes, reserve) and prices a phase
for a given choice: T5 layers resident, DiT blocks resident and CFG batching, a decode tile. The planner
(:mod:`mochi_core.memory.planning.planner`) searches over these choices; the estimates come from
:mod:`mochi_core.memory.estimates` and, for the decode, from the decoder's own formula
(:func:`mochi_core.vae.tiling.decode_working_set_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ... import dtypes
from ...errors import DoesNotFitError
from ..estimates import _DTYPE_BYTES as _DTYPE_BYTES_
from ..estimates import (
    T5Sizes,
    decode_working_set_bytes,
    decoder_weight_bytes,
    dit_activation_bytes,
    dit_weight_bytes,
    t5_activation_bytes,
    t5_weight_bytes,
)

__all__ = ["PhasePeak", "PhaseModel", "streamed_weights"]


@dataclass(frozen=True)
class PhasePeak:
    """Predicted peak of one phase on the compute device (bytes). ``peak_bytes`` = sum of the parts + reserve."""

    name: str
    weights_bytes: int
    activation_bytes: int
    workspace_bytes: int
    other_bytes: int
    reserve_bytes: int
    peak_bytes: int
    detail: dict[str, Any] = field(default_factory=dict)


def streamed_weights(other: int, blocks: list[int], resident: int, prefetch: bool) -> int:
    """Device bytes of a streamed model: non-block tensors, the first N blocks and the streamed block buffers."""
    streamed = sorted(blocks[resident:], reverse=True)
    buffers = sum(streamed[: 1 + int(prefetch)])
    return other + sum(blocks[:resident]) + buffers


class PhaseModel:
    """Phase peaks of one ``width`` x ``height`` x ``frames`` job (arguments already validated by the planner).

    ``latent`` = (T, H, W) latent size; ``batch`` = videos sampled and decoded together; ``text_tokens`` = valid
    prompt tokens in the joint attention; ``backend`` = the attention kernel
    (:func:`~mochi_core.memory.estimates.attention_backend`). ``sp`` / ``cfg_parallel``:
    the peaks of one rank of a multi-process run (:mod:`mochi_core.parallel`): the rank holds the whole DiT, a
    ``1/sp`` slice of the visual tokens (and, around attention, every token of ``heads/sp`` heads: the same size)
    plus the all-to-all buffers, and runs one CFG half when the halves are on two ranks; the T5 and the assembled
    video live on rank 0, which is the rank planned.
    """

    def __init__(
        self,
        *,
        latent: tuple[int, int, int],
        dit_config: Any,
        t5_sizes: T5Sizes,
        decoder_config: Any,
        dit_storage: str,
        t5_storage: str,
        vae_dtype: str,
        compute_dtype: str,
        t5_compute_dtype: str,
        backend: str,
        text_tokens: int,
        prefetch: bool,
        reserve: int,
        device_type: str = "cuda",
        batch: int = 1,
        sp: int = 1,
        cfg_parallel: bool = False,
        lora_bytes: tuple[int, list[int]] | None = None,
        token_chunk: int | None = None,
        teacache: bool = False,
    ) -> None:
        self.sp, self.cfg_parallel = sp, cfg_parallel
        self.lt, self.lh, self.lw = latent
        self.cfg, self.t5s, self.dcfg = dit_config, t5_sizes, decoder_config
        self.dit_storage, self.vae_dtype, self.compute_dtype = dit_storage, vae_dtype, compute_dtype
        self.backend, self.text_tokens, self.prefetch, self.reserve = backend, text_tokens, prefetch, reserve
        p = dit_config.patch_size
        self.visual_tokens = self.lt * (self.lh // p) * (self.lw // p)
        self.batch = batch
        self.latent_bytes = batch * dit_config.in_channels * self.lt * self.lh * self.lw * 4
        # features + masks of prompt and negative prompt, carried from text encoding to sampling
        self.carried = 2 * t5_sizes.tokens * t5_sizes.d_model * 4 + 2 * t5_sizes.tokens
        self.t5_other, self.t5_layers = t5_weight_bytes(t5_sizes, t5_storage)
        self.device_type = device_type
        self.token_chunk, self.teacache = token_chunk, teacache
        self.t5_act = t5_activation_bytes(
            t5_sizes, prompts=2, compute_dtype=t5_compute_dtype, storage=t5_storage, device_type=device_type
        )
        self.dit_other, self.dit_blocks = dit_weight_bytes(dit_config, dit_storage)
        if lora_bytes is not None:  # run-time LoRA factors live (and stream) with the layers they change
            self.dit_other += lora_bytes[0]
            self.dit_blocks = [b + extra for b, extra in zip(self.dit_blocks, lora_bytes[1])]
        self.decoder_bytes = decoder_weight_bytes(decoder_config, vae_dtype)
        self.latent_shape = (batch, decoder_config.latent_dim, self.lt, self.lh, self.lw)
        # the DiT-space latent and its VAE-space copy (the compute-dtype copy when it differs is in the tile's z)
        self.decode_other = 2 * self.latent_bytes

    @property
    def depth(self) -> int:
        return len(self.dit_blocks)

    @property
    def t5_depth(self) -> int:
        return len(self.t5_layers)

    # -- phases ------------------------------------------------------------------------------------
    def text(self, resident: int) -> PhasePeak:
        """Text encoding with ``resident`` of the T5 layers on the device (the others streamed)."""
        if resident < self.t5_depth:
            w = streamed_weights(self.t5_other, self.t5_layers, resident, self.prefetch)
        else:
            w = self.t5_other + sum(self.t5_layers)
        peak = w + self.t5_act + self.carried + self.reserve
        detail = {"resident_layers": resident, "layers": self.t5_depth}
        return PhasePeak("text_encoding", w, self.t5_act, 0, self.carried, self.reserve, peak, detail)

    def sampling(self, resident: int, batched: bool) -> PhasePeak:
        """Sampling with ``resident`` DiT blocks on the device and cond / uncond in one batch when ``batched``."""
        b = self.batch * (1 if self.cfg_parallel else (2 if batched else 1))
        tokens = -(-self.visual_tokens // self.sp)  # this rank's slice (the first ranks hold one more)
        chunk = self.token_chunk if self.sp == 1 else None  # sequence-parallel blocks run whole (dit/block.py)
        act = dit_activation_bytes(
            self.cfg,
            visual_tokens=tokens,
            text_tokens=self.text_tokens,
            batch=b,
            compute_dtype=self.compute_dtype,
            storage=self.dit_storage,
            backend=self.backend,
            device_type=self.device_type,
            token_chunk=chunk,
        )
        cache = self.teacache_bytes() if self.teacache else 0
        if resident < self.depth:
            w = streamed_weights(self.dit_other, self.dit_blocks, resident, self.prefetch)
        else:
            w = self.dit_other + sum(self.dit_blocks)
        other = self.carried + 4 * self.latent_bytes + cache
        ws = act["attention_workspace"]
        if self.sp > 1:
            # q, k, v received from every rank and joined along the tokens, in the compute dtype (2 x 3 units)
            ws += 6 * b * tokens * self.cfg.hidden_size_x * _DTYPE_BYTES_[self.compute_dtype]
        if self.cfg_parallel:
            other += 2 * self.latent_bytes  # both CFG halves' predictions, gathered
        activations = act["total"] - act["attention_workspace"]
        peak = w + activations + ws + other + self.reserve
        detail = {
            "resident_blocks": resident,
            "batch": b,
            "batch_cfg": batched,
            "activation_parts": act,
            "rank_tokens": tokens,
            "token_chunk": chunk,
            "teacache_bytes": cache,
        }
        return PhasePeak("sampling", w, activations, ws, other, self.reserve, peak, detail)

    def teacache_bytes(self) -> int:
        """TeaCache state kept across steps: for cond and uncond, block 0's modulated input of the previous step
        and the residual of the last computed call, plus the embedded input kept through one forward (each
        N·D_x in the compute dtype per sample, times the video batch; ``mochi_core.teacache``)."""
        u = self.visual_tokens * self.cfg.hidden_size_x * {"fp32": 4}.get(self.compute_dtype, 2)
        return self.batch * (2 * 2 * u + 2 * u)

    def decoding(self, tile: Any) -> PhasePeak:
        """Decoding with ``tile`` (a :class:`~mochi_core.vae.tiling.TilePlan`): decoder weights, the latent and
        the working set of that tile (output accumulator included)."""
        from ...vae.tiling import count_tiles

        ws = decode_working_set_bytes(self.latent_shape, tile, config=self.dcfg, dtype=self.vae_dtype)
        tp = tile.clamp(self.lt, self.lh, self.lw)
        detail = {
            "tile": [tp.frames, tp.height, tp.width],
            "overlap": tp.overlap,
            "norm": tp.norm,
            "tiles": count_tiles(self.latent_shape, tp),
        }
        peak = self.decoder_bytes + ws + self.decode_other + self.reserve
        return PhasePeak("decoding", self.decoder_bytes, ws, 0, self.decode_other, self.reserve, peak, detail)

    def decode_room(self, budget: int) -> int:
        """Bytes left for the decode's working set under ``budget`` (never negative)."""
        return max(0, budget - self.decoder_bytes - self.decode_other - self.reserve)

    def decoding_for_budget(self, budget: int) -> PhasePeak:
        """Decoding with the largest tile that fits ``budget`` (the smallest tile when none does)."""
        from ...vae.tiling import choose_tiles, smallest_tile

        vdt = dtypes.TORCH_DTYPES[self.vae_dtype]
        try:
            tile = choose_tiles(self.latent_shape, max(self.decode_room(budget), 1), self.dcfg, vdt)
        except DoesNotFitError:
            tile = smallest_tile(self.latent_shape)
        return self.decoding(tile)

    def smallest_decoding(self) -> PhasePeak:
        """Decoding with the smallest tile the planner would choose."""
        from ...vae.tiling import smallest_tile

        return self.decoding(smallest_tile(self.latent_shape))
