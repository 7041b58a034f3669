"""The nodes' memory policy: placements inside ComfyUI come from the core planner, budgets keep ComfyUI's reserve,
weights stay in system RAM under ``--highvram``.

The placement tests run the real nodes on tiny model files on the CPU: there the planner plans system RAM
(reserve 0) and the nodes apply what it says (block streaming included). The free memory ComfyUI would report is
the one value given from outside (``nodes.host.make_room`` returns it), so several values can be tried on one
machine. The ComfyUI tests import the real ``comfy.model_management`` of the vendored host in this process, set
its flags (``--highvram``, ``--reserve-vram``) and restore every module afterwards; with no GPU here, its free
memory query for the GPU is the one function replaced.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from nodes import NODE_CLASS_MAPPINGS, host  # noqa: E402
from nodes.placement import GB, phase_budget, plan_decode, plan_sampling  # noqa: E402

SIZE = {"width": 32, "height": 32, "frames": 13}
DIT = "tiny_dit_6_blocks_bf16.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import write_all

    from mochi_core.testing.dit import random_dit_state_dict, tiny_dit_config, write_dit

    out = write_all(tmp_path_factory.mktemp("models"), readme=False)
    # 6 blocks, so that streaming some of them saves memory (with 2 blocks, the 2 streamed buffers are the model)
    deep = out["mochi_vae.safetensors"].parents[1] / "diffusion_models" / DIT
    out[DIT] = write_dit(deep, "comfy_bf16", random_dit_state_dict(tiny_dit_config().with_(depth=6)))
    return out


@pytest.fixture(scope="module")
def nodes_(files: dict[str, Path], t5_tokenizer_dir: Path) -> dict[str, Any]:
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(
        str(files["t5xxl_fp16.safetensors"]), "default", "fp32", str(t5_tokenizer_dir)
    )[0]
    vae = NODE_CLASS_MAPPINGS["MochiVAELoader"]().load(str(files["mochi_vae.safetensors"]), "fp32")[0]
    enc = NODE_CLASS_MAPPINGS["MochiTextEncode"]()
    return {"t5": t5, "vae": vae, "pos": enc.encode(t5, "a red fox")[0], "neg": enc.encode(t5, "")[0]}


def _core_plan(files: dict[str, Path], budget: int) -> Any:
    from mochi_core.memory import plan_for_files

    return plan_for_files(
        **SIZE,
        budget_bytes=budget,
        dit=files[DIT],
        text_encoder=files["t5xxl_fp16.safetensors"],
        vae=files["mochi_vae.safetensors"],
        device="cpu",
    )


def _dit(files: dict[str, Path], budget_gb: float = 0.0, memory: str = "auto") -> Any:
    return NODE_CLASS_MAPPINGS["MochiDiTLoader"]().load(str(files[DIT]), "default", "sdpa", memory, budget_gb)[0]


def _run_sampler_and_decode(files: dict[str, Path], nodes_: dict[str, Any], dit: Any, decode_gb: float) -> None:
    latent = NODE_CLASS_MAPPINGS["MochiSampler"]().sample(
        dit, nodes_["pos"], nodes_["neg"], **SIZE, steps=2, cfg=4.5, seed=3, threshold_noise=0.025, linear_steps=0
    )[0]
    NODE_CLASS_MAPPINGS["MochiVAEDecodeTiled"]().decode(nodes_["vae"], latent, decode_gb)


def _logged(caplog: pytest.LogCaptureFixture, node: str) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(node + " on ")]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return lines[0]


def _expected_lines(plan: Any) -> tuple[str, str]:
    cfg = "CFG batched" if plan.batch_cfg else "CFG passes one at a time"
    spec = plan.dit_streaming
    return (f"DiT {spec.resident_blocks}/{spec.depth} blocks resident", cfg, plan.tile_text())


def _interesting_budgets(files: dict[str, Path]) -> list[int]:
    """Budgets at which the planner's choice changes: the sampling peaks with every block resident (CFG batched,
    then one pass at a time), one block resident, none; and the decode's peak with the whole latent at once."""
    from mochi_core.memory import inspect_model_files, plan

    mf = inspect_model_files(files[DIT], files["t5xxl_fp16.safetensors"], files["mochi_vae.safetensors"])
    kw = {
        **SIZE,
        "device": "cpu",
        "dit_config": mf.dit_config,
        "dit_storage": mf.dit_storage,
        "t5_sizes": mf.t5_sizes,
        "t5_storage": mf.t5_storage,
        "decoder_config": mf.decoder_config,
        "vae_dtype": "fp32",
        "budget_bytes": 1,
    }
    depth = mf.dit_config.depth
    choices = ((depth, True), (depth, False), (1, False), (0, False))
    peaks = [plan(**kw, resident_blocks=n, batch_cfg=b).phase("sampling").peak_bytes for n, b in choices]
    return [*peaks, _core_plan(files, 1 << 50).phase("decoding").peak_bytes]


