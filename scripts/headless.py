"""Example headless client: queue a shipped API workflow on a running ComfyUI, follow progress, download the video.

Standard library only (plus ``scripts/comfy_client.py`` beside it):

    python scripts/headless.py --server http://127.0.0.1:8188 \\
        --workflow workflows/api/mochi_text_to_video.json \\
        --prompt "a red fox in the snow" --seed 42 --frames 31 --steps 64 --out ./output

Overrides are applied to the sampler node (``MochiSampler``: seed, frames, steps, width, height, cfg) and to the
text nodes its ``positive`` / ``negative`` inputs are linked to (``text``), so any workflow built from our
nodes works, whatever its node ids. Progress comes from ComfyUI's ``/ws`` events; the files the output nodes
report are fetched with ``/view``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_client import ComfyClient, PromptRejected, RunResult  # noqa: E402

log = logging.getLogger("mochi.headless")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = REPO / "workflows" / "api" / "mochi_text_to_video.json"
SAMPLERS = ("MochiSampler",)
TEXT_INPUTS = ("text",)


def find_nodes(prompt: dict[str, Any], class_type: str | tuple[str, ...]) -> list[str]:
    """Ids of the nodes of ``class_type`` (one type or a tuple), in id order."""
    types = (class_type,) if isinstance(class_type, str) else class_type
    return sorted((k for k, v in prompt.items() if v.get("class_type") in types), key=lambda k: (len(k), k))


def _linked_text_node(prompt: dict[str, Any], sampler_id: str, input_name: str) -> str | None:
    link = prompt[sampler_id]["inputs"].get(input_name)
    if not isinstance(link, list) or not link:
        return None
    src = str(link[0])
    if src in prompt and any(k in prompt[src]["inputs"] for k in TEXT_INPUTS):
        return src
    return None


def apply_overrides(
    prompt: dict[str, Any],
    *,
    text: str | None = None,
    negative: str | None = None,
    seed: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    width: int | None = None,
    height: int | None = None,
    cfg: float | None = None,
    filename_prefix: str | None = None,
) -> dict[str, Any]:
    """A copy of the API ``prompt`` with the given values set on every Mochi sampler and its prompt nodes."""
    out = copy.deepcopy(prompt)
    samplers = find_nodes(out, SAMPLERS)
    if not samplers:
        raise ValueError("the workflow has no MochiSampler node to apply overrides to")
    for sid in samplers:
        inputs = out[sid]["inputs"]
        for name, value in (
            ("seed", seed),
            ("frames", frames),
            ("steps", steps),
            ("width", width),
            ("height", height),
            ("cfg", cfg),
        ):
            if value is not None:
                inputs[name] = value
        for input_name, value in (("positive", text), ("negative", negative)):
            node = _linked_text_node(out, sid, input_name) if value is not None else None
            if node is not None:
                out[node]["inputs"]["text"] = value
    if filename_prefix is not None:
        for node in out.values():
            if "filename_prefix" in node.get("inputs", {}):
                node["inputs"]["filename_prefix"] = filename_prefix
    return out


def print_progress(stream: Any = sys.stderr) -> Callable[[dict[str, Any]], None]:
    """An ``on_event`` for :meth:`ComfyClient.run` that prints which node runs and its progress bar."""
    started = time.monotonic()

    def on_event(event: dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        t = time.monotonic() - started
        if kind == "executing" and data.get("node"):
            stream.write(f"[{t:7.1f}s] running node {data['node']}\n")
        elif kind == "progress":
            value, total = data.get("value", 0), data.get("max", 1)
            bar = "#" * int(30 * value / max(total, 1))
            stream.write(f"[{t:7.1f}s]   node {data.get('node')}: [{bar:<30}] {value}/{total}\n")
        elif kind == "execution_cached" and data.get("nodes"):
            stream.write(f"[{t:7.1f}s] cached: {', '.join(map(str, data['nodes']))}\n")
        stream.flush()

    return on_event


def download(client: ComfyClient, result: RunResult, out_dir: Path) -> list[Path]:
    """Fetch every file the output nodes reported into ``out_dir`` (keeping subfolders); returns the paths."""
    saved = []
    for f in result.files():
        dest = out_dir / f["subfolder"] / f["filename"] if f["subfolder"] else out_dir / f["filename"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(client.view(**f))
        saved.append(dest)
    return saved


def render(
    client: ComfyClient,
    prompt: dict[str, Any],
    out_dir: Path,
    *,
    timeout: float = 3600.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> list[Path]:
    """Run ``prompt`` to the end and download its outputs; raises RuntimeError with ComfyUI's message on failure."""
    result = client.run(prompt, timeout=timeout, on_event=on_event)
    if result.status != "success":
        err = result.error or {}
        raise RuntimeError(
            f"prompt {result.prompt_id} {result.status}: {err.get('exception_type', '')} {err.get('exception_message', '')}".strip()
        )
    return download(client, result, out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address")
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format workflow JSON")
    ap.add_argument("--prompt", help="positive prompt")
    ap.add_argument("--negative", help="negative prompt (official default: empty)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--frames", type=int, help="6k+1: 7, 13, ..., 163")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--out", type=Path, default=Path("output"), help="folder for the downloaded files")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the result")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[headless] %(message)s")

    prompt = json.loads(args.workflow.read_text())
    prompt = apply_overrides(
        prompt,
        text=args.prompt,
        negative=args.negative,
        seed=args.seed,
        frames=args.frames,
        steps=args.steps,
        width=args.width,
        height=args.height,
        cfg=args.cfg,
    )
    client = ComfyClient(args.server)
    try:
        files = render(client, prompt, args.out, timeout=args.timeout, on_event=print_progress())
    except PromptRejected as exc:
        log.error(
            "ComfyUI refused the workflow: %s", json.dumps(exc.body.get("node_errors") or exc.body, indent=1)[:4000]
        )
        return 2
    except (RuntimeError, TimeoutError, OSError) as exc:
        log.error("%s", exc)
        return 1
    for f in files:
        log.info("saved %s", f)
    return 0 if files else 1


if __name__ == "__main__":
    raise SystemExit(main())
