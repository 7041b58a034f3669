"""One exception family for everything `mochi_core` refuses or stops.

Every error a user can cause derives from :class:`MochiError`, so the node layer and the CLI
can show its message as is (no stack trace from deep inside torch) and keep serving.
"""

from __future__ import annotations

__all__ = [
    "MochiError",
    "InvalidInputError",
    "UnsupportedCheckpointError",
    "NonFiniteWeightError",
    "DoesNotFitError",
    "MochiInterrupted",
    "MissingBackendError",
    "OutputWriteError",
    "ParallelError",
]


class MochiError(Exception):
    """Base class of every error raised on purpose by `mochi_core`."""


class InvalidInputError(MochiError, ValueError):
    """A caller passed a value outside the allowed set; the message names the input and the allowed values."""


class UnsupportedCheckpointError(MochiError, ValueError):
    """A weight file is not one this loader can read (wrong component, unknown layout, truncated, pickle)."""


class NonFiniteWeightError(UnsupportedCheckpointError):
    """A weight file holds NaN or infinite values; the message names the file and the tensor."""


class DoesNotFitError(MochiError, RuntimeError):
    """A job cannot fit in the memory budget; the message names the smallest budget that would fit."""

    def __init__(self, message: str, *, min_budget_bytes: int | None = None) -> None:
        super().__init__(message)
        self.min_budget_bytes = min_budget_bytes


class MochiInterrupted(MochiError, RuntimeError):
    """Raised when a `should_stop()` callback asked a long loop (sampling steps, decode tiles) to stop."""


class MissingBackendError(MochiError, RuntimeError):
    """An optional backend (flash-attn, SageAttention, PyAV) was asked for but is not installed."""


class OutputWriteError(MochiError, OSError):
    """Writing a result file failed; the message says what was saved instead (e.g. PNG frames for a failed MP4)."""


class ParallelError(MochiError, RuntimeError):
    """A multi-process run could not go on: another rank failed or stopped responding (the message names it), or
    the process group could not be set up."""
