"""Frames and files: the official post-processing (clamp, truncation) and MP4 / PNG writing read back."""

from __future__ import annotations

import pytest
import torch

from mochi_core.errors import InvalidInputError
from mochi_core.video import decoded_to_frames, frames_to_uint8, write_mp4, write_png, write_png_frames

av = pytest.importorskip("av")


def test_decoded_to_frames_clamps_and_moves_channels() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 1, 6).expand(1, 3, 2, 1, 6)
    f = decoded_to_frames(x)
    assert f.shape == (1, 2, 1, 6, 3)
    assert f[0, 0, 0, :, 0].tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    assert decoded_to_frames(x[0]).shape == (2, 1, 6, 3)
    with pytest.raises(InvalidInputError):
        decoded_to_frames(torch.zeros(1, 4, 2, 2, 2))


def test_uint8_truncates_like_the_official_save() -> None:
    f = torch.tensor([0.0, 0.999, 1.0 / 255.0 - 1e-4, 0.5, 1.0])
    assert frames_to_uint8(f).tolist() == [0, 254, 0, 127, 255]


def test_mp4_round_trip(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(7, 32, 48, 3, generator=g)
    frames[:, :16] = 0.2  # a flat area survives the lossy codec closely
    path = write_mp4(tmp_path / "v.mp4", frames, fps=30)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == 30
        decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    assert len(decoded) == 7 and decoded[0].shape == (32, 48, 3)
    flat = torch.tensor(decoded[3][:12].astype("float32"))
    assert (flat - 0.2 * 255).abs().mean() < 3.0
    with pytest.raises(InvalidInputError, match="even"):
        write_mp4(tmp_path / "odd.mp4", torch.zeros(1, 31, 48, 3))


def test_png_frames_are_exact(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(3, 5, 7, 3, generator=g)
    paths = write_png_frames(tmp_path / "f", frames)
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    with av.open(str(paths[2])) as c:
        img = next(iter(c.decode(video=0))).to_ndarray(format="rgb24")
    assert torch.equal(torch.from_numpy(img), frames_to_uint8(frames[2]))
    write_png(tmp_path / "one.png", frames_to_uint8(frames[0]))
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"crf": 52}, ["crf=52", "0..51"]),
        ({"crf": -1}, ["crf=-1", "0..51"]),
        ({"crf": 18.5}, ["crf=18.5", "integer"]),
        ({"fps": 0}, ["fps=0", ">= 1"]),
        ({"fps": 29.97}, ["fps=29.97", "integer"]),
    ],
)
def test_mp4_options_are_checked_before_writing(tmp_path, kwargs, words) -> None:
    out = tmp_path / "v.mp4"
    with pytest.raises(InvalidInputError) as exc:
        write_mp4(out, torch.zeros(1, 16, 16, 3), **kwargs)
    for w in words:
        assert w in str(exc.value)
    assert not out.exists()
