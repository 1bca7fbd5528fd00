"""What a checkpoint on disk is, read before anything loads it: the safetensors header, pickle refusal, the family.

Every file the app may load (a model, a LoRA, a ControlNet) passes `refuse_pickle` first: pickle formats can run
code when loaded, so only `.safetensors` is read. `read_header` reads tensor names and shapes without touching the
tensors (cached per file version). The family (builtin, sd15, sdxl, flux) comes from a folder's model_index.json
or a file's tensor names, never from a file name; `flux_variant` tells schnell (no guidance weights) from dev.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..families import FAMILIES_BY_NAME, family_of_class
from ..request import UserError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
_HEADERS: dict[tuple[str, int, int], dict[str, list[int]]] = {}


def is_pickle(name: str | Path) -> bool:
    return Path(name).suffix.lower() in PICKLE_SUFFIXES


def pickle_message(name: str | Path, what: str = "model") -> str:
    """Why a pickle file is refused, and how to get a loadable file instead."""
    return (f"{Path(name).name} is a pickle file ({Path(name).suffix}), which can run code when loaded; {what}s load "
            "only .safetensors files here. Download the .safetensors version, or convert it once in a trusted "
            "environment (`safetensors.torch.save_file(torch.load(f, weights_only=True)['state_dict'], "
            "'model.safetensors')`)")


def refuse_pickle(path: str | Path, what: str = "model", label: str = "") -> None:
    if is_pickle(path):
        raise UserError(f"{label}: {pickle_message(path, what)}" if label else pickle_message(path, what))


def read_header(path: Path, label: str | None = None) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header (no tensor read); a clear error if empty or corrupt."""
    from safetensors import safe_open

    path = Path(path)
    label = label or str(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _HEADERS:
        return _HEADERS[key]
    if stat.st_size == 0:
        raise UserError(f"{label}: the file is empty (0 bytes). Download or copy it again.")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad headers and offsets
        raise UserError(f"{label}: not a valid .safetensors file ({str(e).splitlines()[0][:120]}). The download may "
                        "be truncated or corrupt: download or copy it again") from None
    if len(_HEADERS) > 256:
        _HEADERS.clear()
    _HEADERS[key] = shapes
    return shapes


def family_of_keys(keys: dict[str, list[int]]) -> str | None:
    """Family of a single-file checkpoint from its tensor names (never from the file name)."""
    names = keys.keys()

    def has(fragment: str) -> bool:
        return any(fragment in k for k in names)

    if has("double_blocks.0.") or has("transformer_blocks.0.attn.add_q_proj"):
        return "flux"
    if has("conditioner.embedders.1") or has("label_emb.0.0.weight") or has("add_embedding.linear_1"):
        return "sdxl"
    if has("model.diffusion_model.input_blocks") or has("cond_stage_model.transformer"):
        return "sd15"
    return None


def family_of_folder(folder: Path) -> str:
    """Family of a diffusers pipeline folder, from model_index.json (and studio.json for our own models)."""
    studio = folder / "studio.json"
    if studio.is_file():
        return json.loads(studio.read_text()).get("family", "builtin")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"{folder} is not a diffusers model folder (it has no model_index.json). Point --model at "
                        "a folder saved with save_pretrained, a .safetensors checkpoint file, or a Hub id.")
    try:
        cls = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index} is not a valid model_index.json ({e}). Re-download or re-save the model.") from e
    found = family_of_class(cls)
    if found is None:
        known = ", ".join(f.label for f in FAMILIES_BY_NAME.values() if f.index_classes)
        raise UserError(f"{folder} holds a {cls}, which this app does not run. Supported: {known} pipelines.")
    return found.name


def flux_variant_of_keys(keys: dict[str, list[int]]) -> str:
    """schnell (timestep-distilled, no guidance embedding) or dev, from a Flux checkpoint's tensor names."""
    return "dev" if any("guidance_in" in k or "guidance_embedder" in k for k in keys) else "schnell"


def flux_variant_of_folder(folder: Path) -> str:
    """fill or kontext (from the pipeline class), else schnell or dev from the transformer's config
    (`guidance_embeds`); dev when the config cannot tell."""
    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        cls = ""
    if "Fill" in cls:
        return "fill"
    if "Kontext" in cls:
        return "kontext"
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return "dev"
    return "dev" if config.get("guidance_embeds", True) else "schnell"


def checkpoint_family(path: Path) -> str:
    """The family of a single `.safetensors` checkpoint, or a UserError saying what the file is instead."""
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path.name} is not a model checkpoint this app reads. Use a .safetensors file, a "
                        "diffusers folder or a Hub id.")
    family = family_of_keys(read_header(path, path.name))
    if family is None:
        raise UserError(f"{path.name} does not look like an SD1.5, SDXL or Flux checkpoint (its tensor names match "
                        "none). If it is a LoRA, load it with --lora instead.")
    return family
