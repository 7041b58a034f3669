"""Example headless client: queue a shipped API workflow on a running ComfyUI, follow progress, download the video.

Standard library only (plus ``scripts/comfy_client.py`` beside it):

    python scripts/headless.py --server http://127.0.0.1:8188 \\
        --workflow workflows/api/mochi_text_to_video.json \\
        --prompt "a red fox in the snow" --seed 42 --frames 31 --steps 64 --out ./output

Overrides are applied to the sampler node (``MochiSampler``: seed, frames, steps, width, height, cfg, and the
optional preset, teacache_threshold, max_skip_steps, stg_scale, stg_blocks, stg_rescale), to the
text nodes its ``positive`` / ``negative`` inputs are linked to (``text``) and to the loader nodes (``--dit``,
``--t5``, ``--vae``: file names as the loaders list them, relative to ComfyUI's model folders), so any workflow
built from our nodes works, whatever its node ids. Progress comes from ComfyUI's ``/ws`` events; the files the
output nodes report are fetched with ``/view``. Every failure ends in one ``[headless]`` line that says what to do
(start ComfyUI, fix the path or the URL); a refused prompt prints each node error once.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.parse
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
#: per model kind: the loader node types (ours and ComfyUI's core ones) and the input that takes the file name
LOADERS: dict[str, dict[str, str]] = {
    "dit": {"MochiDiTLoader": "dit_name", "UNETLoader": "unet_name"},
    "t5": {"MochiT5Loader": "t5_name", "CLIPLoader": "clip_name"},
    "vae": {"MochiVAELoader": "vae_name", "VAELoader": "vae_name"},
}


class UsageError(ValueError):
    """A problem the user fixes on the command line or in a file; the message says how (printed as one line)."""


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
    dit: str | None = None,
    t5: str | None = None,
    vae: str | None = None,
    preset: str | None = None,
    teacache_threshold: float | None = None,
    max_skip_steps: int | None = None,
    stg_scale: float | None = None,
    stg_blocks: str | None = None,
    stg_rescale: float | None = None,
) -> dict[str, Any]:
    """A copy of the API ``prompt`` with the given values set on every Mochi sampler, its prompt nodes and the
    loader nodes (``dit`` / ``t5`` / ``vae``: model file names; UsageError when the workflow has no such loader)."""
    out = copy.deepcopy(prompt)
    for kind, name in (("dit", dit), ("t5", t5), ("vae", vae)):
        if name is None:
            continue
        loaders = find_nodes(out, tuple(LOADERS[kind]))
        if not loaders:
            raise UsageError(f"--{kind}: the workflow has no {' or '.join(LOADERS[kind])} node to set the file of")
        for nid in loaders:
            out[nid]["inputs"][LOADERS[kind][out[nid]["class_type"]]] = name
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
            ("preset", preset),
            ("teacache_threshold", teacache_threshold),
            ("max_skip_steps", max_skip_steps),
            ("stg_scale", stg_scale),
            ("stg_blocks", stg_blocks),
            ("stg_rescale", stg_rescale),
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
        where = f" in node {err['node_id']} {err.get('node_type', '')}".rstrip() if err.get("node_id") else ""
        kind = str(err.get("exception_type", "")).rsplit(".", 1)[-1]
        message = str(err.get("exception_message", "")).strip()
        raise RuntimeError(f"prompt {result.prompt_id} {result.status}{where}: {kind}: {message}".rstrip(": "))
    return download(client, result, out_dir)


def format_node_errors(body: dict[str, Any], prompt: dict[str, Any] | None = None) -> list[str]:
    """One readable line per distinct node error of a ComfyUI ``/prompt`` refusal (``error`` + ``node_errors``).

    ComfyUI repeats a node-level message under every input it concerns; identical messages of one node are printed
    once, with the inputs they were reported under."""
    lines: list[str] = []
    for nid, entry in (body.get("node_errors") or {}).items():
        kind = entry.get("class_type") or (prompt or {}).get(nid, {}).get("class_type", "?")
        seen: dict[str, list[str]] = {}
        for err in entry.get("errors") or []:
            name = (err.get("extra_info") or {}).get("input_name")
            details = str(err.get("details") or "")
            if err.get("type") == "custom_validation_failed" and name and details.startswith(f"{name} - "):
                text = details[len(name) + 3 :]  # the node's own message, repeated by ComfyUI under each input
            elif details:
                text = f"{err.get('message', 'error')}: {details}"
            else:
                text = str(err.get("message") or json.dumps(err))
            inputs = seen.setdefault(text, [])
            if name and name not in inputs:
                inputs.append(name)
        for text, inputs in seen.items():
            where = f" (input {', '.join(inputs)})" if len(inputs) == 1 else ""
            lines.append(f"node {nid} {kind}{where}: {text}")
    if not lines:
        err = body.get("error")
        if isinstance(err, dict):
            lines.append(f"{err.get('message', 'prompt refused')}{': ' + err['details'] if err.get('details') else ''}")
        else:
            lines.append(str(err or body))
    return lines


def check_server_url(url: str) -> str:
    """``url`` if it is an ``http(s)://host[:port]`` address; else UsageError with the expected form."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--server {url!r} is not an http:// or https:// address; write it as http://127.0.0.1:8188 (the address "
            "ComfyUI prints when it starts)"
        )
    return url


