"""Build the shipped workflows from ONE definition: UI format (``workflows/*.json``) and API twins (``workflows/api/``).

    python scripts/build_workflows.py          # (re)write the files
    python scripts/build_workflows.py --check  # exit 1 if a file on disk differs from the definition
    python scripts/build_workflows.py --check --server http://127.0.0.1:8188  # also compare core nodes with /object_info

UI format: LiteGraph/ComfyUI workflow version 0.4 (``nodes``, ``links``, ``groups``, ``config``, ``extra``,
``version``), ``widgets_values`` in ``INPUT_TYPES`` order with the frontend's ``control_after_generate`` value after
a seed. API format: ``{id: {"class_type", "inputs", "_meta": {"title"}}}`` as POSTed to ``/prompt``. Widget order
of our nodes is read from their ``INPUT_TYPES``; core nodes' from :data:`CORE_NODES` (ComfyUI 0.3.75 facts),
which :func:`core_node_mismatches` compares with a running server's ``/object_info`` (``--server``; run against
the real host by ``tests/host/test_workflows.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL = "control_after_generate"

# Published Comfy-Org file names (huggingface.co/Comfy-Org/mochi_preview_repackaged, split_files/...).
DIT_FP8 = "mochi_preview_fp8_scaled.safetensors"
DIT_BF16 = "mochi_preview_bf16.safetensors"
VAE_FILE = "mochi_vae.safetensors"
T5_FP16 = "t5xxl_fp16.safetensors"
T5_FP8 = "t5xxl_fp8_e4m3fn_scaled.safetensors"
V2V_INPUT = "mochi_input.mp4"
#: the file name Genmo's fine-tuner gives a LoRA (``model_{step}.lora.safetensors``; 2000 steps here)
LORA_FILE = "model_2000.lora.safetensors"

PROMPT = (
    "A close-up of a red fox walking through fresh snow in a quiet birch forest at sunrise, soft golden light, "
    "breath visible in the cold air, shallow depth of field, cinematic, highly detailed"
)

#: Core nodes used by the workflows: ordered inputs (name, type, is_widget) and outputs (name, type).
CORE_NODES: dict[str, dict[str, list[tuple[str, ...]]]] = {
    "CreateVideo": {
        "inputs": [("images", "IMAGE", ""), ("fps", "FLOAT", "w"), ("audio", "AUDIO", "")],
        "outputs": [("VIDEO", "VIDEO")],
    },
    "SaveVideo": {
        "inputs": [
            ("video", "VIDEO", ""),
            ("filename_prefix", "STRING", "w"),
            ("format", "COMBO", "w"),
            ("codec", "COMBO", "w"),
        ],
        "outputs": [],
    },
    "LoadVideo": {"inputs": [("file", "COMBO", "w")], "outputs": [("VIDEO", "VIDEO")]},
    "GetVideoComponents": {
        "inputs": [("video", "VIDEO", "")],
        "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
    },
    "ImageFromBatch": {
        "inputs": [("image", "IMAGE", ""), ("batch_index", "INT", "w"), ("length", "INT", "w")],
        "outputs": [("IMAGE", "IMAGE")],
    },
    "ImageScale": {
        "inputs": [
            ("image", "IMAGE", ""),
            ("upscale_method", "COMBO", "w"),
            ("width", "INT", "w"),
            ("height", "INT", "w"),
            ("crop", "COMBO", "w"),
        ],
        "outputs": [("IMAGE", "IMAGE")],
    },
}


def node_spec(class_type: str) -> dict[str, list[tuple[str, ...]]]:
    """Ordered inputs ``(name, type, "w" for widgets)`` (with the seed's control widget) and outputs of a node."""
    if class_type in CORE_NODES:
        return CORE_NODES[class_type]
    sys.path.insert(0, str(REPO))
    from nodes import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[class_type]
    inputs: list[tuple[str, ...]] = []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list):
                inputs.append((name, "COMBO", "w"))
            elif kind in WIDGET_TYPES:
                inputs.append((name, kind, "w"))
                if opts.get(CONTROL):
                    inputs.append((CONTROL, "COMBO", "c"))
            else:
                inputs.append((name, kind, ""))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return {"inputs": inputs, "outputs": list(zip(names, cls.RETURN_TYPES))}