def test_placement_inside_comfyui_equals_plan_for_several_free_memory_values(
    files, nodes_, monkeypatch, caplog
) -> None:
    """Automatic budgets: the DiT placement and decode tile the nodes choose for the free memory ComfyUI reports
    are what ``plan()`` (here ``plan_for_files``, the same planner on the same files) returns for that budget."""
    seen = set()
    for free in _interesting_budgets(files):
        monkeypatch.setattr(host, "make_room", lambda nbytes, device, free=free: free)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nodes"):
            _run_sampler_and_decode(files, nodes_, _dit(files), 0.0)
        plan = _core_plan(files, free)
        blocks, cfg, tile = _expected_lines(plan)
        sampler, decode = _logged(caplog, "Mochi Sampler"), _logged(caplog, "Mochi VAE Decode")
        assert blocks in sampler and cfg in sampler, (free, sampler, plan.summary())
        assert tile in decode, (free, decode, plan.summary())
        seen.add((plan.resident_blocks, plan.batch_cfg, plan.decode_tile))
    assert len(seen) >= 4, seen  # the budgets really exercise different placements


def test_placement_with_memory_budget_inputs_equals_plan(files, nodes_, caplog) -> None:
    """The same with the nodes' own ``memory_budget_gb`` inputs (GB = 10^9 bytes, as ``plan()`` counts)."""
    sampling = _interesting_budgets(files)[1:4]  # CFG one pass at a time; one block resident; none
    decoding = [_core_plan(files, 1).phase("decoding").peak_bytes, _interesting_budgets(files)[-1]]
    for dit_budget, vae_budget in zip(sampling, [*decoding, decoding[0]]):
        dit_gb, vae_gb = dit_budget / GB, vae_budget / GB
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nodes"):
            _run_sampler_and_decode(files, nodes_, _dit(files, dit_gb), vae_gb)
        sampler, decode = _logged(caplog, "Mochi Sampler"), _logged(caplog, "Mochi VAE Decode")
        blocks, cfg, _ = _expected_lines(_core_plan(files, int(dit_gb * GB)))
        assert blocks in sampler and cfg in sampler and "(memory_budget_gb)" in sampler, sampler
        _, _, tile = _expected_lines(_core_plan(files, int(vae_gb * GB)))
        assert tile in decode and "(memory_budget_gb)" in decode, decode


def test_log_line_states_resident_part_peak_and_budget(files, nodes_, caplog) -> None:
    plan = _core_plan(files, int(1.5 * GB))
    with caplog.at_level(logging.INFO, logger="nodes"):
        _run_sampler_and_decode(files, nodes_, _dit(files, 1.5), 1.5)
    from mochi_core.memory import format_bytes

    sampler = _logged(caplog, "Mochi Sampler")
    assert sampler == (
        f"Mochi Sampler on cpu: DiT {plan.depth}/{plan.depth} blocks resident, CFG batched; predicted peak "
        f"{format_bytes(plan.phase('sampling').peak_bytes)}, budget 1.50 GB (1.40 GiB) (memory_budget_gb)"
    )
    decode = _logged(caplog, "Mochi VAE Decode")
    assert f"predicted peak {format_bytes(plan.phase('decoding').peak_bytes)}" in decode
    assert decode.endswith("budget 1.50 GB (1.40 GiB) (memory_budget_gb)")


