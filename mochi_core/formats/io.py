"""Open weight files safely and lazily.

- Safetensors are read here, ``.gguf`` containers by :mod:`mochi_core.formats.gguf` (same interface); pickle-based files (``.ckpt``, ``.pt``, ``.pth``, ``.bin``, zip or pickle
  magic) are refused and never unpickled.
- The header is validated before any tensor is touched: a truncated file (data shorter than the header
  says) is refused with the byte counts.
- Tensors are memory-mapped (``safetensors.safe_open``) and fetched one at a time, so a loader can cast
  each to its storage dtype without holding two full copies.
- A malformed header (bad JSON, an entry without ``dtype`` / ``shape`` / ``data_offsets``, offsets that do not
  match the shape) is refused naming the file and the tensor.
- A folder is read through its ``*.safetensors.index.json`` (a ``.safetensors.index.json`` path works too), or,
  without an index, as its single ``.safetensors`` file or a complete set of Hugging Face shards
  ``<name>-0000k-of-0000n.safetensors`` (k = 1..n, one name, one n). Anything else (unrelated files side by side,
  a shard missing) is refused rather than merged. A tensor name found in two files is refused too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from .. import quants
from ..errors import UnsupportedCheckpointError

__all__ = ["TensorInfo", "Checkpoint", "open_checkpoint", "read_header"]

logger = logging.getLogger(__name__)

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
#: Hugging Face shard names: ``model-00001-of-00003.safetensors``.
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.safetensors$")


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor (no data read). ``quant``: a GGUF block format of
    :data:`mochi_core.quants.QUANT_TYPES` (then ``dtype`` is uint8 and ``shape`` the logical shape), else None."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    quant: str | None = None

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        if self.quant is not None:
            return quants.QUANT_TYPES[self.quant].nbytes(n)
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
            except (SafetensorError, OSError) as exc:
                raise UnsupportedCheckpointError(f"{info.file}: cannot be read as safetensors ({exc})") from exc
            self._handles[info.file] = handle
        try:
            return handle.get_tensor(key)  # type: ignore[attr-defined]
        except SafetensorError as exc:
            raise UnsupportedCheckpointError(f"{info.file}: tensor {key!r} cannot be read ({exc})") from exc

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


def _entry(path: Path, key: str, entry: object) -> tuple[TensorInfo, int, int]:
    """Validate one header entry; returns its info and its data byte range [begin, end)."""

    def bad(what: str) -> UnsupportedCheckpointError:
        return UnsupportedCheckpointError(
            f"{path.name}: malformed safetensors header: tensor {key!r} {what} (corrupt or not a safetensors file)"
        )

    if not isinstance(entry, dict):
        raise bad(f"is described by {type(entry).__name__}, not an object with dtype, shape and data_offsets")
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
    if missing:
        raise bad(f"has no {', '.join(missing)}")
    name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    dt = _ST_DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise UnsupportedCheckpointError(
            f"{path.name}: tensor {key!r} has unsupported dtype {name!r}; supported: {', '.join(_ST_DTYPES)}"
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}, not a list of non-negative integers")
    if (
        not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets))
        or offsets[0] > offsets[1]
    ):
        raise bad(f"has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    info = TensorInfo(dt, tuple(shape), path)
    if offsets[1] - offsets[0] != info.nbytes:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes, but shape {shape} of {name} needs {info.nbytes}")
    return info, offsets[0], offsets[1]


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; refuse truncated or malformed files, naming the file."""
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
    if not isinstance(header, dict):
        raise UnsupportedCheckpointError(
            f"{path.name}: malformed safetensors header: a JSON {type(header).__name__}, not an object of tensors"
        )
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise UnsupportedCheckpointError(f"{path.name}: malformed safetensors header: __metadata__ is not an object")
    infos: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        infos[key], _, stop = _entry(path, key, entry)
        end = max(end, stop)
    have = size - 8 - hlen
    if have < end:
        raise UnsupportedCheckpointError(
            f"{path.name}: file is truncated: the header describes {end} data bytes but only {have} are present "
            "(incomplete download?)"
        )
    return infos, {str(k): str(v) for k, v in meta.items()}


def _read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name in the same folder) of a ``*.safetensors.index.json``."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedCheckpointError(f"{index}: shard index cannot be read as JSON ({exc})") from exc
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise UnsupportedCheckpointError(f"{index}: shard index has no 'weight_map' of tensor names to shard files")
    for key, name in wmap.items():
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise UnsupportedCheckpointError(
                f"{index}: weight_map maps {key!r} to {name!r}; expected a .safetensors file name in the same folder"
            )
    return {str(k): v for k, v in wmap.items()}


