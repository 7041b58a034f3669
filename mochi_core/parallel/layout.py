"""How the ranks of a multi-process run share the DiT: CFG-parallel and sequence-parallel degrees.

Ranks are numbered ``rank = cfg_index * sp + sp_index``: the ranks of one sequence-parallel group are consecutive
(on one machine they are the local ranks that talk most: four all-to-alls per block), and the two CFG halves
exchange one prediction per step. With ``cfg_parallel`` the rank with ``cfg_index`` 0 runs the conditional pass
and the one with ``cfg_index`` 1 the unconditional pass; with ``sp`` > 1 each rank of a sequence group holds
``N / sp`` of the visual tokens and ``heads / sp`` of the attention heads during attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

__all__ = ["ParallelLayout", "token_splits"]


@dataclass(frozen=True)
class ParallelLayout:
    """``cfg_parallel``: cond and uncond on two groups of ranks; ``sp``: ranks per sequence-parallel group."""

    cfg_parallel: bool = False
    sp: int = 1

    def __post_init__(self) -> None:
        from ..options import ParallelOptions  # the one rule for these values (mochi_core.options)

        opts = ParallelOptions.resolve(cfg_parallel=self.cfg_parallel, sp=self.sp)
        object.__setattr__(self, "cfg_parallel", opts.cfg_parallel)
        object.__setattr__(self, "sp", opts.sp)

    @classmethod
    def from_options(cls, options: Any) -> ParallelLayout:
        """The layout of resolved :class:`~mochi_core.options.ParallelOptions`."""
        return cls(options.cfg_parallel, options.sp)

    @property
    def cfg(self) -> int:
        """Ranks per CFG split: 2 with ``cfg_parallel``, else 1."""
        return 2 if self.cfg_parallel else 1

    @property
    def ranks(self) -> int:
        """Processes this layout needs: cfg x sp."""
        return self.cfg * self.sp

    @property
    def model_parallel(self) -> bool:
        """True when one video is computed by several ranks."""
        return self.ranks > 1

    def describe(self) -> str:
        parts = (["2 CFG halves"] if self.cfg_parallel else []) + ([f"{self.sp}-way sequence"] if self.sp > 1 else [])
        return " x ".join(parts) if parts else "no model parallelism"

    def flags(self) -> str:
        """The command-line flags of this layout (for messages)."""
        return " ".join(
            (["--cfg-parallel"] if self.cfg_parallel else []) + ([f"--sp {self.sp}"] if self.sp > 1 else [])
        )

    def coords(self, rank: int) -> tuple[int, int]:
        """(cfg_index, sp_index) of ``rank`` (0 <= rank < ranks)."""
        return divmod(int(rank), self.sp)

    def check_heads(self, heads: int) -> None:
        """Sequence parallelism splits the attention heads: ``sp`` must divide ``heads``."""
        if heads % self.sp:
            divisors = [d for d in range(1, heads + 1) if heads % d == 0]
            raise InvalidInputError(
                f"sp={self.sp} does not divide the DiT's {heads} attention heads: sequence parallelism gives each "
                f"rank heads/sp heads; use sp in {divisors}"
            )

    def check_world(self, world: int) -> None:
        """A model-parallel layout needs exactly ``ranks`` processes."""
        if self.model_parallel and world != self.ranks:
            how = f"{self.cfg} CFG x {self.sp} sequence" if self.cfg_parallel and self.sp > 1 else self.describe()
            raise InvalidInputError(
                f"{self.flags()} needs {self.ranks} processes ({how}); this job has {world} "
                f"(WORLD_SIZE={world}): start it with torchrun --nproc-per-node {self.ranks} -m mochi_core generate ..."
            )


def token_splits(tokens: int, parts: int) -> list[int]:
    """Sizes of ``parts`` consecutive slices of ``tokens`` (the first ``tokens % parts`` one larger)."""
    base, extra = divmod(int(tokens), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]
