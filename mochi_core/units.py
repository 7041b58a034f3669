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
    if not isinstance(value, str):
        try:  # numbers of any kind: int, float, numpy scalars, one-element tensors
            number = as_real(what, value, what="a finite number")
        except InvalidInputError:
            if isinstance(value, float) and math.isnan(value):
                raise InvalidInputError(f"{what}={value!r} must be a {least} number of bytes") from None
            raise InvalidInputError(
                f"{what}={value!r} is not a size; {_HINT}, e.g. 20GB, 12GiB or a byte count"
            ) from None
        if number < 0 or (number == 0 and not allow_zero):
            raise InvalidInputError(f"{what}={value!r} must be a {least} number of bytes")
        return int(number)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise InvalidInputError(f"{what}={value!r} is not a size; {_HINT}, e.g. 20GB or 12GiB")
    if unit == "" and float(m.group(1)) != 0:  # "12" meant as GB would silently become 12 bytes
        n = m.group(1)
        raise InvalidInputError(
            f"{what}={value!r} has no unit: write {n}GB ({n}·10^9 bytes), {n}GiB ({n}·2^30 bytes) or {n}B (bytes)"
        )
    out = int(float(m.group(1)) * _UNITS[unit])
    if out < 0 or (out == 0 and not allow_zero):
        raise InvalidInputError(f"{what}={value!r} must be {least} bytes")
    return out


def format_bytes(n: int | float) -> str:
    """Bytes as GB (powers of 10) with two decimals, plus GiB: ``'12.34 GB (11.49 GiB)'``."""
    return f"{n / GB:.2f} GB ({n / GiB:.2f} GiB)"