def test_text_encode_plans_t5_layers(files, nodes_, monkeypatch, caplog) -> None:
    """T5 layers resident come from the planner too; a streamed T5 encodes exactly like the resident one."""
    from mochi_core.memory import plan_for_files

    expected = nodes_["pos"][0][0]
    full = plan_for_files(
        **SIZE,
        budget_bytes=1 << 50,
        dit=files[DIT],
        text_encoder=files["t5xxl_fp16.safetensors"],
        vae=files["mochi_vae.safetensors"],
        device="cpu",
    ).phase("text_encoding")
    free = full.peak_bytes - 1  # one byte short of all layers: the planner streams some
    monkeypatch.setattr(host, "make_room", lambda nbytes, device: free)
    with caplog.at_level(logging.INFO, logger="nodes"):
        got = NODE_CLASS_MAPPINGS["MochiTextEncode"]().encode(nodes_["t5"], "a red fox")[0][0][0]
    plan = _core_plan(files, free)
    line = _logged(caplog, "Mochi Text Encode")
    spec = plan.t5_streaming
    assert spec.streams
    assert f"T5 {spec.resident_blocks}/{spec.depth} layers resident" in line, line
    # same kernels in the same order on the same weights: streaming only changes where a layer's weights are bound
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_memory_budget_too_small_for_the_sampler_is_refused_naming_the_smallest(files, nodes_) -> None:
    from mochi_core.errors import DoesNotFitError
    from mochi_core.memory import format_bytes

    least = _core_plan(files, 1).phase("sampling").peak_bytes  # every block streamed, CFG passes one at a time
    with pytest.raises(DoesNotFitError) as err:
        _run_sampler_and_decode(files, nodes_, _dit(files, (least - 1) / GB), 0.0)
    assert "Mochi Sampler does not fit in memory_budget_gb=" in str(err.value)
    assert f"the smallest budget that fits is {format_bytes(least)}" in str(err.value)
    assert err.value.min_budget_bytes == least


def test_memory_modes_force_their_part_of_the_plan(files, nodes_) -> None:
    """ "full" keeps every block, "stream" runs CFG passes one at a time; sizes as the planner sees them."""
    shape = (1, 12, 3, 4, 4)
    roomy = plan_sampling(
        _dit(files, 100.0, "stream"), shape, torch.device("cpu"), memory="stream", budget_bytes=100 * GB, cfg_pass=True
    )
    assert roomy.plan.batch_cfg is False and roomy.plan.resident_blocks == roomy.plan.depth
    tight = _core_plan(files, 1).phase("sampling").peak_bytes
    full = plan_sampling(
        _dit(files, tight / GB, "full"), shape, torch.device("cpu"), memory="full", budget_bytes=tight, cfg_pass=True
    )
    assert full.plan.resident_blocks == full.plan.depth and not full.fits
    one_pass = plan_sampling(_dit(files), shape, torch.device("cpu"), memory="auto", budget_bytes=0, cfg_pass=False)
    assert one_pass.plan.batch_cfg is False


# ------------------------------------------------------------------------------------------------ real ComfyUI state


@pytest.fixture()
def comfy_mm(comfyui_src: Path) -> Iterator[Any]:
    """The vendored host's real ``comfy.model_management``, imported in this process (CPU mode, as without a GPU
    it must be), then removed again with every module it brought and the torch flag it sets."""
    before_modules = set(sys.modules)
    before_path = list(sys.path)
    reduction = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    sys.path.insert(0, str(comfyui_src))
    try:
        from comfy.cli_args import args

        args.cpu = True
        import comfy.model_management as mm

        yield mm
    finally:
        for name in set(sys.modules) - before_modules:
            del sys.modules[name]
        sys.path[:] = before_path
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(reduction)


