"""Settings from other tools' image files, for the library's import: AUTOMATIC1111, SD.Next and Fooocus through
engine/images/metadata.py, ComfyUI from its `prompt` graph (the text of its CLIPTextEncode nodes, the sampler's
seed, steps and cfg, the checkpoint's name). Only plain values are taken; nothing in a file is ever run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from engine.images.loading import open_image
from engine.images.metadata import read_png_settings
from engine.request import UserError, clean_text

log = logging.getLogger(__name__)
MAX_GRAPH = 4 * 2**20  # characters of a ComfyUI graph read at most


def read_settings(path: Path) -> dict | None:
    """A Request-like dict of the settings stored in `path`, or None when it holds none we can read."""
    try:
        request, _ = read_png_settings(path)
        return request.to_json()
    except UserError:
        pass
    try:
        image = open_image(path, "The imported image")
        graph = image.info.get("prompt")
        image.close()
    except (UserError, OSError):
        return None
    return comfy_settings(graph) if isinstance(graph, str) and len(graph) <= MAX_GRAPH else None


def comfy_settings(text: str) -> dict | None:
    """Settings from a ComfyUI `prompt` chunk (API-format graph: node id -> {class_type, inputs})."""
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be a graph
        return None
    if not isinstance(graph, dict):
        return None
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    out: dict = {}
    for node in nodes.values():
        kind, inputs = str(node.get("class_type", "")), node["inputs"]
        if kind.startswith("KSampler"):
            for key, name in (("seed", "seed"), ("noise_seed", "seed"), ("steps", "steps"), ("cfg", "guidance")):
                value = inputs.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[name] = value
            for key, role in (("positive", "prompt"), ("negative", "negative")):
                link = inputs.get(key)
                source = nodes.get(str(link[0])) if isinstance(link, list) and link else None
                if source and isinstance(source["inputs"].get("text"), str):
                    out[role] = clean_text(source["inputs"]["text"])[:10_000]
        elif kind == "CheckpointLoaderSimple" and isinstance(inputs.get("ckpt_name"), str):
            out["model"] = inputs["ckpt_name"][:1024]
        elif kind == "EmptyLatentImage":
            for key in ("width", "height"):
                if isinstance(inputs.get(key), int):
                    out[key] = inputs[key]
    return out if out.get("prompt") else None
