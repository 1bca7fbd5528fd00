"""What a checkpoint on disk is, read before anything loads it: the safetensors header, pickle refusal, the family.

Every file the app may load (a model, a LoRA, a ControlNet) passes `refuse_pickle` first: pickle formats can run
code when loaded, so only `.safetensors` is read. `read_header` reads tensor names and shapes without touching the
tensors (cached per file version). The family comes from a folder's model_index.json
or a file's tensor names, never from a file name; `variant_of_folder` reads
the variant (Flux schnell, Kontext, Qwen-Image-Edit) from the model too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..families import FAMILIES_BY_NAME, family, family_of_class, family_of_file_keys
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
    found = family_of_file_keys(keys)
    return found.name if found else None


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


def variant_of_keys(name: str, keys: dict[str, list[int]]) -> str:
    """The variant of a family-`name` single file: Flux schnell has no guidance weights; else the plain variant."""
    kin = family(name)
    if kin.unguided_variant and not any("guidance_in" in k or "guidance_embedder" in k for k in keys):
        return kin.unguided_variant
    return kin.plain_variant


def variant_of_folder(name: str, folder: Path) -> str:
    """The variant of a family-`name` model folder: from its pipeline class (Flux Fill, Kontext, Qwen-Image-Edit),
    else from a config value (Flux schnell: no guidance embedding; FLUX.2 klein base: not distilled), else the
    family's plain variant (dev)."""
    kin = family(name)
    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        cls = ""
    if cls in kin.index_variants:
        return kin.index_variants[cls]
    for file, key, value, variant in kin.config_variants:
        try:
            config = json.loads((folder / file).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get(key, not value) == value:
            return variant
    return kin.plain_variant


def checkpoint_family(path: Path) -> str:
    """The family of a single `.safetensors` checkpoint, or a UserError saying what the file is instead."""
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path.name} is not a model checkpoint this app reads. Use a .safetensors file, a "
                        "diffusers folder or a Hub id.")
    family = family_of_keys(read_header(path, path.name))
    if family is None:
        known = ", ".join(f.label for f in FAMILIES_BY_NAME.values() if f.file_keys)
        raise UserError(f"{path.name} is not a checkpoint of a family this app runs ({known}): its tensor names "
                        "match none. If it is a LoRA, load it with --lora instead.")
    return family
