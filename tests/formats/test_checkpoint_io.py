"""``open_checkpoint`` reads exactly one checkpoint: malformed headers, unrelated files in one folder, incomplete
shard sets and a tensor name found in two files are refused with a message naming the file (never a KeyError)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mochi_core.errors import UnsupportedCheckpointError
from mochi_core.formats.io import open_checkpoint


def _raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    """A file with a hand-written header (any JSON value) followed by ``data``."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _shard(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / name))


# ------------------------------------------------------------------ malformed headers


GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"shape": [2], "data_offsets": [0, 8]}, r"tensor 'w' has no dtype"),
        ({"dtype": "F32", "data_offsets": [0, 8]}, r"tensor 'w' has no shape"),
        ({"dtype": "F32", "shape": [2]}, r"tensor 'w' has no data_offsets"),
        ({"dtype": "F32"}, r"tensor 'w' has no shape, data_offsets"),
        ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, r"tensor 'w' has unsupported dtype 'Q7'"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, r"shape '2', not a list"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, r"shape \[-2\], not a list of non-negative"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8]}, r"data_offsets \[8\], not \[begin, end\]"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, r"data_offsets \[8, 0\]"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"spans 8 bytes, but shape \[3\] of F32 needs 12"),
        ([1, 2, 3], r"tensor 'w' is described by list"),
    ],
)
def test_malformed_header_entry_refused(tmp_path: Path, entry: object, match: str) -> None:
    path = _raw_safetensors(tmp_path / "bad.safetensors", {"w": entry}, bytes(16))
    with pytest.raises(UnsupportedCheckpointError, match=r"bad\.safetensors: .*" + match):
        open_checkpoint(path)


def test_header_that_is_not_json_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + bytes(8))
    with pytest.raises(UnsupportedCheckpointError, match=r"junk\.safetensors: safetensors header is not valid JSON"):
        open_checkpoint(path)


@pytest.mark.parametrize(("header", "match"), [([GOOD_ENTRY], "a JSON list"), ({"__metadata__": [1]}, "__metadata__")])
def test_header_of_the_wrong_shape_refused(tmp_path: Path, header: object, match: str) -> None:
    path = _raw_safetensors(tmp_path / "odd.safetensors", header, bytes(8))
    with pytest.raises(UnsupportedCheckpointError, match=r"odd\.safetensors: malformed safetensors header.*" + match):
        open_checkpoint(path)


def test_hand_written_valid_header_reads(tmp_path: Path) -> None:
    """The validation accepts what the format allows (the refusals above are not over-strict)."""
    data = struct.pack("<2f", 1.5, -2.0)
    path = _raw_safetensors(tmp_path / "ok.safetensors", {"__metadata__": {"a": "b"}, "w": GOOD_ENTRY}, data)
    with open_checkpoint(path) as ckpt:
        assert ckpt.metadata == {"a": "b"}
        assert ckpt.get("w").tolist() == [1.5, -2.0]


# ------------------------------------------------------------------ folders


def test_folder_of_unrelated_files_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "dit.safetensors", {"a": torch.zeros(2)})
    _shard(tmp_path, "vae.safetensors", {"b": torch.zeros(2)})
    with pytest.raises(
        UnsupportedCheckpointError,
        match=r"holds 2 \.safetensors files \(dit\.safetensors, vae\.safetensors\) and no \*\.safetensors\.index\.json"
        r".*not merged",
    ):
        open_checkpoint(tmp_path)


def test_shards_mixed_with_another_file_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00002.safetensors", {"a": torch.zeros(2)})
    _shard(tmp_path, "model-00002-of-00002.safetensors", {"b": torch.zeros(2)})
    _shard(tmp_path, "extra.safetensors", {"c": torch.zeros(2)})
    with pytest.raises(UnsupportedCheckpointError, match=r"not one set of shards named <name>-0000k-of-0000n"):
        open_checkpoint(tmp_path)


def test_two_shard_sets_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00001.safetensors", {"a": torch.zeros(2)})
    _shard(tmp_path, "other-00001-of-00001.safetensors", {"b": torch.zeros(2)})
    with pytest.raises(UnsupportedCheckpointError, match=r"not one set of shards"):
        open_checkpoint(tmp_path)


