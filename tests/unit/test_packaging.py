"""`mochi_core` installs as a package with a `mochi` command, and a Python without torch gets one clear line.

The install test uses the real pip and setuptools of the test environment, offline (no build isolation), into a
throwaway virtual environment that sees the test environment's packages (torch, safetensors) through a `.pth`
file, and runs the installed command from a folder outside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_wheel_holds_the_engine_and_the_console_command(tmp_path: Path) -> None:
    out = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mochi_core/__init__.py" in names
    assert "mochi_core/dit/model.py" in names and "mochi_core/formats/io.py" in names
    # the ComfyUI layer and the tests are not part of the installed package
    assert not [n for n in names if n.startswith(("nodes/", "tests/", "bench/", "scripts/"))]
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mochi = mochi_core.__main__:run" in text


@pytest.mark.slow
def test_editable_install_gives_an_importable_engine_and_a_mochi_command(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    # the new environment sees this one's packages (pip, setuptools, torch) after its own
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = _run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert out.returncode == 0, out.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = _run(
        [str(py), "-c", "import mochi_core, pathlib; print(pathlib.Path(mochi_core.__file__).parent)"],
        outside,
        _clean_env(),
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == REPO / "mochi_core"
    mochi = env_dir / "bin" / "mochi"
    assert mochi.exists()
    plan = _run(
        [str(mochi), "plan", "--width", "848", "--height", "480", "--frames", "31", "--budget", "20GB"],
        outside,
        _clean_env(),
    )
    assert plan.returncode == 0, plan.stderr
    assert "fits" in (plan.stdout + plan.stderr).lower()


@pytest.mark.parametrize("command", [["plan", "--budget", "20GB"], ["generate", "--prompt", "x"], ["--help"]])
def test_a_python_without_torch_gets_one_clear_line(command: list[str], tmp_path: Path) -> None:
    # `sys.modules["torch"] = None` makes every `import torch` fail exactly as in a Python without torch
    code = (
        "import sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); "
        "from mochi_core.__main__ import run; sys.exit(run(sys.argv[2:]))"
    )
    out = _run([sys.executable, "-c", code, str(REPO), *command], tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "PyTorch is not installed" in lines[0] and "pip install torch" in lines[0]
    assert "Traceback" not in out.stderr and "invalid choice" not in out.stderr