class FakeGPUMemory:
    """Free memory of the pretend GPU ``cuda:0`` as ComfyUI reports it; records what the pack asked ComfyUI to free."""

    def __init__(self, mm: Any, free: int) -> None:
        self.free, self.asked = free, []
        self._free_memory = mm.free_memory

    def get_free_memory(self, dev: Any = None, torch_free_too: bool = False) -> Any:
        return (self.free, 0) if torch_free_too else self.free

    def free_memory(self, memory_required: int, device: Any, keep_loaded: Any = ()) -> Any:
        self.asked.append(int(memory_required))
        return self._free_memory(memory_required, device, list(keep_loaded))


GPU = torch.device("cuda", 0)


@pytest.fixture()
def gpu_state(comfy_mm: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeGPUMemory]:
    """ComfyUI started with ``--highvram --reserve-vram 1.5`` on a GPU with 20 GB free."""
    mm = comfy_mm
    fake = FakeGPUMemory(mm, 20 * GB)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.HIGH_VRAM)
    monkeypatch.setattr(mm, "cpu_state", mm.CPUState.GPU)
    monkeypatch.setattr(mm, "EXTRA_RESERVED_VRAM", int(1.5 * 1024**3))
    monkeypatch.setattr(mm, "get_torch_device", lambda: GPU)
    monkeypatch.setattr(mm, "get_free_memory", fake.get_free_memory)
    monkeypatch.setattr(mm, "free_memory", fake.free_memory)
    return mm, fake


def test_loaders_keep_weights_in_system_ram_under_highvram(files, gpu_state, t5_tokenizer_dir) -> None:
    """Under ``--highvram`` ComfyUI's offload device is the GPU; the pack's weights stay in RAM between phases
    (ComfyUI could not evict them from the GPU), and go to the GPU only for a phase, as planned."""
    import folder_paths  # the host's model folders: the loaders resolve names through them

    mm, _ = gpu_state
    assert mm.unet_offload_device() == GPU and host.compute_device() == GPU
    for folder in ("diffusion_models", "vae", "text_encoders"):
        folder_paths.add_model_folder_path(folder, str(files["mochi_vae.safetensors"].parents[1] / folder))
    dit = NODE_CLASS_MAPPINGS["MochiDiTLoader"]().load(DIT, "default", "sdpa", "auto", 0.0)[0]
    vae = NODE_CLASS_MAPPINGS["MochiVAELoader"]().load("mochi_vae.safetensors", "fp32")[0]
    t5 = NODE_CLASS_MAPPINGS["MochiT5Loader"]().load(
        "t5xxl_fp16.safetensors", "default", "fp32", str(t5_tokenizer_dir)
    )[0]
    for model in (dit.model, vae.decoder, t5.model):
        assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_budgets_keep_comfyui_reserve_free(files, gpu_state) -> None:
    """Free 20 GB, ``--reserve-vram 1.5``: the automatic budget is 20 GB - 1.5 GiB; a larger budget input is cut to
    it; a smaller one is kept. Each time ComfyUI is asked to free what the phase needs plus its reserve."""
    mm, fake = gpu_state
    reserve = int(1.5 * 1024**3)
    auto = phase_budget(GPU, 0, 5 * GB)
    assert (auto.nbytes, auto.reserve_bytes, auto.source) == (20 * GB - reserve, reserve, "free memory")
    assert fake.asked == [5 * GB + reserve]
    assert phase_budget(GPU, 30 * GB, 40 * GB).nbytes == 20 * GB - reserve  # cut to what is free
    kept = phase_budget(GPU, 6 * GB, 40 * GB)
    assert kept.nbytes == 6 * GB and kept.explicit and fake.asked[-1] == 6 * GB + reserve


