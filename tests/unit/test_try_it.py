"""README "Try it in two minutes": the commands and the Python snippet of that section run as written.

The README's code blocks are read from README.md itself (the fenced blocks under that heading), so the section
cannot drift from what works: the shell block runs in a fresh folder with `python` meaning this environment's
Python, and the Python block runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADING = "## Try it in two minutes"


def _blocks(lang: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    section = text[start : end if end > 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # `python` and `mochi` as a user of a fresh install would have them
    # (wrappers, not symlinks: a symlinked venv interpreter would not find its environment)
    for name, args in (("python", ""), ("mochi", " -m mochi_core")):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}"{args} "$@"\n')
        wrapper.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.slow
def test_readme_try_it_commands_and_python_api_run_as_written(tmp_path: Path) -> None:
    (shell,) = _blocks("bash")
    (python,) = _blocks("python")
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mp4s = sorted(work.rglob("*.mp4"))
    assert mp4s, "the shell block wrote no MP4"
    script = work / "try_it.py"
    script.write_text(python)
    out = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    new = sorted(set(work.rglob("*.mp4")) - set(mp4s))
    assert new, "the Python block wrote no MP4"
    for path in mp4s + new:
        assert path.stat().st_size > 1000
