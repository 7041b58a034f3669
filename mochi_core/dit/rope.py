"""Mixed 3D rotary position embedding with learned per-head frequencies (visual q/k only).

Semantics of genmoai/mochi ``src/genmo/mochi_preview/dit/joint_model/rope_mixed.py`` (positions: integer frames,
spatial bin centres scaled to a 192² target area; angles = pos · pos_frequencies in float32) and
``temporal_rope.py`` (interleaved "Llama real" pairs 2f, 2f+1); docs/numerics.md §2.3 "Mixed 3D RoPE".
The angles are computed once per forward as a complex tensor and shared by every block.
"""

from __future__ import annotations

import torch

__all__ = ["rope_positions", "rope_frequencies", "apply_rope"]

TARGET_AREA = 36864.0  # 192 ** 2


def rope_positions(t: int, ph: int, pw: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T·pH·pW, 3) float32 positions (t, h, w) in token order (T slowest, then rows, then columns).

    t = frame index; h = (i + 0.5 - pH/2)·s, w = (j + 0.5 - pW/2)·s with s = sqrt(36864 / (pH·pW)).
    """
    s = (TARGET_AREA / (ph * pw)) ** 0.5
    pos_t = torch.arange(t, dtype=torch.float32, device=device)
    pos_h = (torch.arange(ph, dtype=torch.float32, device=device) + 0.5 - ph / 2) * s
    pos_w = (torch.arange(pw, dtype=torch.float32, device=device) + 0.5 - pw / 2) * s
    grid = torch.meshgrid(pos_t, pos_h, pos_w, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def rope_frequencies(pos_frequencies: torch.Tensor, t: int, ph: int, pw: int) -> torch.Tensor:
    """pos_frequencies (3, H, F) -> complex64 rotations (N, H, F) = exp(i · Σ_axis pos[n, axis] · F[axis, h, f])."""
    freqs = pos_frequencies.to(torch.float32)
    pos = rope_positions(t, ph, pw, device=freqs.device)
    # elementwise products summed over the 3 axes, in float32: no matmul kernel, so no TF32 / reduced precision
    # whatever torch.backends.cuda.matmul.allow_tf32 says (an einsum would dispatch to a matmul)
    angles = pos[:, 0, None, None] * freqs[0]  # (N, H, F)
    for axis in range(1, pos.shape[1]):
        angles.addcmul_(pos[:, axis, None, None], freqs[axis])
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x: (B, N, H, D) float32, rot: (N, H, D/2) complex64 -> (B, N, H, D) float32.

    Pairs (2f, 2f+1) = (a, b) become (a cos - b sin, a sin + b cos).
    """
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot).flatten(-2)
