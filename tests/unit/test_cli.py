"""The headless CLI: a tiny-model video rendered end to end in a subprocess and read back; refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mochi_core.cli import build_parser, main, parse_bytes
from mochi_core.errors import InvalidInputError
from mochi_core.testing.t5 import write_t5

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_args(tmp_path_factory, t5_tokenizer_dir) -> list[str]:
    from mochi_core.testing.dit import write_dit
    from mochi_core.testing.vae import random_decoder_state_dict, write_comfy_vae

    root = tmp_path_factory.mktemp("cli_models")
    return [
        "--dit", str(write_dit(root / "dit_bf16.safetensors", "comfy_bf16")),
        "--vae", str(write_comfy_vae(root / "mochi_vae.safetensors", random_decoder_state_dict(), None)),
        "--t5", str(write_t5(root / "t5xxl_fp8_e4m3fn_scaled.safetensors", "fp8_e4m3fn_scaled")),
        "--tokenizer", str(t5_tokenizer_dir),
    ]  # fmt: skip


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MOCHI_T5_TOKENIZER", None)  # the CLI must use --tokenizer
    return subprocess.run(
        [sys.executable, "-m", "mochi_core", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_renders_a_tiny_video_end_to_end(model_args, tmp_path) -> None:
    av = pytest.importorskip("av")
    out = tmp_path / "video.mp4"
    common = ["--prompt", "A cat walks on the grass, realistic style.", "--width", "48", "--height", "32"]
    res = _run(
        ["generate", *common, "--frames", "13", "--steps", "3", "--cfg", "4.5", "--seed", "5", *model_args]
        + ["--out", str(out), "--frames-dir", str(tmp_path / "png"), "--json"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["frames"] == 13 and summary["seed"] == 5 and summary["fps"] == 30
    assert summary["formats"] == {"t5": "fp8_e4m3fn_scaled", "dit": summary["formats"]["dit"]}
    assert summary["outputs"]["mp4"] == str(out) and summary["outputs"]["png_count"] == 13
    assert "sampling" in res.stderr  # the tqdm bar went to stderr
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == 30
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 13 and frames[0].shape == (32, 48, 3)
    pngs = sorted((tmp_path / "png").glob("frame_*.png"))
    assert len(pngs) == 13
    with av.open(str(pngs[-1])) as c:
        png = next(iter(c.decode(video=0))).to_ndarray(format="rgb24")
    # the lossy MP4 frame stays near the exact PNG frame
    assert abs(png.astype("float32") - frames[-1].astype("float32")).mean() < 12.0


def test_cli_refuses_bad_input_with_one_line(model_args, tmp_path) -> None:
    res = _run(
        ["generate", "--prompt", "x", "--frames", "30", "--width", "48", "--height", "32", *model_args]
        + ["--out", str(tmp_path / "v.mp4")],
        tmp_path,
    )
    assert res.returncode == 2
    assert "frames=30" in res.stderr and "25 or 31" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_main_in_process_reports_errors(model_args, tmp_path, capsys) -> None:
    rc = main(["generate", "--prompt", "x", *model_args, "--out", str(tmp_path / "v.avi")])
    assert rc == 2 and ".mp4" in capsys.readouterr().err
    rc = main(["generate", "--prompt", "x", *model_args[:4], "--t5", str(tmp_path / "none.safetensors")])
    assert rc == 2 and "--out" in capsys.readouterr().err
    rc = main(
        ["generate", "--prompt", "x", "--width", "48", "--height", "32", "--frames", "7", "--steps", "1"]
        + [*model_args[:4], "--t5", model_args[1], "--tokenizer", model_args[-1], "--out", str(tmp_path / "v.mp4")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "not a t5 checkpoint" in err.lower()
    out = tmp_path / "never.mp4"
    rc = main(
        ["generate", "--prompt", "x", "--width", "48", "--height", "32", "--frames", "7", "--steps", "1"]
        + [*model_args, "--device", "cpu", "--budget", "50KB", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 3 and "smallest budget that fits" in err and not out.exists()


def test_parse_bytes() -> None:
    assert parse_bytes("20GB") == 20 * 10**9
    assert parse_bytes("18GiB") == 18 * 2**30
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4096B") == 4096
    with pytest.raises(InvalidInputError, match="parsecs"):
        parse_bytes("20 parsecs")


def test_plan_subcommand_hook(monkeypatch) -> None:
    """cli.py adds the memory package's `plan` subcommand through mochi_core.memory.planning.cli.add_plan_parser."""
    import importlib.machinery

    import mochi_core.memory  # noqa: F401

    def add_plan_parser(sub):
        p = sub.add_parser("plan")
        p.add_argument("--budget")
        p.set_defaults(func=lambda args: 7)

    fake = types.ModuleType("mochi_core.memory.planning.cli")
    fake.__spec__ = importlib.machinery.ModuleSpec("mochi_core.memory.planning.cli", None)
    fake.add_plan_parser = add_plan_parser  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mochi_core.memory.planning.cli", fake)
    import mochi_core.memory.planning

    monkeypatch.setattr(mochi_core.memory.planning, "cli", fake, raising=False)
    assert main(["plan", "--budget", "20GB"]) == 7
    assert "generate" in build_parser().format_help()