@dataclass
class N:
    """One node of a workflow definition: id, type, title, widget values by name, UI position."""

    id: int
    type: str
    title: str
    widgets: dict[str, Any]
    pos: tuple[int, int]
    size: tuple[int, int] = (320, 130)
    links: dict[str, tuple[int, str]] = field(default_factory=dict)  # input name -> (source id, output name)


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list[N]

    def by_id(self) -> dict[int, N]:
        return {n.id: n for n in self.nodes}


def _out_slot(spec: dict[str, list[tuple[str, ...]]], name: str) -> tuple[int, str]:
    for i, (out_name, out_type) in enumerate(spec["outputs"]):
        if out_name == name:
            return i, out_type
    raise KeyError(f"no output {name!r} in {spec['outputs']}")


def _order(wf: Workflow) -> list[int]:
    done: list[int] = []
    pending = {n.id: {src for src, _ in n.links.values()} for n in wf.nodes}
    while pending:
        ready = sorted(i for i, deps in pending.items() if deps <= set(done))
        if not ready:
            raise ValueError(f"{wf.name}: cycle among {sorted(pending)}")
        done.extend(ready)
        for i in ready:
            pending.pop(i)
    return done


def to_api(wf: Workflow) -> dict[str, Any]:
    """API-format prompt of a workflow definition."""
    out: dict[str, Any] = {}
    for n in wf.nodes:
        spec = node_spec(n.type)
        inputs: dict[str, Any] = {}
        for name, _typ, kind in spec["inputs"]:
            if kind == "c":
                continue
            if name in n.links:
                src, out_name = n.links[name]
                inputs[name] = [str(src), _out_slot(node_spec(wf.by_id()[src].type), out_name)[0]]
            elif kind == "w" and name in n.widgets:
                inputs[name] = n.widgets[name]
            elif kind == "w":
                raise ValueError(f"{wf.name}: node {n.id} {n.type} has no value for widget {name!r}")
        out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title}}
    return out


def _ui_inputs(n: N) -> list[tuple[str, str, bool]]:
    """The node's UI input slots in order: every socket input, plus widgets fed by a link: (name, type, is_widget)."""
    slots = []
    for name, typ, kind in node_spec(n.type)["inputs"]:
        if kind == "":
            slots.append((name, typ, False))
        elif kind == "w" and name in n.links:
            slots.append((name, typ, True))
    return slots


def to_ui(wf: Workflow) -> dict[str, Any]:
    """UI-format (version 0.4) workflow of a workflow definition."""
    ids = wf.by_id()
    order = _order(wf)
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    in_links: dict[tuple[int, str], int] = {}
    for n in wf.nodes:  # link ids in node order, then input order
        for target_slot, (name, _typ, _w) in enumerate(_ui_inputs(n)):
            if name not in n.links:
                continue
            src, out_name = n.links[name]
            slot, out_type = _out_slot(node_spec(ids[src].type), out_name)
            link_id = len(links) + 1
            links.append([link_id, src, slot, n.id, target_slot, out_type])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, name)] = link_id
    ui_nodes = []
    for n in wf.nodes:
        spec = node_spec(n.type)
        inputs = []
        for name, typ, is_widget in _ui_inputs(n):
            entry: dict[str, Any] = {"name": name, "type": typ, "link": in_links.get((n.id, name))}
            if is_widget:
                entry["widget"] = {"name": name}
            inputs.append(entry)
        outputs = [
            {"name": name, "type": typ, "links": out_links.get((n.id, slot), []), "slot_index": slot}
            for slot, (name, typ) in enumerate(spec["outputs"])
        ]
        widgets = []
        for name, _typ, kind in spec["inputs"]:
            if kind == "c":
                widgets.append(n.widgets.get(CONTROL, "fixed"))
            elif kind == "w":
                widgets.append(n.widgets[name])
        ui_nodes.append(
            {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": list(n.size),
                "flags": {},
                "order": order.index(n.id),
                "mode": 0,
                "inputs": inputs,
                "outputs": outputs,
                "title": n.title,
                "properties": {"Node name for S&R": n.type},
                "widgets_values": widgets,
            }
        )
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mochi-video-nodes/workflows/{wf.name}")),
        "revision": 0,
        "last_node_id": max(ids),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [170, 120]}, "info": {"name": wf.name, "description": wf.description}},
        "version": 0.4,
    }


