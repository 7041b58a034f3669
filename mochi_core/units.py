"""Byte sizes in and out: one convention for every message of the pack.

``GB`` means 10⁹ bytes and ``GiB`` 2³⁰ (likewise KB/KiB, MB/MiB, TB/TiB). :func:`parse_bytes` accepts both
families (and the single letters K, M, G as the binary units, as ``free -g`` and PyTorch print them);
:func:`format_bytes` always writes both, so a figure can be compared with ``nvidia-smi`` (MiB) or a file size (GB).
"""

from __future__ import annotations

import math
import re

from .errors import InvalidInputError
from .scalars import as_real

__all__ = ["GB", "GiB", "MB", "MiB", "parse_bytes", "format_bytes"]

GB = 10**9
GiB = 2**30
MB = 10**6
MiB = 2**20

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": MB,
    "gb": GB,
    "tb": 10**12,
    "kib": 2**10,
    "mib": MiB,
    "gib": GiB,
    "tib": 2**40,
    "k": 2**10,
    "m": MiB,
    "g": GiB,
}
_HINT = "use a number with a unit: B, KB, MB, GB, TB (powers of 10) or KiB, MiB, GiB, TiB (powers of 2)"


def parse_bytes(value: str | int | float, *, what: str = "budget", allow_zero: bool = False) -> int:
    """``"20GB"`` -> 20·10⁹, ``"12GiB"`` / ``"12G"`` -> 12·2³⁰, ``"500MB"``, ``"1.5GB"``, ``"123B"`` / 123 -> bytes.

    A string needs its unit (``"12"`` is refused: a user typing ``--budget 12`` means gigabytes, not 12 bytes);
    ``"0"`` is allowed where zero is. Numbers (int, numpy, one-element tensors) are byte counts.

    ``what`` names the argument in error messages; ``allow_zero`` accepts 0 (a reserve, not a budget).
    Raises :class:`~mochi_core.errors.InvalidInputError` for anything else (negative, NaN, bool, unknown unit).
    """
    least = "0 or more" if allow_zero else "positive"
    number, problem = _size(value)
    if problem is None and not (number > 0 or (number == 0 and allow_zero)):  # NaN fails both
        problem = f"must be a {least} number of bytes"
    if problem is not None:
        raise InvalidInputError(f"{what}={value!r} {problem}")
    return int(number)


def _size(value: object) -> tuple[float, str | None]:
    """(bytes, None), or (nan, what is wrong with ``value`` as a size)."""
    if not isinstance(value, str):
        try:  # numbers of any kind: int, float, numpy scalars, one-element tensors
            return as_real("size", value), None
        except InvalidInputError:
            nan = isinstance(value, float) and math.isnan(value)  # refused by the caller's range rule
            return math.nan, None if nan else f"is not a size; {_HINT}, e.g. 20GB or 12GiB"
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        return math.nan, f"is not a size; {_HINT}, e.g. 20GB or 12GiB"
    n = m.group(1)
    if unit == "" and float(n) != 0:  # "12" meant as GB would silently become 12 bytes
        return math.nan, f"has no unit: write {n}GB ({n}·10^9 bytes), {n}GiB ({n}·2^30 bytes) or {n}B (bytes)"
    return float(n) * _UNITS[unit], None


def format_bytes(n: int | float) -> str:
    """Bytes as GB (powers of 10) with two decimals, plus GiB: ``'12.34 GB (11.49 GiB)'``."""
    return f"{n / GB:.2f} GB ({n / GiB:.2f} GiB)"
