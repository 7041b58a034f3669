"""VAE configurations: the official Mochi 1 decoder / encoder and tiny presets, inferred from checkpoint shapes.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (DecoderModelFactory, EncoderModelFactory)
and ``vae/models.py`` (Decoder, Encoder constructors); docs/numerics.md §4.3, §4.4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import UnsupportedCheckpointError

__all__ = ["DecoderConfig", "EncoderConfig"]

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class DecoderConfig:
    """Causal decoder. ``channels`` run from the output stage (index 0) to the latent stage (index -1).

    ``num_res_blocks`` has len(channels) + 1 entries: [output stage, up blocks from fine to coarse ..., input stage]
    (official order: index -1 is ``blocks.0``, index 0 is the last block).
    ``temporal_expansions`` / ``spatial_expansions`` are given fine-to-coarse as in the official constructor.
    """

    latent_dim: int = 12
    out_channels: int = 3
    channels: tuple[int, ...] = (128, 256, 512, 768)
    num_res_blocks: tuple[int, ...] = (3, 3, 4, 6, 3)
    temporal_expansions: tuple[int, ...] = (1, 2, 3)
    spatial_expansions: tuple[int, ...] = (2, 2, 2)

    def __post_init__(self) -> None:
        n = len(self.channels) - 1
        if len(self.num_res_blocks) != n + 2 or len(self.temporal_expansions) != n or len(self.spatial_expansions) != n:
            raise ValueError(f"inconsistent decoder config {self}")
        if any(c % 32 for c in self.channels):
            raise ValueError(f"decoder widths must be multiples of 32 (GroupNorm 32 groups); got {self.channels}")

    @property
    def temporal_factor(self) -> int:
        f = 1
        for t in self.temporal_expansions:
            f *= t
        return f

    @property
    def spatial_factor(self) -> int:
        f = 1
        for s in self.spatial_expansions:
            f *= s
        return f

    def frames_out(self, t_latent: int) -> int:
        """Output frames for ``t_latent`` latent frames: each up block keeps t*T - (t - 1) frames (= 6(T-1)+1)."""
        t = t_latent
        for e in reversed(self.temporal_expansions):
            t = e * t - (e - 1)
        return t

    @classmethod
    def tiny(cls) -> DecoderConfig:
        """The golden-test decoder (the golden test files): 32 channels everywhere, one res block per stage."""
        return cls(channels=(32, 32, 32, 32), num_res_blocks=(1, 1, 1, 1, 1))

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> DecoderConfig:
        """Infer the configuration from official key names and shapes (no data read)."""
        try:
            top, latent_dim = int(shapes["blocks.0.0.weight"][0]), int(shapes["blocks.0.0.weight"][1])
            out_channels, c0 = (int(s) for s in shapes["output_proj.weight"][:2])
        except KeyError as exc:
            raise UnsupportedCheckpointError(f"decoder checkpoint lacks {exc.args[0]!r}") from exc
        n_stage = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
        n_up = n_stage - 2

        def count(prefix: str) -> int:
            pat = re.compile(re.escape(prefix) + r"(\d+)\.stack\.0\.weight$")
            return len({m.group(1) for k in shapes if (m := pat.match(k))})

        res_first = count("blocks.0.")
        res_last = count(f"blocks.{n_stage - 1}.")
        res_up = [count(f"blocks.{b}.blocks.") for b in range(1, n_up + 1)]
        # channels of each up block input, coarse to fine
        widths_coarse = [top]
        t_exp: list[int] = []
        s_exp: list[int] = []
        for b in range(1, n_up + 1):
            proj = shapes.get(f"blocks.{b}.proj.weight")
            if proj is None:
                raise UnsupportedCheckpointError(f"decoder checkpoint lacks 'blocks.{b}.proj.weight'")
            out_w = int(proj[0])
            if b < n_up:
                norm = shapes.get(f"blocks.{b + 1}.blocks.0.stack.0.weight")
                c_next = int(norm[0]) if norm is not None else int(shapes[f"blocks.{b + 1}.proj.weight"][1])
            else:
                norm = shapes.get(f"blocks.{b + 1}.0.stack.0.weight")
                c_next = int(norm[0]) if norm is not None else c0
            factor = out_w // c_next
            if factor * c_next != out_w or factor % 4:
                raise UnsupportedCheckpointError(
                    f"decoder proj blocks.{b}.proj has {out_w} outputs for {c_next} channels"
                )
            s_exp.append(2)  # Mochi's spatial factor; t * s * s is all the shapes tell
            t_exp.append(factor // 4)
            widths_coarse.append(c_next)
        return cls(
            latent_dim=latent_dim,
            out_channels=out_channels,
            channels=tuple(reversed(widths_coarse)),
            num_res_blocks=tuple([res_last] + list(reversed(res_up)) + [res_first]),
            temporal_expansions=tuple(reversed(t_exp)),
            spatial_expansions=tuple(reversed(s_exp)),
        )


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder: ``channels`` fine to coarse; ``num_res_blocks`` / ``has_attentions`` have len(channels) + 1 entries
    ([input stage, down blocks..., extra blocks at the coarsest width]) as in the official constructor."""

    in_channels: int = 15
    latent_dim: int = 12
    channels: tuple[int, ...] = (64, 128, 256, 384)
    num_res_blocks: tuple[int, ...] = (3, 3, 4, 6, 3)
    temporal_reductions: tuple[int, ...] = (1, 2, 3)
    spatial_reductions: tuple[int, ...] = (2, 2, 2)
    has_attentions: tuple[bool, ...] = (False, True, True, True, True)

    def __post_init__(self) -> None:
        n = len(self.channels) - 1
        if (
            len(self.num_res_blocks) != n + 2
            or len(self.has_attentions) != n + 2
            or len(self.temporal_reductions) != n
            or len(self.spatial_reductions) != n
        ):
            raise ValueError(f"inconsistent encoder config {self}")

    @property
    def temporal_factor(self) -> int:
        f = 1
        for t in self.temporal_reductions:
            f *= t
        return f

    @property
    def spatial_factor(self) -> int:
        f = 1
        for s in self.spatial_reductions:
            f *= s
        return f

    @classmethod
    def tiny(cls) -> EncoderConfig:
        """The golden-test encoder (the golden test files)."""
        return cls(channels=(64, 32, 64, 32), num_res_blocks=(0, 1, 0, 1, 0))

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> EncoderConfig:
        """Infer the configuration from official key names and shapes."""
        try:
            c0, in_ch = int(shapes["layers.0.weight"][0]), int(shapes["layers.0.weight"][1])
            latent2 = int(shapes["output_proj.weight"][0])
        except KeyError as exc:
            raise UnsupportedCheckpointError(f"encoder checkpoint lacks {exc.args[0]!r}") from exc
        idx = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))})
        widths = [c0]
        res = [0]
        attn = [False]
        t_red: list[int] = []
        s_red: list[int] = []
        stage = 0
        extra = 0
        extra_attn = False
        for i in idx[1:]:
            down = shapes.get(f"layers.{i}.layers.0.weight")
            if down is not None and len(down) == 5:
                stage += 1
                widths.append(int(down[0]))
                t_red.append(int(down[2]))
                s_red.append(int(down[3]))
                n = len(
                    {
                        m.group(1)
                        for k in shapes
                        if (m := re.match(rf"layers\.{i}\.layers\.(\d+)\.stack\.0\.weight$", k))
                    }
                )
                res.append(n)
                attn.append(f"layers.{i}.layers.1.attn_block.norm.weight" in shapes)
            elif f"layers.{i}.stack.0.weight" in shapes:
                if stage == 0:
                    res[0] += 1
                    attn[0] = f"layers.{i}.attn_block.norm.weight" in shapes
                else:
                    extra += 1
                    extra_attn = f"layers.{i}.attn_block.norm.weight" in shapes
            else:
                raise UnsupportedCheckpointError(f"encoder checkpoint: unrecognised layer 'layers.{i}'")
        res.append(extra)
        attn.append(extra_attn if extra else attn[-1])
        for i in range(1, len(attn)):
            if res[i] == 0 and i < len(attn) - 1:
                attn[i] = attn[i - 1] if i > 1 else True
        return cls(
            in_channels=in_ch,
            latent_dim=latent2 // 2,
            channels=tuple(widths),
            num_res_blocks=tuple(res),
            temporal_reductions=tuple(t_red),
            spatial_reductions=tuple(s_red),
            has_attentions=tuple(attn),
        )