def test_shards_with_different_totals_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00002.safetensors", {"a": torch.zeros(2)})
    _shard(tmp_path, "model-00002-of-00003.safetensors", {"b": torch.zeros(2)})
    with pytest.raises(UnsupportedCheckpointError, match=r"not one set of shards"):
        open_checkpoint(tmp_path)


def test_incomplete_shard_set_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00003.safetensors", {"a": torch.zeros(2)})
    _shard(tmp_path, "model-00003-of-00003.safetensors", {"c": torch.zeros(2)})
    with pytest.raises(UnsupportedCheckpointError, match=r"incomplete shard set model-\*-of-00003.*missing.*00002"):
        open_checkpoint(tmp_path)


def test_complete_shard_set_without_index_reads(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00002.safetensors", {"a": torch.ones(2)})
    _shard(tmp_path, "model-00002-of-00002.safetensors", {"b": torch.full((3,), 2.0)})
    with open_checkpoint(tmp_path) as ckpt:
        assert sorted(ckpt.keys()) == ["a", "b"]
        assert ckpt.get("b").tolist() == [2.0, 2.0, 2.0]


def test_single_file_folder_reads(tmp_path: Path) -> None:
    _shard(tmp_path, "diffusion_pytorch_model.safetensors", {"a": torch.ones(2)})
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.keys() == ["a"]


def test_duplicate_key_across_shards_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "model-00001-of-00002.safetensors", {"a": torch.ones(2), "w": torch.ones(2)})
    _shard(tmp_path, "model-00002-of-00002.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(
        UnsupportedCheckpointError,
        match=r"tensor 'w' is in both model-00001-of-00002\.safetensors and model-00002-of-00002\.safetensors",
    ):
        open_checkpoint(tmp_path)


def _index(folder: Path, weight_map: object, name: str = "model.safetensors.index.json") -> Path:
    path = folder / name
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_duplicate_key_with_index_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "a.safetensors", {"x": torch.ones(2), "w": torch.ones(2)})
    _shard(tmp_path, "b.safetensors", {"w": torch.zeros(2)})
    _index(tmp_path, {"x": "a.safetensors", "w": "b.safetensors"})
    with pytest.raises(UnsupportedCheckpointError, match=r"tensor 'w' is in both a\.safetensors and b\.safetensors"):
        open_checkpoint(tmp_path)


def test_index_that_does_not_match_its_shards_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "a.safetensors", {"x": torch.ones(2)})
    _index(tmp_path, {"x": "a.safetensors", "y": "a.safetensors"})
    with pytest.raises(UnsupportedCheckpointError, match=r"'y' is listed in a\.safetensors but is in no shard"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("weight_map", "match"),
    [
        ({}, "no 'weight_map'"),
        ([1], "no 'weight_map'"),
        ({"x": "../elsewhere/a.safetensors"}, r"maps 'x' to '\.\./elsewhere/a\.safetensors'"),
        ({"x": "a.bin"}, r"maps 'x' to 'a\.bin'"),
    ],
)
def test_bad_index_refused(tmp_path: Path, weight_map: object, match: str) -> None:
    _shard(tmp_path, "a.safetensors", {"x": torch.ones(2)})
    index = _index(tmp_path, weight_map)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        open_checkpoint(tmp_path)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        open_checkpoint(index)


def test_index_that_is_not_json_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "a.safetensors", {"x": torch.ones(2)})
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(
        UnsupportedCheckpointError, match=r"model\.safetensors\.index\.json: shard index cannot be read"
    ):
        open_checkpoint(tmp_path)


def test_two_indexes_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "a.safetensors", {"x": torch.ones(2)})
    _index(tmp_path, {"x": "a.safetensors"}, "one.safetensors.index.json")
    _index(tmp_path, {"x": "a.safetensors"}, "two.safetensors.index.json")
    with pytest.raises(UnsupportedCheckpointError, match=r"several shard indexes.*pass the path of the index"):
        open_checkpoint(tmp_path)
