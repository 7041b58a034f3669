"""Package hygiene: mochi_core never needs ComfyUI, the pack imports outside ComfyUI, no import-time side effects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFY_MODULES = ("comfy", "folder_paths", "server", "latent_preview", "comfy_api", "comfy_extras", "execution")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mochi_core_sources_never_import_comfyui() -> None:
    offenders = []
    for path in (REPO / "mochi_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in COMFY_MODULES]
    assert not offenders, offenders


def test_importing_every_mochi_core_module_loads_no_comfyui() -> None:
    code = (
        "import importlib, pkgutil, sys, mochi_core\n"
        "for m in pkgutil.walk_packages(mochi_core.__path__, 'mochi_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r}]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_public_api_names_resolve() -> None:
    proc = _run("import mochi_core\nfor n in mochi_core.__all__: getattr(mochi_core, n)\nprint('ok')")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pack_imports_outside_comfyui_and_exports_nodes() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mochi_pack', {str(REPO / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['mochi_pack'] = mod; spec.loader.exec_module(mod)\n"
        "assert mod.NODE_CLASS_MAPPINGS and set(mod.NODE_CLASS_MAPPINGS) == set(mod.NODE_DISPLAY_NAME_MAPPINGS)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r}]\n"
        "assert not bad, bad\n"
        "print(len(mod.NODE_CLASS_MAPPINGS))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) >= 1


def test_requirements_match_pyproject_dependencies() -> None:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(deps) == sorted(reqs)
    assert not any(r.split("=")[0].split(">")[0].strip() in ("torch", "torchvision") for r in reqs)
