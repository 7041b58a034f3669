"""scripts/headless.py without a ComfyUI: one-line errors with their fix, readable node errors, loader overrides.

(The same client against the real ComfyUI host: tests/host/test_headless.py.)"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from headless import LOADERS, UsageError, apply_overrides, find_nodes, format_node_errors, main  # noqa: E402

API = REPO / "workflows" / "api" / "mochi_text_to_video.json"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mochi.headless" and r.levelno >= logging.ERROR]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_one_line_saying_to_start_comfyui(caplog: pytest.LogCaptureFixture) -> None:
    server = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main(["--server", server, "--workflow", str(API), "--prompt", "a fox"]) == 1
    (line,) = _errors(caplog)
    assert server in line and "connection refused" in line and "start it" in line and "--server" in line
    assert "Errno" not in line and "Traceback" not in line


@pytest.mark.parametrize("url", ["127.0.0.1:8188", "localhost", "ws://127.0.0.1:8188", "http://"])
def test_server_without_http_is_refused_with_the_expected_form(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main(["--server", url, "--workflow", str(API)]) == 2
    (line,) = _errors(caplog)
    assert repr(url) in line and "http://127.0.0.1:8188" in line


def test_missing_workflow_file_is_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope.json"
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main(["--workflow", str(missing)]) == 2
    (line,) = _errors(caplog)
    assert f"workflow file not found: {missing}" in line and "workflows/api" in line


def test_ui_workflow_and_non_json_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ui = REPO / "workflows" / "mochi_text_to_video.json"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with caplog.at_level(logging.INFO, logger="mochi.headless"):
        assert main(["--workflow", str(ui)]) == 2
        assert main(["--workflow", str(bad)]) == 2
    ui_line, bad_line = _errors(caplog)
    assert "is a UI workflow" in ui_line and "workflows/api" in ui_line
    assert "cannot be read as JSON" in bad_line


def _renumbered(prompt: dict) -> dict:
    """The same graph under other node ids (links rewritten)."""
    ids = {old: f"n{i * 7 + 100}" for i, old in enumerate(prompt)}
    out = {}
    for old, node in prompt.items():
        inputs = {
            k: [ids[v[0]], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in ids else v
            for k, v in node["inputs"].items()
        }
        out[ids[old]] = {**node, "inputs": inputs}
    return out


def test_loader_overrides_set_the_file_names_whatever_the_ids() -> None:
    prompt = _renumbered(json.loads(API.read_text()))
    out = apply_overrides(prompt, dit="mochi_preview_bf16.safetensors", t5="t5.safetensors", vae="sub/v.safetensors")
    for kind, name in (
        ("dit", "mochi_preview_bf16.safetensors"),
        ("t5", "t5.safetensors"),
        ("vae", "sub/v.safetensors"),
    ):
        (nid,) = find_nodes(out, tuple(LOADERS[kind]))
        node = out[nid]
        assert node["inputs"][LOADERS[kind][node["class_type"]]] == name
    assert prompt != out and find_nodes(prompt, "MochiDiTLoader") == find_nodes(out, "MochiDiTLoader")
    without = {k: v for k, v in prompt.items() if v["class_type"] != "MochiVAELoader"}
    with pytest.raises(UsageError, match="--vae: the workflow has no MochiVAELoader or VAELoader"):
        apply_overrides(without, vae="x.safetensors")


def test_node_errors_are_printed_once_each_readably() -> None:
    """ComfyUI's shape of a refusal: one node-level message repeated under six inputs, plus a second error."""
    msg = "frames=30 is not allowed: Mochi needs 6k+1 frames (1, 7, 13, ..., 163); nearest valid counts: 25 or 31"
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": {
            "7": {
                "class_type": "MochiSampler",
                "dependent_outputs": ["9"],
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"{name} - {msg}",  # ComfyUI: the input name, then the node's message
                        "extra_info": {"input_name": name},
                    }
                    for name in ("width", "height", "frames", "steps", "threshold_noise", "linear_steps")
                ]
                + [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "dit_name: 'x.safetensors' not in [...]",
                        "extra_info": {"input_name": "dit_name"},
                    }
                ],
            }
        },
    }
    lines = format_node_errors(body)
    assert len(lines) == 2 and sum(msg in line for line in lines) == 1, lines
    assert lines[0] == f"node 7 MochiSampler: {msg}"
    assert lines[1] == "node 7 MochiSampler (input dit_name): Value not in list: dit_name: 'x.safetensors' not in [...]"
    assert format_node_errors({"error": {"message": "Cannot execute because node 5 does not exist."}}) == [
        "Cannot execute because node 5 does not exist."
    ]
