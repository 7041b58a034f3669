"""Open weight files safely and lazily.

- Only safetensors are read; pickle-based files (``.ckpt``, ``.pt``, ``.pth``, ``.bin``, zip or pickle
  magic) are refused and never unpickled.
- The header is validated before any tensor is touched: a truncated file (data shorter than the header
  says) is refused with the byte counts.
- Tensors are memory-mapped (``safetensors.safe_open``) and fetched one at a time, so a loader can cast
  each to its storage dtype without holding two full copies.
- A folder (diffusers style) is read as the union of its ``*.safetensors`` shards, optionally through a
  ``*.safetensors.index.json``; a ``.safetensors.index.json`` path works too.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UnsupportedCheckpointError

__all__ = ["TensorInfo", "Checkpoint", "open_checkpoint"]

_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor (no data read)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Checkpoint:
    """A set of tensors from one file or a folder of shards, read lazily.

    Use as a context manager, or call :meth:`close`. ``infos`` maps every key to its :class:`TensorInfo`.
    """

    path: Path
    infos: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, key: object) -> bool:
        return key in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` as stored (memory-mapped CPU tensor; do not write to it)."""
        info = self.infos[key]
        handle = self._handles.get(info.file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = self._stack.enter_context(safe_open(str(info.file), framework="pt", device="cpu"))
            except Exception as exc:  # safetensors raises its own error types
                raise UnsupportedCheckpointError(f"{info.file}: cannot be read as safetensors ({exc})") from exc
            self._handles[info.file] = handle
        return handle.get_tensor(key)  # type: ignore[attr-defined]

    def items(self, keys: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for k in keys if keys is not None else self.infos:
            yield k, self.get(k)

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def close(self) -> None:
        self._handles.clear()
        self._stack.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise UnsupportedCheckpointError(
            f"{path.name}: pickle-based checkpoints ({path.suffix}) are refused and never unpickled; "
            "convert it to .safetensors (all published Mochi weights exist as safetensors)"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON object (its length may start with 0x80)
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise UnsupportedCheckpointError(
            f"{path.name}: this file is a pickle/zip archive (torch.save format), not safetensors; it is never unpickled"
        )


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; refuse truncated or malformed files."""
    size = path.stat().st_size
    if size < 8:
        raise UnsupportedCheckpointError(f"{path.name}: {size} bytes is too small to be a safetensors file")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen <= 0 or hlen > _MAX_HEADER or 8 + hlen > size:
            raise UnsupportedCheckpointError(
                f"{path.name}: not a valid safetensors file (header length {hlen} for a file of {size} bytes; "
                "truncated download or another format)"
            )
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnsupportedCheckpointError(f"{path.name}: safetensors header is not valid JSON ({exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        dt = _ST_DTYPES.get(entry.get("dtype"))
        if dt is None:
            raise UnsupportedCheckpointError(
                f"{path.name}: tensor {key!r} has unsupported dtype {entry.get('dtype')!r}"
            )
        infos[key] = TensorInfo(dt, tuple(int(s) for s in entry["shape"]), path)
        end = max(end, int(entry["data_offsets"][1]))
    have = size - 8 - hlen
    if have < end:
        raise UnsupportedCheckpointError(
            f"{path.name}: file is truncated: the header describes {end} data bytes but only {have} are present "
            "(incomplete download?)"
        )
    return infos, {str(k): str(v) for k, v in meta.items()}


def _shards(folder: Path) -> list[Path]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        data = json.loads(index[0].read_text())
        names = sorted(set(data.get("weight_map", {}).values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a safetensors file, a shard index, or a folder of shards (lazily; nothing is loaded)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UnsupportedCheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        files = _shards(p)
        if not files:
            pickles = [f.name for f in p.iterdir() if f.suffix.lower() in _PICKLE_SUFFIXES]
            hint = f" (found pickle files {pickles}, which are refused)" if pickles else ""
            raise UnsupportedCheckpointError(f"{p}: folder holds no .safetensors files{hint}")
    elif p.name.endswith(".index.json"):
        files = [p.parent / n for n in sorted(set(json.loads(p.read_text()).get("weight_map", {}).values()))]
    else:
        files = [p]
    infos: dict[str, TensorInfo] = {}
    meta: dict[str, str] = {}
    for f in files:
        if not f.exists():
            raise UnsupportedCheckpointError(f"{p}: shard {f.name} is missing")
        _refuse_pickle(f)
        part, m = read_header(f)
        infos.update(part)
        meta.update(m)
    return Checkpoint(path=p, infos=infos, metadata=meta)
