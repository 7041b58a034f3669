"""DiT configuration: a frozen dataclass whose defaults are Mochi 1 preview, inferred from tensor shapes on load.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (DitModelFactory arguments) and
``dit/joint_model/layers.py`` (FeedForward hidden-width rule); docs/numerics.md §2.1. No literal size is asserted:
every derived width is computed from the fields, so the full model and tiny test models share one code path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..errors import UnsupportedCheckpointError

__all__ = ["DiTConfig", "swiglu_hidden"]


def swiglu_hidden(width: int, ratio: float, multiple_of: int = 256) -> int:
    """Official SwiGLU hidden width: h = int(2 * int(width * ratio) / 3), rounded up to ``multiple_of``."""
    h = int(2 * int(width * ratio) / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class DiTConfig:
    """Shape of an AsymmDiT. Defaults = Mochi 1 preview (10,027,677,744 parameters).

    ``mlp_hidden_x`` / ``mlp_hidden_y`` default to the official rule (:func:`swiglu_hidden`); a checkpoint's
    actual widths are read from its tensors and override it.
    """

    depth: int = 48
    num_heads: int = 24
    hidden_size_x: int = 3072
    hidden_size_y: int = 1536
    mlp_ratio_x: float = 4.0
    mlp_ratio_y: float = 4.0
    patch_size: int = 2
    in_channels: int = 12
    t5_feat_dim: int = 4096
    t5_token_length: int = 256  # T5 tokens per prompt: the planner's and test inputs' text length (no weight)
    timestep_scale: float = 1000.0
    pooler_heads: int = 8
    frequency_embedding_size: int = 256
    mlp_hidden_x_override: int | None = field(default=None, repr=False)
    mlp_hidden_y_override: int | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.hidden_size_x // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def mlp_hidden_x(self) -> int:
        return self.mlp_hidden_x_override or swiglu_hidden(self.hidden_size_x, self.mlp_ratio_x)

    @property
    def mlp_hidden_y(self) -> int:
        return self.mlp_hidden_y_override or swiglu_hidden(self.hidden_size_y, self.mlp_ratio_y)

    @property
    def patch_out(self) -> int:
        """Values per token of the final layer: patch_size² · out_channels."""
        return self.patch_size * self.patch_size * self.out_channels

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls) -> DiTConfig:
        """The configuration of the golden tiny model (the golden test file ``dit_tiny.safetensors``)."""
        return cls(depth=2, num_heads=2, hidden_size_x=96, hidden_size_y=48, t5_feat_dim=32, t5_token_length=16)

    def with_(self, **changes: object) -> DiTConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> DiTConfig:
        """Check the internal consistency of the sizes; raises UnsupportedCheckpointError naming the field."""
        problems = []
        if self.depth < 1:
            problems.append(f"depth={self.depth} (must be >= 1)")
        if self.num_heads < 1 or self.hidden_size_x % self.num_heads:
            problems.append(f"hidden_size_x={self.hidden_size_x} is not divisible by num_heads={self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even (RoPE pairs)")
        if self.t5_feat_dim % self.pooler_heads:
            problems.append(f"t5_feat_dim={self.t5_feat_dim} is not divisible by pooler_heads={self.pooler_heads}")
        if self.frequency_embedding_size % 2:
            problems.append(f"frequency_embedding_size={self.frequency_embedding_size} must be even")
        for name in ("hidden_size_y", "patch_size", "in_channels", "t5_feat_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if problems:
            raise UnsupportedCheckpointError("inconsistent DiT configuration: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ inference from a checkpoint
    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], *, source: str = "checkpoint") -> DiTConfig:
        """Infer the configuration from logical tensor shapes under official key names.

        Reads depth (number of ``blocks.{i}``), visual width and in-channels and patch size
        (``x_embedder.proj.weight``), heads and head size (``pos_frequencies`` [3, heads, head_dim/2]), text
        width and T5 width (``t5_yproj.weight``), MLP widths (``mlp_*.w2.weight``) and the timestep frequency size.
        """

        def need(key: str, rank: int) -> tuple[int, ...]:
            shape = shapes.get(key)
            if shape is None:
                raise UnsupportedCheckpointError(
                    f"{source}: tensor {key!r} is missing; this is not a complete Mochi DiT"
                )
            if len(shape) != rank:
                raise UnsupportedCheckpointError(
                    f"{source}: tensor {key!r} has shape {list(shape)}, expected rank {rank}; not a Mochi DiT"
                )
            return shape

        xe = need("x_embedder.proj.weight", 4)
        pf = need("pos_frequencies", 3)
        yp = need("t5_yproj.weight", 2)
        te = need("t_embedder.mlp.0.weight", 2)
        block_ids = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
        if not block_ids:
            raise UnsupportedCheckpointError(f"{source}: no 'blocks.N.*' tensors; not a Mochi DiT")
        depth = max(block_ids) + 1
        missing = sorted(set(range(depth)) - block_ids)
        if missing:
            raise UnsupportedCheckpointError(
                f"{source}: DiT blocks {missing} are missing (found up to blocks.{depth - 1})"
            )
        hidden_x, in_ch, patch = xe[0], xe[1], xe[2]
        if pf[0] != 3 or xe[2] != xe[3]:
            raise UnsupportedCheckpointError(
                f"{source}: pos_frequencies {list(pf)} / x_embedder {list(xe)} do not match any Mochi configuration"
            )
        heads = pf[1]
        if heads * pf[2] * 2 != hidden_x:
            raise UnsupportedCheckpointError(
                f"{source}: pos_frequencies {list(pf)} implies {heads} heads of {pf[2] * 2}, which does not give "
                f"the visual width {hidden_x} of x_embedder"
            )
        mlp_x = need("blocks.0.mlp_x.w2.weight", 2)[1]
        mlp_y = shapes["blocks.0.mlp_y.w2.weight"][1] if "blocks.0.mlp_y.w2.weight" in shapes else None
        cfg = cls(
            depth=depth,
            num_heads=heads,
            hidden_size_x=hidden_x,
            hidden_size_y=yp[0],
            patch_size=patch,
            in_channels=in_ch,
            t5_feat_dim=yp[1],
            frequency_embedding_size=te[1],
            mlp_hidden_x_override=mlp_x,
            mlp_hidden_y_override=mlp_y,
        )
        # drop overrides that equal the official rule, so a tiny or full model compares equal to its preset
        if mlp_x == swiglu_hidden(cfg.hidden_size_x, cfg.mlp_ratio_x):
            cfg = replace(cfg, mlp_hidden_x_override=None)
        if mlp_y is None or mlp_y == swiglu_hidden(cfg.hidden_size_y, cfg.mlp_ratio_y):
            cfg = replace(cfg, mlp_hidden_y_override=None)
        return cfg.validate()

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every official state_dict key of this configuration with its shape, in registration order."""
        dx, dy, hd, t5 = self.hidden_size_x, self.hidden_size_y, self.head_dim, self.t5_feat_dim
        s: dict[str, tuple[int, ...]] = {
            "pos_frequencies": (3, self.num_heads, hd // 2),
            "x_embedder.proj.weight": (dx, self.in_channels, self.patch_size, self.patch_size),
            "x_embedder.proj.bias": (dx,),
            "t_embedder.mlp.0.weight": (dx, self.frequency_embedding_size),
            "t_embedder.mlp.0.bias": (dx,),
            "t_embedder.mlp.2.weight": (dx, dx),
            "t_embedder.mlp.2.bias": (dx,),
            "t5_y_embedder.to_kv.weight": (2 * t5, t5),
            "t5_y_embedder.to_kv.bias": (2 * t5,),
            "t5_y_embedder.to_q.weight": (t5, t5),
            "t5_y_embedder.to_q.bias": (t5,),
            "t5_y_embedder.to_out.weight": (dx, t5),
            "t5_y_embedder.to_out.bias": (dx,),
            "t5_yproj.weight": (dy, t5),
            "t5_yproj.bias": (dy,),
        }
        for i in range(self.depth):
            last = i == self.depth - 1
            p = f"blocks.{i}."
            s[p + "mod_x.weight"] = (4 * dx, dx)
            s[p + "mod_x.bias"] = (4 * dx,)
            s[p + "mod_y.weight"] = (dy if last else 4 * dy, dx)
            s[p + "mod_y.bias"] = (dy if last else 4 * dy,)
            s[p + "attn.qkv_x.weight"] = (3 * dx, dx)
            s[p + "attn.qkv_y.weight"] = (3 * dx, dy)
            for n in ("q_norm_x", "k_norm_x", "q_norm_y", "k_norm_y"):
                s[p + f"attn.{n}.weight"] = (hd,)
            s[p + "attn.proj_x.weight"] = (dx, dx)
            s[p + "attn.proj_x.bias"] = (dx,)
            if not last:
                s[p + "attn.proj_y.weight"] = (dy, dx)
                s[p + "attn.proj_y.bias"] = (dy,)
            s[p + "mlp_x.w1.weight"] = (2 * self.mlp_hidden_x, dx)
            s[p + "mlp_x.w2.weight"] = (dx, self.mlp_hidden_x)
            if not last:
                s[p + "mlp_y.w1.weight"] = (2 * self.mlp_hidden_y, dy)
                s[p + "mlp_y.w2.weight"] = (dy, self.mlp_hidden_y)
        s["final_layer.mod.weight"] = (2 * dx, dx)
        s["final_layer.mod.bias"] = (2 * dx,)
        s["final_layer.linear.weight"] = (self.patch_out, dx)
        s["final_layer.linear.bias"] = (self.patch_out,)
        return s

    def num_parameters(self) -> int:
        return sum(math.prod(v) for v in self.expected_shapes().values())