def test_decode_asks_comfyui_to_free_what_it_needs(files, gpu_state, nodes_) -> None:
    """The decode asks ComfyUI to free the decoding peak at best (the whole latent at once) plus the reserve, and
    plans its tile for what is then free minus the reserve, exactly as ``plan()`` does for that budget."""
    from mochi_core import plan

    mm, fake = gpu_state
    vae = nodes_["vae"]
    shape = (1, 12, 3, 4, 4)
    job = plan_decode(vae, shape, GPU, budget_bytes=0)
    reserve = int(1.5 * 1024**3)
    kwargs = {"decoder_config": vae.decoder.config, "vae_dtype": "fp32", "device": "cuda", **SIZE}
    best = plan(**kwargs, budget_bytes=1 << 50).phase("decoding").peak_bytes
    assert fake.asked == [best + reserve]
    expected = plan(**kwargs, budget_bytes=20 * GB - reserve)
    assert job.budget.nbytes == 20 * GB - reserve
    assert job.plan.decode_tile == expected.decode_tile and job.phase == expected.phase("decoding")


def test_run_time_messages_name_model_files_relative_to_their_folder(comfy_mm, tmp_path) -> None:
    """Errors raised while a node runs (a loader, a NaN weight found at the first step) reach the API client with
    ``models/<folder>/...`` instead of the server's absolute path; type and traceback are kept."""
    import folder_paths

    from mochi_core.errors import UnsupportedCheckpointError

    folder_paths.add_model_folder_path("vae", str(tmp_path / "vae_models"))
    path = tmp_path / "vae_models" / "sub" / "x.safetensors"
    with pytest.raises(UnsupportedCheckpointError) as err, host.relative_paths("vae"):
        raise UnsupportedCheckpointError(f"{path}: tensor 'decoder.conv_in.weight' holds NaN")
    assert str(err.value) == "models/vae/sub/x.safetensors: tensor 'decoder.conv_in.weight' holds NaN"
    with pytest.raises(FileNotFoundError) as missing, host.relative_paths("vae"):
        open(path)  # noqa: SIM115 - the error of a missing file is the point
    assert missing.value.filename == "models/vae/sub/x.safetensors" and str(tmp_path) not in str(missing.value)


def test_a_batched_latent_is_planned_for_every_video(files, nodes_, monkeypatch, caplog) -> None:
    """A latent of 2 videos: the sampler plans 2 videos (``plan(batch=2)``), so at the budget where one video keeps
    every block resident with batched CFG, two videos must not."""
    from mochi_core.memory import inspect_model_files, plan

    mf = inspect_model_files(files[DIT], files["t5xxl_fp16.safetensors"], files["mochi_vae.safetensors"])
    kw = {
        **SIZE,
        "device": "cpu",
        "dit_config": mf.dit_config,
        "dit_storage": mf.dit_storage,
        "t5_sizes": mf.t5_sizes,
        "t5_storage": mf.t5_storage,
        "decoder_config": mf.decoder_config,
        "vae_dtype": "fp32",
    }
    free = plan(**kw, budget_bytes=1 << 50).phase("sampling").peak_bytes  # one video: everything fits just so
    monkeypatch.setattr(host, "make_room", lambda nbytes, device: free)
    latent = NODE_CLASS_MAPPINGS["MochiEmptyLatent"]().make(SIZE["width"], SIZE["height"], SIZE["frames"], 2)[0]
    with caplog.at_level(logging.INFO, logger="nodes"):
        out = NODE_CLASS_MAPPINGS["MochiSampler"]().sample(
            _dit(files), nodes_["pos"], nodes_["neg"], **SIZE, steps=2, cfg=4.5, seed=3, threshold_noise=0.025,
            linear_steps=0, latent=latent,
        )[0]  # fmt: skip
    assert out["samples"].shape[0] == 2
    two = plan(**kw, budget_bytes=free, batch=2)
    blocks, cfg, _ = _expected_lines(two)
    line = _logged(caplog, "Mochi Sampler")
    assert blocks in line and cfg in line, (line, two.summary())
    assert (two.resident_blocks, two.batch_cfg) != (two.depth, True)