def test_generate_help_lists_the_issue_options() -> None:
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = sub.choices["generate"].format_help()
    for opt in ("--prompt", "--negative", "--dit", "--vae", "--t5", "--tokenizer", "--width", "--height", "--frames"):
        assert opt in help_text
    for opt in ("--steps", "--cfg", "--seed", "--out", "--json", "--frames-dir"):
        assert opt in help_text


@pytest.fixture
def fake_generate(monkeypatch):
    """generate() replaced by a stand-in returning a tiny 7-frame video; records its calls."""
    import torch

    import mochi_core.pipeline as pipeline

    calls: list[dict] = []

    def fake(prompt, **kw):
        calls.append(kw)
        frames = torch.linspace(0, 1, 7 * 32 * 48 * 3).reshape(7, 32, 48, 3)
        summary = {"frames": 7, "seed": kw["seed"], "timings": {"total_s": 0.0}}
        return pipeline.GenerationResult(frames=frames, latent=torch.zeros(1, 12, 2, 4, 6), summary=summary)

    monkeypatch.setattr(pipeline, "generate", fake)
    return calls


def _gen(*extra: str) -> list[str]:
    return ["generate", "--prompt", "x", "--dit", "d", "--vae", "v", "--t5", "t", "--no-progress", *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--crf", "60"], ["--crf 60", "0..51"]),
        (["--crf", "-1"], ["--crf -1", "0..51"]),
        (["--fps", "0"], ["--fps 0"]),
        (["--device", "gpu"], ["--device='gpu'", "not a device"]),
        (["--memory-budget", "lots"], ["--memory-budget='lots'", "not a size"]),
        (["--budget", "12 parsecs"], ["--budget='12 parsecs'", "not a size"]),
    ],
)
def test_options_are_refused_before_generating(fake_generate, tmp_path, capsys, extra, words) -> None:
    rc = main(_gen("--out", str(tmp_path / "v.mp4"), *extra))
    err = capsys.readouterr().err
    assert rc == 2 and fake_generate == [], err
    for w in words:
        assert w in err, err
    # the option is named, not the planner's argument
    assert "budget=" not in err.replace("--memory-budget=", "").replace("--budget=", "")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(fake_generate, tmp_path, capsys) -> None:
    rc = main(_gen("--out", str(tmp_path / "v.mp4"), "--device", "cuda"))
    assert rc == 2 and fake_generate == [] and "CUDA is not available" in capsys.readouterr().err


