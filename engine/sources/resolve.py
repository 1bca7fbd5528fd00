"""Which model a `--model` string names: `builtin`, a Hub id, a local diffusers folder or a `.safetensors` file.

The one place that tells a path from a Hub id: a string is a path when it exists, starts with `.`, `/` or `~`,
ends in a checkpoint suffix (`.safetensors`, a pickle suffix) or is not of the form `namespace/name`; anything
else is a Hub id, dots and all (`stabilityai/stable-diffusion-xl-base-1.0`). Local paths are refused where the
config says users may not name files on this machine. Resolutions are cached: a Hub id is asked of the Hub once
per process, a local path again only when the file or folder changed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ROOT
from ..families import FAMILIES_BY_NAME, has_variants
from ..request import UserError
from .checkpoint import (
    PICKLE_SUFFIXES,
    checkpoint_family,
    family_of_folder,
    read_header,
    variant_of_folder,
    variant_of_keys,
)
from .hub import MAX_ID_LENGTH, Hub

log = logging.getLogger(__name__)

BUILTIN_DIR = ROOT / "assets" / "builtin"
# What users pick from in the UI and `app.py models`; any other Hub id works too.
# the Hub models people know, by family (engine.families): the model lists and `models` offer them
KNOWN_MODELS: dict[str, str] = {"builtin": "builtin", **{repo: f.name for f in FAMILIES_BY_NAME.values()
                                                         for repo in f.hub_ids}}
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w\-.]*/[A-Za-z0-9][\w\-.]*")
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".gguf", *PICKLE_SUFFIXES)
MAX_NAME = 1024


@dataclass(frozen=True)
class Source:
    """A resolved `--model` string."""

    name: str  # what the user typed (or "builtin")
    kind: str  # builtin | hub | folder | file
    location: str  # Hub id or absolute path
    family: str  # a name in engine.families
    variant: str = ""  # e.g. Flux "dev", "schnell", "kontext"; Qwen-Image "edit" (read from the model, not its name)


def looks_like_path(model: str) -> bool:
    """True when `model` names a file or folder rather than a Hub id (see the module docstring)."""
    if model.startswith((".", "/", "~", "\\")) or Path(model).suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    return not HUB_ID_RE.fullmatch(model)


class Resolver:
    """`resolve(model)` -> Source, cached; `hub` makes every Hub call with the process's offline decision."""

    def __init__(self, hub: Hub | None = None, local_paths: bool = True):
        self.hub = hub or Hub()
        self.local_paths = local_paths
        self.allowed_paths: set[str] = set()  # local models users may pick even without local_paths
        self._hub_cache: dict[str, Source] = {}
        self._path_cache: dict[str, tuple[tuple, Source]] = {}

    def resolve(self, model: str | None) -> Source:
        """Turn a `--model` string into a Source with its family, or explain why it can't be used."""
        model = (model or "builtin").strip()
        if len(model) > MAX_NAME:
            raise UserError(f"The model name is {len(model)} characters long; a Hub id has at most {MAX_ID_LENGTH} "
                            "and a path at most a few hundred. Check what was pasted into the model box.")
        if model == "builtin":
            return self._builtin()
        path = Path(model).expanduser()
        exists = _exists(path)
        if exists or looks_like_path(model):
            if not self.local_paths and model not in self.allowed_paths:
                raise UserError(f"{_short(model)!r} is a file or folder name; on this server models are chosen by "
                                "Hub id (e.g. 'stabilityai/stable-diffusion-xl-base-1.0') or 'builtin'. Ask the "
                                "server's owner to start it with the model, or run the app on your own machine.")
            if not exists:
                raise UserError(f"No such file or folder: {_short(model)}. Check the path, or give a Hub id like "
                                "'stabilityai/stable-diffusion-xl-base-1.0'.")
            return self._local(model, path.resolve())
        if len(model) > MAX_ID_LENGTH:
            raise UserError(f"{model[:40]}... is not a valid Hub id: {len(model)} characters, the Hub allows "
                            f"{MAX_ID_LENGTH}.")
        if model not in self._hub_cache:
            family, variant = self.hub.family(model)
            self._hub_cache[model] = Source(model, "hub", model, family, variant)
        return self._hub_cache[model]

    def allow_path(self, model: str) -> None:
        """Let this one local model through even where users may not name paths (the server's own --model)."""
        self.allowed_paths.add(model.strip())

    def _builtin(self) -> Source:
        if not (BUILTIN_DIR / "model_index.json").is_file():
            raise UserError(f"The built-in model is missing from {BUILTIN_DIR}. Restore it with `git checkout "
                            "assets/builtin` or train it with `python app.py train builtin`.")
        return Source("builtin", "builtin", str(BUILTIN_DIR), "builtin")

    def _local(self, model: str, path: Path) -> Source:
        stamp = _stamp(path)
        cached = self._path_cache.get(str(path))
        if cached is not None and cached[0] == stamp and cached[1].name == model:
            return cached[1]
        if path.is_dir():
            family = family_of_folder(path)
            variant = variant_of_folder(family, path) if has_variants(family) else ""
            source = Source(model, "folder", str(path), family, variant)
        else:
            family = checkpoint_family(path)
            variant = variant_of_keys(family, read_header(path, path.name)) if has_variants(family) else ""
            source = Source(model, "file", str(path), family, variant)
        self._path_cache[str(path)] = (stamp, source)
        return source


def _stamp(path: Path) -> tuple:
    """What changes when the model changes: the file itself, or a folder's model_index.json and studio.json."""
    files = [path] if path.is_file() else [path / "model_index.json", path / "studio.json"]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)


def _short(model: str, limit: int = 80) -> str:
    return model if len(model) <= limit else f"{model[:limit]}... ({len(model)} characters)"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        return False