# ------------------------------------------------------------------------------------------------------------------
# The workflows


def _loaders(dit: str, t5: str, dit_memory: str = "auto", dit_budget: float = 0.0) -> list[N]:
    return [
        N(
            1,
            "MochiDiTLoader",
            "Load Mochi DiT",
            {
                "dit_name": dit,
                "weight_dtype": "default",
                "attention": "sdpa",
                "memory": dit_memory,
                "memory_budget_gb": dit_budget,
            },
            (40, 60),
            (340, 180),
        ),
        N(
            2,
            "MochiT5Loader",
            "Load T5-XXL",
            {"t5_name": t5, "weight_dtype": "default", "dtype": "fp32", "tokenizer": ""},
            (40, 300),
            (340, 160),
        ),
        N(3, "MochiVAELoader", "Load Mochi VAE", {"vae_name": VAE_FILE, "dtype": "auto"}, (40, 520), (340, 90)),
        N(4, "MochiTextEncode", "Positive prompt", {"text": PROMPT}, (420, 60), (420, 200), {"t5": (2, "t5")}),
        N(5, "MochiTextEncode", "Negative prompt", {"text": ""}, (420, 300), (420, 120), {"t5": (2, "t5")}),
    ]


def _sampler(frames: int, *, latent: bool = False, denoise: float = 1.0, seed: int = 12345, model_from: int = 1) -> N:
    links = {"model": (model_from, "model"), "positive": (4, "conditioning"), "negative": (5, "conditioning")}
    if latent:
        links["latent"] = (12, "latent")
    return N(
        6,
        "MochiSampler",
        "Mochi Sampler",
        {
            "width": 848,
            "height": 480,
            "frames": frames,
            "steps": 64,
            "cfg": 6.0,
            "seed": seed,
            CONTROL: "fixed",
            "threshold_noise": 0.025,
            "linear_steps": 0,
            "denoise": denoise,
            # doing less work: all off (workflows saved before these inputs existed load with these defaults)
            "preset": "default",
            "teacache_threshold": 0.0,
            "max_skip_steps": 0,
            "stg_scale": 0.0,
            "stg_blocks": "34",
            "stg_rescale": 0.0,
        },
        (880, 60),
        (340, 330),
        links,
    )


def _output(budget: float, prefix: str) -> list[N]:
    return [
        N(
            7,
            "MochiVAEDecodeTiled",
            "Mochi VAE Decode (Tiled)",
            {"memory_budget_gb": budget, "tile_frames": 0, "tile_height": 0, "tile_width": 0},
            (1260, 60),
            (340, 170),
            {"vae": (3, "vae"), "samples": (6, "latent")},
        ),
        N(8, "CreateVideo", "Create Video", {"fps": 30.0}, (1640, 60), (270, 80), {"images": (7, "images")}),
        N(
            9,
            "SaveVideo",
            "Save Video",
            {"filename_prefix": prefix, "format": "mp4", "codec": "h264"},
            (1640, 200),
            (400, 400),
            {"video": (8, "VIDEO")},
        ),
    ]


