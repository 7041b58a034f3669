"""Shipped workflows: generated from one definition, UI and API twins agree, only core nodes and ours, published
model file names; the headless client's overrides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import build_workflows  # noqa: E402
from headless import apply_overrides, find_nodes  # noqa: E402

from nodes import NODE_CLASS_MAPPINGS  # noqa: E402

UI = sorted((REPO / "workflows").glob("*.json"))
PUBLISHED = {
    "dit_name": {"mochi_preview_fp8_scaled.safetensors", "mochi_preview_bf16.safetensors"},
    "vae_name": {"mochi_vae.safetensors"},
    "t5_name": {"t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"},
    "lora_name": {"model_2000.lora.safetensors"},  # the name Genmo's fine-tuner gives its LoRA files
}


def test_files_on_disk_match_the_definition() -> None:
    assert build_workflows.main(["--check"]) == 0


def test_expected_workflows_are_shipped() -> None:
    assert {p.stem for p in UI} == {
        "mochi_text_to_video",
        "mochi_text_to_video_low_vram",
        "mochi_video_to_video",
        "mochi_text_to_video_lora",
    }
    for p in UI:
        assert (REPO / "workflows" / "api" / p.name).exists()


def ui_to_api(ui: dict) -> dict:
    """Independent UI -> API conversion: widget values by INPUT order (control widget skipped), links by slot."""
    links = {link[0]: link for link in ui["links"]}
    out = {}
    for node in ui["nodes"]:
        spec = build_workflows.node_spec(node["type"])
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        values = iter(node["widgets_values"])
        inputs = {}
        for name, _typ, kind in spec["inputs"]:
            if kind == "c":
                next(values)
                continue
            value = next(values) if kind == "w" else None
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif kind == "w":
                inputs[name] = value
        assert next(values, "end") == "end", f"{node['type']}: more widget values than widgets"
        out[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node["title"]}}
    return out


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_and_api_twins_agree(path: Path) -> None:
    ui = json.loads(path.read_text())
    api = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    assert ui_to_api(ui) == api


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_structure(path: Path) -> None:
    ui = json.loads(path.read_text())
    assert ui["version"] == 0.4 and {"nodes", "links", "groups", "config", "extra"} <= set(ui)
    ids = {n["id"] for n in ui["nodes"]}
    assert ui["last_node_id"] == max(ids) and ui["last_link_id"] == len(ui["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        s = next(n for n in ui["nodes"] if n["id"] == src)
        d = next(n for n in ui["nodes"] if n["id"] == dst)
        assert link_id in s["outputs"][src_slot]["links"] and d["inputs"][dst_slot]["link"] == link_id
        assert s["outputs"][src_slot]["type"] == d["inputs"][dst_slot]["type"] == typ
    for node in ui["nodes"]:
        assert node["type"] in NODE_CLASS_MAPPINGS or node["type"] in build_workflows.CORE_NODES, node["type"]


@pytest.mark.parametrize("path", sorted((REPO / "workflows" / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_workflow_uses_published_model_names_and_valid_sizes(path: Path) -> None:
    api = json.loads(path.read_text())
    for node in api.values():
        for key, allowed in PUBLISHED.items():
            if key in node["inputs"]:
                assert node["inputs"][key] in allowed
    (sid,) = find_nodes(api, "MochiSampler")
    s = api[sid]["inputs"]
    assert (s["frames"] - 1) % 6 == 0 and s["width"] % 16 == 0 and s["height"] % 16 == 0


def test_headless_overrides_follow_the_sampler_links() -> None:
    api = json.loads((REPO / "workflows" / "api" / "mochi_text_to_video.json").read_text())
    out = apply_overrides(api, text="a cat", negative="blurry", seed=7, frames=13, steps=3, filename_prefix="x/y")
    (sid,) = find_nodes(out, "MochiSampler")
    s = out[sid]["inputs"]
    assert (s["seed"], s["frames"], s["steps"]) == (7, 13, 3)
    assert out[s["positive"][0]]["inputs"]["text"] == "a cat"
    assert out[s["negative"][0]]["inputs"]["text"] == "blurry"
    assert api[sid]["inputs"]["seed"] == 12345  # the original is not modified
    assert all(n["inputs"]["filename_prefix"] == "x/y" for n in out.values() if "filename_prefix" in n["inputs"])
    with pytest.raises(ValueError, match="no MochiSampler"):
        apply_overrides({"1": {"class_type": "SaveVideo", "inputs": {}}}, seed=1)


def test_core_node_comparison_finds_a_difference() -> None:
    """The /object_info comparison run against the real host (tests/host/test_workflows.py) can fail."""

    def entry(spec: dict) -> dict:
        kinds = {"COMBO": ["a", "b"]}
        return {
            "input": {"required": {n: [kinds.get(t, t), {}] for n, t, _ in spec["inputs"]}},
            "input_order": {"required": [n for n, _, _ in spec["inputs"]]},
            "output": [t for _, t in spec["outputs"]],
            "output_name": [n for n, _ in spec["outputs"]],
        }

    info = {k: entry(v) for k, v in build_workflows.CORE_NODES.items()}
    assert build_workflows.core_node_mismatches(info) == []
    info["ImageScale"]["input_order"]["required"].reverse()
    del info["SaveVideo"]
    problems = sorted(build_workflows.core_node_mismatches(info))
    assert len(problems) == 2, problems
    assert problems[0].startswith("ImageScale inputs: ours") and problems[1] == "SaveVideo: not in /object_info"
