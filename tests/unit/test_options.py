"""The options layer: one table of dtype names, one rule per value, the same verdict from every entry point."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mochi_core import dtypes, options
from mochi_core.errors import InvalidInputError
from mochi_core.options import DecodeOptions, DiTOptions, SamplingOptions, T5Options, VAEOptions


@pytest.mark.parametrize(
    "spellings, name",
    [
        (["bf16", "bfloat16", "BF16", " torch.bfloat16 ", torch.bfloat16], "bf16"),
        (["fp16", "float16", "half", torch.float16], "fp16"),
        (["fp32", "float32", "float", torch.float32], "fp32"),
        (["fp8", "fp8_e4m3fn", "float8_e4m3fn", torch.float8_e4m3fn], "fp8_e4m3fn"),
    ],
)
def test_every_spelling_of_a_dtype_means_the_same_everywhere(spellings, name) -> None:
    """The loaders' checks, the precision policy and the planner read one table: "half" and "fp8" used to be
    accepted by one of them and refused by the other."""
    from mochi_core.memory import dit_weight_bytes
    from mochi_core.precision import parse_dtype

    for s in spellings:
        assert dtypes.canonical_name(s) == name
        assert parse_dtype(s) == dtypes.TORCH_DTYPES[name]
        assert DiTOptions.resolve(storage_dtype=s).storage_dtype == dtypes.TORCH_DTYPES[name]
        assert dit_weight_bytes(storage=s) == dit_weight_bytes(storage=name)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DiTOptions.resolve(compute_dtype="fp8_e4m3fn"), "compute_dtype=fp8_e4m3fn cannot be a compute dtype"),
        (lambda: T5Options.resolve(compute_dtype="half"), "compute_dtype=fp16 cannot be a compute dtype (T5 overflows"),
        (lambda: VAEOptions.resolve(storage_dtype="fp8"), "storage_dtype=fp8_e4m3fn is not a VAE storage dtype"),
        (lambda: T5Options.resolve(storage_dtype="q8_0"), "storage_dtype=q8_0 is not a T5 storage dtype"),
        (lambda: DiTOptions.resolve(storage_dtype="q2_x"), "storage_dtype='q2_x' is not a DiT storage dtype"),
        (lambda: DiTOptions.resolve(attention="xformers"), "attention='xformers' is not a known backend"),
        (lambda: DecodeOptions.resolve(memory_budget=float("nan")), "memory_budget=nan is not allowed"),
        (lambda: DecodeOptions.resolve(memory_budget=10**9, tile=2), "tile= cannot be combined with memory_budget="),
        (lambda: SamplingOptions.resolve(steps=4, cfg=float("inf")), "cfg=inf is not allowed"),
        (lambda: SamplingOptions.resolve(steps=4, cfg=2, denoise=0.5), "denoise < 1 needs a start_latent"),
    ],
)
def test_each_record_refuses_with_a_message_naming_the_input(make, message) -> None:
    with pytest.raises(InvalidInputError) as exc:
        make()
    assert message in str(exc.value)


def test_names_change_only_how_the_input_is_named() -> None:
    with pytest.raises(InvalidInputError) as api:
        DiTOptions.resolve(compute_dtype="int8")
    with pytest.raises(InvalidInputError) as cli:
        DiTOptions.resolve(compute_dtype="int8", names={"compute_dtype": "--compute-dtype"})
    assert str(cli.value) == str(api.value).replace("compute_dtype=", "--compute-dtype=", 1)


def test_loaders_and_generate_give_the_message_of_the_record(tmp_path) -> None:
    """One rule per value: the loader's and generate's refusals are the record's own words."""
    from mochi_core import generate, load_dit, load_vae

    with pytest.raises(InvalidInputError) as record:
        DiTOptions.resolve(compute_dtype="fp8_e5m2")
    with pytest.raises(InvalidInputError) as loader:
        load_dit(tmp_path / "never_read.safetensors", compute_dtype="fp8_e5m2")
    with pytest.raises(InvalidInputError) as api:
        generate("x", dit="d", vae="v", text_encoder="t", compute_dtype="fp8_e5m2")
    assert str(record.value) == str(loader.value) == str(api.value)
    with pytest.raises(InvalidInputError) as vae:
        load_vae(tmp_path / "never_read.safetensors", storage_dtype="fp8")
    assert str(vae.value) == str(pytest.raises(InvalidInputError, VAEOptions.resolve, storage_dtype="fp8").value)


def test_the_earlier_keyword_names_still_work_with_a_warning(tmp_path) -> None:
    from mochi_core import load_dit

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InvalidInputError, match=r"^dtype=fp8_e4m3fn cannot be a compute dtype"):
            load_dit(tmp_path / "never_read.safetensors", dtype="fp8_e4m3fn")
    assert any(issubclass(w.category, DeprecationWarning) and "compute_dtype" in str(w.message) for w in seen)
    with pytest.raises(InvalidInputError, match="dtype= is the earlier name of compute_dtype=: pass only"):
        load_dit(tmp_path / "never_read.safetensors", dtype="fp32", compute_dtype="fp32")


def test_numbers_and_flags_follow_one_rule_in_the_api_and_the_planner() -> None:
    """numpy scalars and 0 / 1 flags: accepted by generate's checks and by the planner alike (they disagreed)."""
    from mochi_core import plan

    assert SamplingOptions.resolve(steps=np.int64(4), cfg=2, batch_cfg=np.bool_(False)).batch_cfg is False
    assert plan(848, 480, 31, budget_bytes="40GB", batch_cfg=0, text_tokens=np.int64(12)).batch_cfg is False
    for bad in ("no", 2):
        with pytest.raises(InvalidInputError, match=f"batch_cfg={bad!r} is not allowed: use True"):
            SamplingOptions.resolve(steps=4, cfg=2, batch_cfg=bad)
        with pytest.raises(InvalidInputError, match=f"batch_cfg={bad!r} is not allowed: use True"):
            plan(848, 480, 31, budget_bytes="40GB", batch_cfg=bad)


def test_every_choice_a_node_offers_is_a_choice_of_the_core() -> None:
    """The loader nodes' widget lists stay as saved workflows know them; each entry must pass the core's check."""
    from nodes import loaders

    for names, choice in (
        (loaders.DIT_STORAGE, options.DIT_STORAGE),
        (loaders.T5_STORAGE, options.T5_STORAGE),
        (loaders.VAE_DTYPES, options.VAE_COMPUTE),
        (loaders.T5_DTYPES, options.T5_COMPUTE),
    ):
        for name in names:
            options.resolve_dtype(name, what="widget", choice=choice)


def test_option_records_are_frozen() -> None:
    o = DiTOptions.resolve()
    with pytest.raises(Exception, match="frozen|cannot assign"):
        o.compute_dtype = torch.float16  # type: ignore[misc]
