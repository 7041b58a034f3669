"""TeaCache for the Mochi DiT: skip the transformer on steps whose input barely changed.

The rule (TeaCache's published method for Mochi, reproduced against a run of the reference code in
``tests/golden/test_teacache_golden.py``; the facts are in ``docs/speed.md``):

- the watched tensor is block 0's modulated input m = rms(x_embedder(z)) · (1 + scale_msa_x) (B, N, Dx);
- at every step but the first and the last, rel = mean|m − m_prev| / mean|m_prev| (over every element of every
  stream that runs this step), rescaled by the polynomial :data:`COEFFICIENTS` (highest power first) and added to
  an accumulator; while the accumulator stays below the threshold the step is skipped, otherwise the step
  computes and the accumulator goes back to 0. m_prev is updated at every step, computed or skipped;
- a skipped step returns ``final_layer.linear(x_embedder(z) + r)`` with r the residual of the stream's last
  computed call (``mochi_core.dit.model.StreamCache``);
- ``max_skip_steps`` (> 0) forces a computed step after that many skips in a row (0 = no limit, the reference).

Cond and uncond make ONE decision per step (the reference runs them as one batch): with ``batch_cfg`` the batch
is one stream; with two calls the decision is taken once from both modulated inputs before the cond call and the
uncond call follows it. The perturbed pass of STG is a third stream that follows the same decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .scalars import as_int_in, as_real

__all__ = ["COEFFICIENTS", "TeaCacheState", "check_teacache", "rescale"]

logger = logging.getLogger(__name__)

#: tokens per chunk of the relative-change sums (bounds their float32 temporaries)
_SUM_CHUNK = 8192

#: rescaling polynomial of the relative L1 change for Mochi, highest power first
COEFFICIENTS = (-3.51241319e3, 8.11675948e2, -6.09400215e1, 2.42429681, 3.05291719e-3)


def rescale(rel: float) -> float:
    """The polynomial :data:`COEFFICIENTS` at ``rel`` (Horner's rule in float64, as ``numpy.poly1d`` does)."""
    y = 0.0
    for c in COEFFICIENTS:
        y = y * rel + c
    return y


def check_teacache(threshold: object, max_skip_steps: object) -> tuple[float, int]:
    """``teacache_threshold`` a finite number >= 0 (0 = off) and ``max_skip_steps`` an integer >= 0 (0 = no
    limit); returned as (float, int). Raises :class:`InvalidInputError` naming the argument."""
    t = as_real("teacache_threshold", threshold, low=0.0, what="a finite number >= 0 (0 = off; 0.06 or 0.09 typical)")
    m = as_int_in("max_skip_steps", max_skip_steps, low=0, what="an integer >= 0 (0 = no limit)")
    return t, m


@dataclass
class TeaCacheState:
    """One sampling run's TeaCache decisions (``threshold`` > 0; ``total`` = steps that run).

    Per step: :meth:`decide` with the modulated inputs of the streams that run, then the streams' calls follow
    ``compute``. ``flags`` records True (computed) / False (skipped) per step; ``rel_l1``, ``rescaled`` and
    ``accumulated`` the values of the rule (None at forced steps).
    """

    threshold: float
    total: int
    max_skip_steps: int = 0
    accumulated: float = 0.0
    skips_in_row: int = 0
    previous: dict[str, torch.Tensor] = field(default_factory=dict)
    computed_at: dict[str, int] = field(default_factory=dict)
    flags: list[bool] = field(default_factory=list)
    rel_l1: list[float | None] = field(default_factory=list)
    rescaled: list[float | None] = field(default_factory=list)
    accumulated_log: list[float | None] = field(default_factory=list)

    def decide(self, step: int, modulated: dict[str, torch.Tensor], followers: tuple[str, ...] = ()) -> bool:
        """True = compute step ``step`` (0-based among the steps that run), False = reuse the residuals.

        ``modulated``: stream name -> block 0's modulated input (B, N, Dx) of the streams that run this step.
        ``followers``: streams that follow the decision without being watched (STG's perturbed pass). A skip needs
        every stream to have an input from the previous step and every stream and follower a residual from the
        last computed step; otherwise the step computes.
        """
        rel = None
        forced = step == 0 or step == self.total - 1
        last = self._last_computed()
        usable = all(s in self.previous for s in modulated) and all(
            self.computed_at.get(s, -2) == last for s in (*modulated, *followers)
        )
        if not forced and usable:
            num = 0.0
            den = 0.0
            count = 0
            for name, m in modulated.items():
                prev = self.previous[name]
                for s in range(0, m.shape[1], _SUM_CHUNK):  # float32 temporaries of one chunk of tokens at a time
                    m32 = m[:, s : s + _SUM_CHUNK].to(torch.float32)
                    p32 = prev[:, s : s + _SUM_CHUNK].to(torch.float32)
                    num += float((m32 - p32).abs_().sum(dtype=torch.float64))
                    den += float(p32.abs().sum(dtype=torch.float64))
                count += m.numel()
            rel = (num / count) / (den / count) if den > 0 else float("inf")
        self.previous = {name: m for name, m in modulated.items()}
        if rel is None:
            compute = True
            self.rel_l1.append(None)
            self.rescaled.append(None)
            self.accumulated_log.append(None)
        else:
            r = rescale(rel)
            self.accumulated += r
            self.rel_l1.append(rel)
            self.rescaled.append(r)
            self.accumulated_log.append(self.accumulated)
            compute = not self.accumulated < self.threshold
            if not compute and self.max_skip_steps and self.skips_in_row >= self.max_skip_steps:
                compute = True
        if compute:
            self.accumulated = 0.0
            self.skips_in_row = 0
            for name in (*modulated, *followers):
                self.computed_at[name] = step
        else:
            self.skips_in_row += 1
        self.flags.append(compute)
        return compute

    def _last_computed(self) -> int:
        for i in range(len(self.flags) - 1, -1, -1):
            if self.flags[i]:
                return i
        return -1

    @property
    def pattern(self) -> str:
        """'C' computed / 's' skipped per step, e.g. 'CsCsCCC'."""
        return "".join("C" if f else "s" for f in self.flags)
