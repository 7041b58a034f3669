"""A move of a cached model to the GPU that fails part-way never leaves the model split between devices.

There is no GPU here, so :class:`FakeGPU` stands in for the device copy: moving a tensor "to the GPU" swaps it for
a meta tensor (its data is gone from the CPU, as after a real copy whose CPU side is freed) and moving it back
restores it. A weight left "on the GPU" therefore breaks the next CPU run, exactly like a half-moved model does.
The encoders, the decoder and the node code around them are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from nodes import NODE_CLASS_MAPPINGS, host  # noqa: E402

GPU = torch.device("cuda", 0)


class FakeGPU:
    """Moves every parameter and buffer of a module between the CPU and a pretend GPU, one tensor at a time;
    ``fail_at`` = index of the tensor whose move to the GPU raises ``error`` (None: never)."""

    def __init__(self) -> None:
        self.away: dict[tuple[int, str, str], torch.Tensor] = {}
        self.fail_at: int | None = None
        self.error: Exception = torch.OutOfMemoryError("CUDA out of memory (fake GPU)")
        self.moves: list[str] = []

    def move(self, module: torch.nn.Module, device: Any, **_: Any) -> int:
        dev = torch.device(device)
        self.moves.append(dev.type)
        i = 0
        for mod in module.modules():
            for kind, table in (("p", mod._parameters), ("b", mod._buffers)):
                for name, t in list(table.items()):
                    if t is None:
                        continue
                    key = (id(mod), kind, name)
                    if dev.type == "cpu":
                        if key in self.away:
                            table[name] = self.away.pop(key)
                        continue
                    if i == self.fail_at:
                        raise self.error
                    i += 1
                    if key not in self.away:
                        self.away[key] = t
                        meta = torch.empty_like(t, device="meta")
                        table[name] = torch.nn.Parameter(meta, requires_grad=False) if kind == "p" else meta
        return 0


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    """ComfyUI's compute device is a (pretend) GPU with room to spare."""
    gpu = FakeGPU()
    monkeypatch.setattr(host, "compute_device", lambda: GPU)
    monkeypatch.setattr(host, "make_room", lambda nbytes, device: 1 << 50)
    return gpu


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, t5_tokenizer_dir: Path) -> dict[str, Any]:
    from tiny_models import write_all

    files = write_all(tmp_path_factory.mktemp("models"), readme=False, which=("t5", "vae"))
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(
        str(files["t5xxl_fp16.safetensors"]), "default", "fp32", str(t5_tokenizer_dir)
    )[0]
    vae = NODE_CLASS_MAPPINGS["MochiVAELoader"]().load(str(files["mochi_vae.safetensors"]), "fp32")[0]
    return {"t5": t5, "vae": vae, "features": _encode(t5), "frames": _decode(vae)}  # on the CPU, no move


def _encode(t5: Any) -> torch.Tensor:
    return NODE_CLASS_MAPPINGS["MochiTextEncode"]().encode(t5, "a red fox")[0][0][0]


def _decode(vae: Any) -> torch.Tensor:
    latent = {"samples": torch.linspace(-1, 1, 12 * 2 * 4 * 4).reshape(1, 12, 2, 4, 4)}
    return NODE_CLASS_MAPPINGS["MochiVAEDecodeTiled"]().decode(vae, latent, 0.0)[0]


def test_t5_out_of_memory_while_moving_falls_back_whole(models, fake_gpu, monkeypatch) -> None:
    import mochi_core.memory.streaming as streaming

    t5, expected = models["t5"], models["features"]
    monkeypatch.setattr(streaming, "move_module", fake_gpu.move)
    fake_gpu.fail_at = 3  # a few weights are already on the GPU when memory runs out
    got = _encode(t5)
    assert fake_gpu.away == {} and t5.device == torch.device("cpu")
    assert fake_gpu.moves[0] == "cuda" and fake_gpu.moves[-1] == "cpu"
    torch.testing.assert_close(got, expected)  # encoded on the CPU with every weight back


def test_t5_other_error_while_moving_is_raised_and_the_model_restored(models, fake_gpu, monkeypatch) -> None:
    import mochi_core.memory.streaming as streaming

    t5, expected = models["t5"], models["features"]
    monkeypatch.setattr(streaming, "move_module", fake_gpu.move)
    fake_gpu.fail_at, fake_gpu.error = 3, RuntimeError("CUDA error: an illegal memory access (fake)")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        _encode(t5)
    assert fake_gpu.away == {} and t5.device == torch.device("cpu")
    monkeypatch.setattr(host, "compute_device", lambda: torch.device("cpu"))
    torch.testing.assert_close(_encode(t5), expected)  # the next call works


def test_vae_out_of_memory_while_moving_is_clear_and_leaves_the_vae_whole(models, fake_gpu, monkeypatch) -> None:
    import mochi_core.memory.streaming as streaming
    from mochi_core.errors import DoesNotFitError

    vae, expected = models["vae"], models["frames"]
    monkeypatch.setattr(streaming, "move_module", fake_gpu.move)
    fake_gpu.fail_at = 5
    with pytest.raises(DoesNotFitError, match="out of memory on cuda:0 while moving the VAE decoder weights"):
        _decode(vae)
    assert fake_gpu.away == {} and vae.device == torch.device("cpu")
    monkeypatch.setattr(host, "compute_device", lambda: torch.device("cpu"))
    torch.testing.assert_close(_decode(vae), expected)  # the next call works