def _shard_set(folder: Path, files: list[Path]) -> list[Path]:
    """Accept several files without an index only as one complete ``<name>-0000k-of-0000n.safetensors`` set."""
    listing = ", ".join(f.name for f in files[:6]) + (", ..." if len(files) > 6 else "")
    matches = [_SHARD_RE.match(f.name) for f in files]
    groups = {(m.group("stem"), int(m.group("n"))) for m in matches if m}
    if not all(matches) or len(groups) != 1:
        raise UnsupportedCheckpointError(
            f"{folder}: folder holds {len(files)} .safetensors files ({listing}) and no *.safetensors.index.json; "
            "they are not one set of shards named <name>-0000k-of-0000n.safetensors, so they are not merged. "
            "Pass the path of the one file to load, or add the shard index."
        )
    ((stem, n),) = groups
    present = {int(m.group("k")) for m in matches if m}
    missing = sorted(set(range(1, n + 1)) - present)
    if missing or present - set(range(1, n + 1)):
        raise UnsupportedCheckpointError(
            f"{folder}: incomplete shard set {stem}-*-of-{n:05d}.safetensors: missing shard(s) "
            f"{', '.join(f'{k:05d}' for k in missing) or 'none'}, found {', '.join(f'{k:05d}' for k in sorted(present))}"
        )
    logger.info("%s: no shard index; reading the complete shard set %s-*-of-%05d.safetensors", folder, stem, n)
    return files


def _folder_files(folder: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """Files of a folder checkpoint, with the index's weight map and path when there is one."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise UnsupportedCheckpointError(
            f"{folder}: folder holds several shard indexes ({', '.join(i.name for i in indexes)}); "
            "pass the path of the index to load"
        )
    if indexes:
        wmap = _read_index(indexes[0])
        return [folder / n for n in sorted(set(wmap.values()))], wmap, indexes[0]
    files = sorted(folder.glob("*.safetensors"))
    if len(files) > 1:
        files = _shard_set(folder, files)
    return files, None, None


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a safetensors file, a shard index, or a folder of shards (lazily; nothing is loaded).

    Refuses (``UnsupportedCheckpointError``) pickles, truncated or malformed files, a folder of unrelated files
    without an index, missing shards, and a tensor name present in two files.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UnsupportedCheckpointError(f"checkpoint not found: {p}")
    if p.is_file():
        from .gguf import is_gguf, open_gguf  # the GGUF module builds on this one

        if p.suffix.lower() == ".gguf" or is_gguf(p):
            return open_gguf(p)
    wmap: dict[str, str] | None = None
    index: Path | None = None
    if p.is_dir():
        files, wmap, index = _folder_files(p)
        if not files:
            pickles = [f.name for f in p.iterdir() if f.suffix.lower() in _PICKLE_SUFFIXES]
            hint = f" (found pickle files {pickles}, which are refused)" if pickles else ""
            raise UnsupportedCheckpointError(f"{p}: folder holds no .safetensors files{hint}")
    elif p.name.endswith(".index.json"):
        wmap, index = _read_index(p), p
        files = [p.parent / n for n in sorted(set(wmap.values()))]
    else:
        files = [p]
    infos: dict[str, TensorInfo] = {}
    meta: dict[str, str] = {}
    for f in files:
        if not f.exists():
            raise UnsupportedCheckpointError(f"{p}: shard {f.name} is missing")
        _refuse_pickle(f)
        part, m = read_header(f)
        for key in part:
            if key in infos:
                raise UnsupportedCheckpointError(
                    f"{p}: tensor {key!r} is in both {infos[key].file.name} and {f.name}; "
                    "the files are not shards of one checkpoint"
                )
        infos.update(part)
        meta.update(m)
    if wmap is not None:
        lost = [k for k, name in wmap.items() if k not in infos or infos[k].file.name != name]
        if lost:
            k = lost[0]
            where = f"is in {infos[k].file.name}" if k in infos else "is in no shard"
            raise UnsupportedCheckpointError(
                f"{index}: {len(lost)} tensor(s) of the index are not where it says (e.g. {k!r} is listed in "
                f"{wmap[k]} but {where}); index and shards do not belong together"
            )
    ckpt = Checkpoint(path=p, infos=infos, metadata=meta)
    if len(files) > 1:
        logger.debug("%s: %d tensors from %d files, %.0f MB", p, len(infos), len(files), ckpt.total_bytes() / 1e6)
    return ckpt
