"""The real ComfyUI host imports the pack cleanly and lists its nodes."""

from __future__ import annotations

import pytest

from nodes import NODE_CLASS_MAPPINGS

pytestmark = pytest.mark.host


def test_pack_imports_without_errors(comfy_host) -> None:
    log = comfy_host.log()
    assert "mochi-video-nodes" in log, log[-3000:]
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "mochi-video-nodes" in line]
    assert not failed, log[-5000:]


def test_object_info_lists_every_node_with_metadata(comfy_host) -> None:
    info = comfy_host.client.object_info()
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id in info, f"{node_id} missing from /object_info"
        entry = info[node_id]
        assert entry["category"].startswith("Mochi/")
        assert entry["description"]
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_empty_latent_runs_and_validates(comfy_host) -> None:
    ok = {
        "1": {"class_type": "MochiEmptyLatent", "inputs": {"width": 64, "height": 32, "frames": 13, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/empty"}},
    }
    result = comfy_host.client.run(ok, timeout=120)
    assert result.status == "success", result.error
    bad = {**ok, "1": {**ok["1"], "inputs": {**ok["1"]["inputs"], "frames": 30}}}
    from comfy_client import PromptRejected

    with pytest.raises(PromptRejected) as err:
        comfy_host.client.queue(bad)
    assert "frames=30" in str(err.value.body) and "25 or 31" in str(err.value.body)
