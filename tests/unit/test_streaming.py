"""Block streaming (mochi_core.memory.streaming): residency proven from the tensors, outputs equal to all-resident.

On this CPU-only machine the compute and offload devices are both ``cpu``; an offloaded block's tensors are then
``meta`` placeholders, so (a) a block the mechanism failed to bring in cannot compute and (b) "resident" is read
from the parameters themselves by an independent probe inside every block's forward.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from mochi_core import ops
from mochi_core.errors import InvalidInputError
from mochi_core.memory import enable_block_streaming
from mochi_core.memory.streaming import block_nbytes, move_module
from mochi_core.testing.memory import track_memory


class ToyBlock(nn.Module):
    def __init__(self, dim: int, probe: list[int], owner: list[nn.Module]) -> None:
        super().__init__()
        self.lin1 = ops.Linear(dim, 2 * dim)
        self.lin2 = ops.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("shift", torch.randn(dim))
        self._probe = probe
        self._owner = owner
        self.fail = False  # set by a test: this block's forward raises (out of memory, interrupt, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # independent residency probe: count blocks whose tensors are real (not meta) right now
        model = self._owner[0]
        on_device = sum(1 for b in model.blocks if all(not p.is_meta for p in b.parameters()))
        self._probe.append(on_device)
        if self.fail:
            raise RuntimeError("boom: simulated failure inside a block")
        return x + self.lin2(torch.tanh(self.lin1(self.norm(x)))) + self.shift


class ToyModel(nn.Module):
    def __init__(self, depth: int = 6, dim: int = 16) -> None:
        super().__init__()
        self.probe: list[int] = []
        owner: list[nn.Module] = [self]
        self.embed = ops.Linear(dim, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim, self.probe, owner) for _ in range(depth))
        self.head = ops.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def _model(depth: int = 6) -> ToyModel:
    torch.manual_seed(1)
    return ToyModel(depth).eval()


@pytest.mark.parametrize("resident", [0, 1, 3, 5, 6])
@pytest.mark.parametrize("prefetch", [True, False])
@torch.no_grad()
def test_outputs_equal_and_at_most_n_plus_buffers_resident(resident: int, prefetch: bool) -> None:
    model = _model()
    x = torch.randn(4, 16)
    ref = model(x)
    handle = enable_block_streaming(model, resident, device="cpu", prefetch=prefetch)
    depth = len(model.blocks)
    # between forwards only the first N blocks are real tensors
    assert handle.loaded_blocks() == list(range(resident))
    assert all(p.is_meta for b in model.blocks[resident:] for p in b.parameters())
    model.probe.clear()
    out1 = model(x)
    out2 = model(x)  # the second pass re-streams the blocks
    torch.testing.assert_close(out1, ref, rtol=0, atol=0)
    torch.testing.assert_close(out2, ref, rtol=0, atol=0)
    allowed = min(depth, resident + 1 + int(prefetch))
    assert len(model.probe) == 2 * depth
    assert max(model.probe) <= allowed, (model.probe, allowed)
    if resident < depth:
        # the mechanism really streams (and prefetches): the bound is reached, not just respected
        assert max(model.probe) == allowed
        assert handle.stats.max_streamed_loaded == min(depth - resident, 1 + int(prefetch))
        assert handle.stats.loads == 2 * (depth - resident)
        assert handle.stats.prefetched == (2 * (depth - resident) if prefetch else 0)
    assert handle.stats.max_loaded_blocks == max(model.probe)
    assert handle.loaded_blocks() == list(range(resident))  # streamed blocks went back after their forward
    handle.remove()
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


@torch.no_grad()
def test_negative_control_without_hooks_a_streamed_block_cannot_compute() -> None:
    """If the pre-hooks did not bring blocks in, the forward would fail: the residency test can fail."""
    model = _model()
    handle = enable_block_streaming(model, 2, device="cpu")
    for h in handle._hooks:  # sabotage: keep the placeholders, drop the mechanism
        h.remove()
    with pytest.raises((RuntimeError, NotImplementedError)):
        model(torch.randn(2, 16))


@torch.no_grad()
def test_trace_order_prefetch_before_forward() -> None:
    model = _model(4)
    handle = enable_block_streaming(model, 1, device="cpu", prefetch=True)
    model(torch.randn(2, 16))
    tr = handle.stats.trace
    # block 1 is prefetched by the model hook / block 0, then each streamed block i+1 is prefetched when i starts
    assert tr.index(("prefetch", 1)) < tr.index(("forward", 1))
    assert tr.index(("prefetch", 2)) < tr.index(("forward", 2))
    assert tr.index(("unload", 1)) < tr.index(("forward", 2))  # block 1 leaves before block 2 computes
    for i in (1, 2, 3):
        assert tr.index(("forward", i)) < tr.index(("unload", i))
    assert ("load", 2) not in tr  # never loaded synchronously: always prefetched


@torch.no_grad()
def test_copy_on_load_allocations_match_the_device_model() -> None:
    """With copy_on_load the streamed block copies are real allocations: the tracked peak grows by exactly the
    (1 + prefetch) block buffers the planner counts, compared with the same run with all blocks resident."""
    model = _model(6)
    x = torch.randn(8, 16)
    per_block = block_nbytes(model.blocks[3])
    with track_memory(rss=False) as base:
        model(x)
    handle = enable_block_streaming(model, 2, device="cpu", prefetch=True, copy_on_load=True)
    with track_memory(rss=False) as streamed:
        model(x)
    handle.remove()
    extra = streamed.tensor_peak_bytes - base.tensor_peak_bytes
    assert extra == 2 * per_block, (extra, per_block)


def test_invalid_inputs() -> None:
    with pytest.raises(InvalidInputError, match="resident_blocks"):
        enable_block_streaming(_model(3), 4, device="cpu")
    with pytest.raises(InvalidInputError, match="resident_blocks"):
        enable_block_streaming(_model(3), -1, device="cpu")
    with pytest.raises(InvalidInputError, match="blocks"):
        enable_block_streaming(nn.Linear(2, 2), 0, device="cpu")


def _real_blocks(model: ToyModel) -> list[int]:
    """Blocks whose tensors are real right now (an offloaded block is meta placeholders on this CPU setup)."""
    return [i for i, b in enumerate(model.blocks) if not any(p.is_meta for p in b.parameters())]


@pytest.mark.parametrize("prefetch", [True, False])
@torch.no_grad()
def test_block_that_raises_is_sent_back(prefetch: bool) -> None:
    """A streamed block whose forward raises goes back to the offload device (hooks with always_call), and so does
    the block prefetched for it; the next forward is exact and leaves only the N resident blocks."""
    model = _model(6)
    x = torch.randn(4, 16)
    ref = model(x)
    handle = enable_block_streaming(model, 2, device="cpu", prefetch=prefetch)
    model.blocks[3].fail = True
    with pytest.raises(RuntimeError, match="boom"):
        model(x)
    assert _real_blocks(model) == [0, 1], "a streamed block stayed on the compute device after the exception"
    assert handle.loaded_blocks() == [0, 1]
    assert ("unload", 3) in handle.stats.trace
    model.blocks[3].fail = False
    model.probe.clear()
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    assert max(model.probe) <= 2 + 1 + int(prefetch)
    assert _real_blocks(model) == [0, 1]
    handle.remove()
    assert _real_blocks(model) == list(range(6))


@torch.no_grad()
def test_failure_before_the_blocks_sends_back_the_prefetched_block() -> None:
    """The model's pre-hook prefetches the first streamed block; a forward that fails before reaching it (bad input
    to the embedder) must not leave it on the device."""
    model = _model(4)
    handle = enable_block_streaming(model, 1, device="cpu", prefetch=True)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5))  # wrong width: the embedder raises
    assert ("prefetch", 1) in handle.stats.trace
    assert _real_blocks(model) == [0] and handle.loaded_blocks() == [0]
    handle.remove()


@torch.no_grad()
def test_installing_twice_is_refused_without_touching_the_first() -> None:
    model = _model(4)
    x = torch.randn(2, 16)
    ref = model(x)
    handle = enable_block_streaming(model, 2, device="cpu")
    with pytest.raises(InvalidInputError, match="already installed.*remove"):
        enable_block_streaming(model, 1, device="cpu")
    with pytest.raises(InvalidInputError, match="already installed"):
        enable_block_streaming(model, 1, device="cpu", blocks=model.blocks)
    assert _real_blocks(model) == [0, 1] and len(handle._hooks) == 2 * 4 + 2
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    handle.remove()
    again = enable_block_streaming(model, 1, device="cpu")  # after remove() it can be installed again
    assert _real_blocks(model) == [0]
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    again.remove()


def test_move_module_keeps_values_and_counts_bytes() -> None:
    model = _model(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = move_module(model, "cpu")
    assert moved == 0  # already there
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@torch.no_grad()
def test_real_dit_streaming_matches_resident(tmp_path) -> None:
    """The tiny DiT written as a real safetensors file, loaded by load_dit, streamed with N=1 of 3 blocks."""
    dit_mod = pytest.importorskip("mochi_core.testing.dit")
    from mochi_core import load_dit

    cfg = dit_mod.tiny_dit_config().with_(depth=3)
    path = dit_mod.write_dit(tmp_path / "dit.safetensors", "official", dit_mod.random_dit_state_dict(cfg))
    model = load_dit(path, device="cpu")
    x = torch.randn(2, cfg.in_channels, 2, 4, 4)
    feat = torch.randn(2, cfg.t5_token_length, cfg.t5_feat_dim)
    mask = torch.zeros(2, cfg.t5_token_length, dtype=torch.bool)
    mask[0, :5] = True
    sigma = torch.tensor([0.3, 0.7])
    ref = model(x, sigma, feat, mask)
    handle = enable_block_streaming(model, 1, device="cpu", prefetch=True)
    out = model(x, sigma, feat, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert handle.stats.max_loaded_blocks == 3 and handle.stats.max_streamed_loaded == 2
    assert handle.loaded_blocks() == [0]
    handle.remove()


def _mapped_rss(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps; madvise is Linux-only")
@torch.no_grad()
def test_cpu_streaming_gives_memory_mapped_blocks_back(tmp_path) -> None:
    """On the CPU, blocks read straight from the checkpoint's memory mapping leave resident memory after use: after a
    streamed forward only the resident block and the non-block tensors of the file stay mapped in, and the output
    is unchanged (the released pages come back from the file)."""
    from mochi_core import load_dit
    from mochi_core.dit.config import DiTConfig
    from mochi_core.testing.dit import random_dit_state_dict, write_dit

    cfg = DiTConfig(depth=4, num_heads=4, hidden_size_x=256, hidden_size_y=128, t5_feat_dim=64, t5_token_length=16)
    path = write_dit(tmp_path / "dit.safetensors", "official", random_dit_state_dict(cfg))
    model = load_dit(path, device="cpu")  # fp32 as stored: the weights are the file's mapping
    x = torch.randn(1, cfg.in_channels, 2, 8, 8)
    feat = torch.randn(1, cfg.t5_token_length, cfg.t5_feat_dim)
    mask = torch.zeros(1, cfg.t5_token_length, dtype=torch.bool)
    mask[0, :5] = True
    sigma = torch.tensor([0.4])
    ref = model(x, sigma, feat, mask)
    blocks = [block_nbytes(b) for b in model.blocks]
    file_bytes = path.stat().st_size
    assert _mapped_rss(path) >= 0.9 * file_bytes  # the forward touched every weight
    handle = enable_block_streaming(model, 1, device="cpu")
    for _ in range(2):
        out = model(x, sigma, feat, mask)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        rest = file_bytes - sum(blocks)  # header, embedders, final layer
        # the resident block stays; of the streamed ones at most the partial pages at their edges
        assert _mapped_rss(path) <= rest + blocks[0] + 2 * 4096 * 16
        assert _mapped_rss(path) <= 0.5 * file_bytes
    assert handle.stats.bytes_released >= 2 * sum(blocks[1:])
    handle.remove()
    torch.testing.assert_close(model(x, sigma, feat, mask), ref, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_streaming_side_stream_matches_resident() -> None:
    model = _model(6).cuda()
    x = torch.randn(64, 16, device="cuda")
    ref = model(x)
    model.cpu()
    handle = enable_block_streaming(model, 2, device="cuda", prefetch=True)
    assert all(p.is_pinned() for b in model.blocks[2:] for p in b.parameters())
    out = model(x)
    torch.testing.assert_close(out, ref)
    assert handle.stats.max_loaded_blocks <= 4
    handle.remove()


def test_make_room_asks_the_host_for_the_bytes() -> None:
    from mochi_core.memory import make_room

    calls: list[tuple[int, torch.device]] = []
    make_room(123, "cpu", free_memory=lambda n, d: calls.append((n, d)))
    assert calls == [(123, torch.device("cpu"))]


@torch.no_grad()
def test_t5_layers_stream_through_blocks_argument() -> None:
    """T5 (transformers T5EncoderModel) streams its ``encoder.block`` list; features equal the resident model."""
    t5 = pytest.importorskip("mochi_core.testing.t5")
    model = t5.reference_t5(t5.tiny_t5_state_dict()).eval()
    ids = torch.randint(0, 30, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 9:] = 0
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    layers = model.encoder.block
    handle = enable_block_streaming(model, 1, device="cpu", blocks=layers)
    assert handle.loaded_blocks() == [0]
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert handle.stats.max_streamed_loaded == min(len(layers) - 1, 2)
    handle.remove()