def read_workflow(path: Path) -> dict[str, Any]:
    """The API-format workflow in ``path``; UsageError (one line, with the fix) when it is missing or not one."""
    if not path.is_file():
        raise UsageError(
            f"workflow file not found: {path} (the shipped API workflows are in {DEFAULT_WORKFLOW.parent})"
        )
    try:
        prompt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"workflow file {path} cannot be read as JSON: {exc}") from exc
    if isinstance(prompt, dict) and isinstance(prompt.get("nodes"), list):
        raise UsageError(
            f"{path} is a UI workflow; pass its API twin (workflows/api/) or export one with ComfyUI's Export (API)"
        )
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and "class_type" in v for v in prompt.values()):
        raise UsageError(f"{path} is not an API-format workflow (an object of nodes with class_type and inputs)")
    return prompt


def _connection_hint(server: str, exc: BaseException) -> str | None:
    """One line for a failure to reach the server, or None when ``exc`` is something else."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return (
            f"cannot reach ComfyUI at {server} (connection refused): start it (python main.py in the ComfyUI folder, "
            "or make demo) or pass --server with the address it prints"
        )
    if isinstance(reason, socket.gaierror):
        return f"cannot reach ComfyUI at {server}: unknown host ({reason.strerror}); check --server"
    if isinstance(exc, (urllib.error.URLError, ConnectionError)):
        return f"lost or failed connection to ComfyUI at {server} ({reason}); check --server and that ComfyUI runs"
    return None


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
    ap.add_argument("--dit", help="DiT file name as the loader lists it (relative to models/diffusion_models)")
    ap.add_argument("--t5", help="T5 file name (relative to models/text_encoders)")
    ap.add_argument("--vae", help="VAE file name (relative to models/vae)")
    ap.add_argument("--preset", choices=["default", "fast"], help="fast = FastMochi: 8 steps, cfg 1.5, its schedule")
    ap.add_argument("--teacache-threshold", type=float, help="TeaCache (0 = off; 0.06 / 0.09 published)")
    ap.add_argument("--max-skip-steps", type=int, help="TeaCache: most skipped steps in a row (0 = no limit)")
    ap.add_argument("--stg-scale", type=float, help="spatiotemporal skip guidance scale (0 = off, 1 typical)")
    ap.add_argument("--stg-blocks", help="STG: skipped blocks, e.g. 34 or 30,34")
    ap.add_argument("--stg-rescale", type=float, help="STG rescale (0 = off, 0.7 typical)")
    ap.add_argument("--out", type=Path, default=Path("output"), help="folder for the downloaded files")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the result")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[headless] %(message)s")

    try:
        server = check_server_url(args.server)
        prompt = apply_overrides(
            read_workflow(args.workflow),
            text=args.prompt,
            negative=args.negative,
            seed=args.seed,
            frames=args.frames,
            steps=args.steps,
            width=args.width,
            height=args.height,
            cfg=args.cfg,
            dit=args.dit,
            t5=args.t5,
            vae=args.vae,
            preset=args.preset,
            teacache_threshold=args.teacache_threshold,
            max_skip_steps=args.max_skip_steps,
            stg_scale=args.stg_scale,
            stg_blocks=args.stg_blocks,
            stg_rescale=args.stg_rescale,
        )
    except (UsageError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    client = ComfyClient(server)
    try:
        files = render(client, prompt, args.out, timeout=args.timeout, on_event=print_progress())
    except PromptRejected as exc:
        lines = format_node_errors(exc.body, prompt)
        log.error("ComfyUI refused the workflow (%d error%s):", len(lines), "" if len(lines) == 1 else "s")
        for line in lines:
            log.error("  %s", line)
        return 2
    except (RuntimeError, TimeoutError, OSError) as exc:
        log.error("%s", _connection_hint(server, exc) or str(exc))
        return 1
    for f in files:
        log.info("saved %s", f)
    return 0 if files else 1


if __name__ == "__main__":
    raise SystemExit(main())