def test_output_folders_must_be_writable_before_generating(fake_generate, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = main(_gen("--out", str(blocker / "sub" / "v.mp4")))
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "is a file, not a folder" in err
    rc = main(_gen("--out", str(tmp_path / "ok.mp4"), "--frames-dir", str(blocker / "png")))
    err = capsys.readouterr().err
    assert rc == 2 and "--frames-dir" in err and "is a file, not a folder" in err
    rc = main(_gen("--out", str(tmp_path)))  # an existing folder, even with a .mp4-less name, is refused
    assert rc == 2 and ".mp4" in capsys.readouterr().err
    (tmp_path / "dir.mp4").mkdir()
    rc = main(_gen("--out", str(tmp_path / "dir.mp4")))
    assert rc == 2 and "is a folder" in capsys.readouterr().err
    assert fake_generate == []
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "read_only"
        ro.mkdir(mode=0o555)
        rc = main(_gen("--out", str(ro / "v.mp4")))
        assert rc == 2 and "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("with_frames_dir", [False, True])
def test_a_failed_mp4_still_leaves_the_frames_as_png(
    fake_generate, tmp_path, capsys, monkeypatch, with_frames_dir
) -> None:
    import mochi_core.video as video

    def broken(*a, **k):
        raise Exception("[Errno 22] Invalid argument: encoder libx264 refused the options")  # as PyAV raises

    monkeypatch.setattr(video, "write_mp4", broken)
    out = tmp_path / "fox.mp4"
    extra = ["--frames-dir", str(tmp_path / "png")] if with_frames_dir else []
    rc = main(_gen("--out", str(out), *extra))
    err = capsys.readouterr().err
    png_dir = tmp_path / "png" if with_frames_dir else tmp_path / "fox_frames"
    assert rc == 1 and len(fake_generate) == 1
    assert "writing" in err and "libx264" in err and str(png_dir) in err and "PNG" in err
    assert len(sorted(png_dir.glob("frame_*.png"))) == 7


def test_parse_bytes_names_the_option() -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_bytes("20 parsecs", name="--memory-budget")
    assert "--memory-budget" in str(exc.value) and "budget=" not in str(exc.value).replace("--memory-budget=", "")


# ---------------------------------------------------------------------------------------------- one rule for both commands


def test_plan_and_generate_share_the_size_defaults() -> None:
    parser = build_parser()
    gen = parser.parse_args(["generate", "--prompt", "x", "--dit", "d", "--vae", "v", "--t5", "t"])
    plan = parser.parse_args(["plan", "--budget", "12GB"])
    assert (gen.width, gen.height, gen.frames) == (plan.width, plan.height, plan.frames) == (848, 480, 31)


@pytest.mark.parametrize(
    "size, words",
    [
        (["--frames", "30"], "frames=30 is not allowed: Mochi needs 6k+1 frames (1, 7, 13, ..., 163); nearest valid counts: 25 or 31"),
        (["--width", "50"], "width=50 is not allowed: it must be a positive multiple of 16 (e.g. 48 or 64)"),
    ],
)  # fmt: skip
def test_plan_and_generate_refuse_a_size_with_the_same_message(tmp_path, capsys, size, words) -> None:
    """The API, ``generate`` and ``plan`` check sizes with one rule (mochi_core.options.check_size)."""
    from mochi_core.pipeline import generate

    rc_gen = main(_gen("--out", str(tmp_path / "v.mp4"), *size))
    err_gen = capsys.readouterr().err
    rc_plan = main(["plan", "--budget", "12GB", *size])
    err_plan = capsys.readouterr().err
    assert rc_gen == rc_plan == 2
    assert err_gen == err_plan == f"error: {words}\n"
    key, value = size[0][2:], int(size[1])
    with pytest.raises(InvalidInputError) as api:
        generate("x", dit="d", vae="v", text_encoder="t", **{key: value})
    assert str(api.value) == words


@pytest.mark.parametrize("command", ["generate", "plan"])
def test_a_budget_without_a_unit_is_refused_not_read_as_bytes(tmp_path, capsys, command) -> None:
    args = _gen("--out", str(tmp_path / "v.mp4")) if command == "generate" else ["plan"]
    rc = main([*args, "--budget", "12"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--budget='12' has no unit: write 12GB" in err and "12GiB" in err


def test_plan_prints_the_decode_tile_with_units(capsys) -> None:
    assert main(["plan", "--frames", "163", "--budget", "12GB"]) == 0
    out = capsys.readouterr().out
    assert "decode tile 3 latent frames x 60x106 latents (up to 18 frames of 848x480 px), 10 tiles" in out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--cfg", "nan"], "cfg=nan is not allowed: cfg must be a finite number >= 0"),
        (["--cfg", "inf"], "cfg=inf is not allowed: cfg must be a finite number >= 0"),
        (["--threshold-noise", "nan"], "threshold_noise=nan is not allowed"),
        (["--memory-budget", "nan"], "--memory-budget='nan' is not a size"),
        (["--budget", "inf"], "--budget='inf' is not a size"),
    ],
)
def test_nan_and_inf_are_refused_before_anything_loads(tmp_path, capsys, extra, words) -> None:
    rc = main(_gen("--out", str(tmp_path / "v.mp4"), *extra))
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err


def test_speed_flags_reach_generate(fake_generate, tmp_path) -> None:
    rc = main(_gen("--out", str(tmp_path / "v.mp4"), "--preset", "fast", "--teacache-threshold", "0.06",
                   "--max-skip-steps", "3", "--stg-scale", "1", "--stg-blocks", "30,34", "--stg-rescale", "0.7"))  # fmt: skip
    assert rc == 0
    (kw,) = fake_generate
    assert (kw["preset"], kw["steps"], kw["cfg"]) == ("fast", None, None)
    assert (kw["teacache_threshold"], kw["max_skip_steps"]) == (0.06, 3)
    assert (kw["stg_scale"], kw["stg_blocks"], kw["stg_rescale"]) == (1.0, "30,34", 0.7)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--preset", "turbo"], ["preset='turbo'", "default, fast"]),
        (["--preset", "fast", "--steps", "20"], ["preset='fast' sets steps=8", "leave steps out"]),
        (["--teacache-threshold", "-1"], ["teacache_threshold=-1"]),
        (["--stg-scale", "1", "--stg-blocks", "x"], ["stg_blocks='x'"]),
    ],
)
def test_bad_speed_flags_exit_2_before_any_model_is_read(tmp_path, capsys, extra, words) -> None:
    rc = main(_gen("--out", str(tmp_path / "v.mp4"), *extra))
    err = capsys.readouterr().err
    assert rc == 2, err
    for w in words:
        assert w in err, err