def definitions() -> list[Workflow]:
    t2v = Workflow(
        "mochi_text_to_video",
        "Mochi 1 text-to-video: 848x480, 31 frames, 64 steps, cfg 6 (Genmo defaults). Models: "
        f"diffusion_models/{DIT_FP8}, text_encoders/{T5_FP16}, vae/{VAE_FILE}.",
        _loaders(DIT_FP8, T5_FP16) + [_sampler(31)] + _output(0.0, "mochi/t2v"),
    )
    low = Workflow(
        "mochi_text_to_video_low_vram",
        "Mochi 1 text-to-video for 12-16 GB GPUs: fp8 DiT with block streaming inside a 6 GB budget, fp8 T5, VAE "
        "decode tiled into a 3 GB budget.",
        _loaders(DIT_FP8, T5_FP8, "stream", 6.0) + [_sampler(31)] + _output(3.0, "mochi/t2v_lowvram"),
    )
    v2v_nodes = (
        _loaders(DIT_FP8, T5_FP16)
        + [
            N(10, "LoadVideo", "Load Video", {"file": V2V_INPUT}, (40, 660), (320, 300)),
            N(11, "GetVideoComponents", "Get Video Components", {}, (400, 660), (260, 90), {"video": (10, "VIDEO")}),
            N(
                13,
                "ImageFromBatch",
                "First 31 frames",
                {"batch_index": 0, "length": 31},
                (400, 800),
                (260, 100),
                {"image": (11, "images")},
            ),
            N(
                14,
                "ImageScale",
                "Resize to 848x480",
                {"upscale_method": "bilinear", "width": 848, "height": 480, "crop": "center"},
                (700, 660),
                (300, 140),
                {"image": (13, "IMAGE")},
            ),
            N(
                12,
                "MochiVAEEncode",
                "Mochi VAE Encode",
                {},
                (700, 840),
                (260, 60),
                {"vae": (3, "vae"), "images": (14, "IMAGE")},
            ),
            _sampler(31, latent=True, denoise=0.6),
        ]
        + _output(0.0, "mochi/v2v")
    )
    v2v = Workflow(
        "mochi_video_to_video",
        f"Mochi 1 video-to-video: input/{V2V_INPUT} -> first 31 frames at 848x480 -> encode -> resample with "
        "denoise 0.6 -> decode.",
        v2v_nodes,
    )
    lora = Workflow(
        "mochi_text_to_video_lora",
        f"Mochi 1 text-to-video with a LoRA: loras/{LORA_FILE} (Genmo's fine-tuner output; a diffusers / peft LoRA "
        "works too) at strength 1.0 on the fp8 DiT; chain more Mochi LoRA nodes to stack LoRAs.",
        _loaders(DIT_FP8, T5_FP16)
        + [
            N(
                15,
                "MochiLoRA",
                "Mochi LoRA",
                {"lora_name": LORA_FILE, "strength": 1.0},
                (420, 460),
                (340, 110),
                {"model": (1, "model")},
            ),
            _sampler(31, model_from=15),
        ]
        + _output(0.0, "mochi/t2v_lora"),
    )
    return [t2v, low, v2v, lora]


def render() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for wf in definitions():
        files[WORKFLOWS / f"{wf.name}.json"] = json.dumps(to_ui(wf), indent=2) + "\n"
        files[WORKFLOWS / "api" / f"{wf.name}.json"] = json.dumps(to_api(wf), indent=2) + "\n"
    return files


def _object_info_inputs(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(name, type, "w" for widgets)`` of one ``/object_info`` entry, in the server's input order."""
    order = info.get("input_order") or {sec: list(v) for sec, v in info.get("input", {}).items()}
    out = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        for name in order.get(section, []):
            kind = specs[name][0]
            kind = "COMBO" if isinstance(kind, list) else str(kind)
            out.append((name, kind, "w" if kind in WIDGET_TYPES else ""))
    return out


def core_node_mismatches(object_info: dict[str, Any]) -> list[str]:
    """Differences between :data:`CORE_NODES` and a server's ``/object_info`` (input names, order, types and
    widget-ness; output names and types); empty when the workflows' core-node facts hold for that server."""
    problems = []
    for class_type, spec in CORE_NODES.items():
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"{class_type}: not in /object_info")
            continue
        live_inputs = _object_info_inputs(info)
        if [tuple(i) for i in spec["inputs"]] != live_inputs:
            problems.append(f"{class_type} inputs: ours {spec['inputs']} != server {live_inputs}")
        live_outputs = list(zip(info.get("output_name", []), info.get("output", [])))
        if [tuple(o) for o in spec["outputs"]] != live_outputs:
            problems.append(f"{class_type} outputs: ours {spec['outputs']} != server {live_outputs}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    ap.add_argument("--server", help="also compare the core nodes used with this ComfyUI's /object_info")
    args = ap.parse_args(argv)
    if args.server:
        sys.path.insert(0, str(REPO / "scripts"))
        from comfy_client import ComfyClient

        problems = core_node_mismatches(ComfyClient(args.server).object_info())
        if problems:
            sys.stderr.write("core nodes differ from the server:\n" + "\n".join(problems) + "\n")
            return 1
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        sys.stderr.write("out of date (run scripts/build_workflows.py): " + ", ".join(str(p) for p in stale) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
