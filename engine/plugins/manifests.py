"""Plugin manifests: the TOML files in plugins/ and assets/plugins/, bare LoRA files, and where a LoRA's file is.

A manifest describes one plugin (a LoRA, or a ControlNet that engine/control.py loads through `load_manifests`);
a bare LoRA `.safetensors` dropped into a plugin folder is found too, its family read from its tensors. Every field
is checked here, and every local path must stay inside its plugin folder or assets/; a manifest is read only when
it is a regular file of at most 64 KB (a FIFO, /dev/zero or a 100,000-deep list gets an error, never a hang or a
crash). `find_lora` resolves a requested name to its plugin and `fetch_lora_file` gives its local file
(downloaded from the Hub on first use).
The manifest format is documented in plugins/README.md; manager.py applies the LoRAs.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import ROOT
from ..request import CONTROL_KINDS, FAMILIES, UserError
from ..sources.checkpoint import is_pickle, pickle_message, read_header
from ..sources.hub import Hub
from .lora_files import detect_lora_family

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

ASSETS = ROOT / "assets"
MAX_MANIFEST_BYTES = 64 * 2**10  # a manifest is a few lines; anything near this is not one
KINDS = ("lora", "controlnet", "upscaler", "image-prompt")  # an upscaler (ESRGAN, SwinIR, SPAN, ...) fits any model
# manifest field -> accepted TOML types; anything else in a manifest is an error that names the field
FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "kind": (str,), "family": (str,), "source": (str,), "weight_name": (str,),
    "weight": (int, float), "trigger": (str, list), "description": (str,), "preview": (str,),
    "control": (str,), "mode": (int,), "steps": (int,), "guidance": (int, float), "scheduler": (str,),
    "encoder": (str,),
}
SAMPLING = ("steps", "guidance", "scheduler")  # a LoRA's own sampling (a distilled few-step one), used when unset
REQUIRED = ("name", "kind", "source")  # and "family", except for an upscaler
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
HUB_RE = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")


@dataclass
class Manifest:
    """One plugin as read from its manifest (or from a bare LoRA file). `error` says why it cannot be used."""

    name: str
    kind: str = "lora"
    family: str = "unknown"  # builtin | sd15 | sdxl | flux; "unknown" for a bare file whose family can't be read
    source: str = ""  # as written: a path relative to the manifest, or a Hub id
    weight: float = 1.0
    trigger: str = ""
    description: str = ""
    preview: Path | None = None
    control: str | None = None  # pose | edge | depth (controlnet only)
    mode: int | None = None  # control mode of a union ControlNet (controlnet only)
    # sampling a LoRA needs (a distilled 4-step one): used when the user has not set them (lora only)
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    path: Path | None = None  # the manifest file; the .safetensors itself for a bare LoRA
    weight_name: str | None = None  # the file inside a Hub repo (an image-prompt adapter: in its folder too)
    encoder: str = "image_encoder"  # an image-prompt adapter's image encoder: a folder beside its weights
    file: Path | None = None  # local source, resolved; checked to stay inside its plugin folder or assets/
    hub: bool = False  # source is a Hub id (downloaded on first use)
    error: str | None = None


def load_manifests(dirs: list[Path]) -> list[Manifest]:
    """Every plugin in `dirs`: `*.toml` manifests (in subfolders too), then bare `.safetensors` LoRAs and refused
    pickle files at the top level of each folder that no manifest uses. A later duplicate name gets an error."""
    found: list[Manifest] = []
    for folder in [Path(d).expanduser() for d in dirs]:
        if not folder.is_dir():
            continue
        root = folder.resolve()
        manifests = [_read_manifest(p, root) for p in sorted(folder.rglob("*.toml")) if not _hidden(p, folder)]
        claimed = {m.file for m in manifests if m.file is not None and m.error is None}
        found += manifests
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            if suffix == ".safetensors" and path.resolve() not in claimed:
                found.append(_bare_lora(path, root))
            elif is_pickle(path):
                found.append(Manifest(name=path.stem, path=path, source=path.name,
                                      error=pickle_message(path.name, "plugin")))
    seen: dict[str, Path | None] = {}
    for m in found:
        if m.name in seen and m.error is None:
            m.error = f"the name {m.name!r} is already used by {show_path(seen[m.name])}; rename one of them"
        seen.setdefault(m.name, m.path)
    return found


def folders_state(dirs: list[Path]) -> tuple:
    """What the plugin folders hold: each entry's path, size, inode and change times. While it and
    `files_state` of the manifests stay the same, `load_manifests` reads the same plugins."""
    folders = [Path(d).expanduser() for d in dirs]
    return files_state([p for d in folders if d.is_dir() for p in sorted(d.rglob("*"))])


def files_state(paths: list[Path]) -> tuple:
    """Each path's size, inode and change times (None for a missing one): a rewrite or a replacement shows."""
    state = []
    for path in paths:
        try:
            st = path.stat()
            state.append((str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            state.append((str(path), None))
    return tuple(state)


TEXT_FOLDERS = ("styles", "wildcards")  # a plugin folder's prompt texts (engine/prompt_texts.py), no manifests


def _hidden(path: Path, folder: Path) -> bool:
    parts = path.relative_to(folder).parts
    return any(part.startswith(".") for part in parts) or parts[0] in TEXT_FOLDERS


def _read_manifest(path: Path, root: Path) -> Manifest:
    m = Manifest(name=path.stem, path=path)
    try:
        data = tomllib.loads(_read_small_file(path).decode("utf-8"))
    except UserError as e:
        m.error = str(e)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        m.error = f"{path.name} is not valid TOML ({e})"
    except RecursionError:  # tomllib parses nested lists and tables recursively
        m.error = f"{path.name} is not valid TOML (its lists or tables are nested too deeply)"
    if m.error:
        log.warning("plugin manifest %s skipped: %s", show_path(path), m.error)
        return m
    if isinstance(data.get("name"), str) and data["name"].strip():
        m.name = data["name"].strip()
    m.error = _manifest_error(m, data, root)
    return m


def _read_small_file(path: Path, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else a UserError saying what it is.
    Never waits and never reads without end: a FIFO is refused before it is opened (opening one for reading waits
    for a writer), and a device such as /dev/zero (which has no end) is refused by its type."""
    not_regular = (f"{path.name} is not a regular file (a FIFO, a device, a folder or a link to one); a manifest "
                   "is a plain .toml file: remove it or replace it with one")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise UserError(not_regular)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # replaced by a FIFO meanwhile: open at once, refused below
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(not_regular)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{path.name} is larger than {limit // 2**10} KB; a manifest is a few lines of TOML (see "
                        "plugins/README.md): remove it or shorten it")
    return data


def _manifest_error(m: Manifest, data: dict, root: Path) -> str | None:
    """Fill `m` from the manifest's fields; the first problem found, naming the field, or None."""
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"unknown field '{key}'{hint}; the fields are: {', '.join(FIELDS)}"
    for key in REQUIRED:
        if key not in data:
            return f"missing field '{key}' (required: {', '.join(REQUIRED)})"
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, FIELDS[key]):
            kinds = " or ".join({str: "text", int: "a whole number", float: "a number", list: "a list"}[t]
                                for t in FIELDS[key])
            return f"field '{key}' must be {kinds}, got {value!r}"
    if not NAME_RE.fullmatch(m.name):
        return (f"field 'name' = {m.name!r}: use 1-64 letters, digits, '_', '.' or '-' (it is typed as "
                "<lora:NAME:0.8> and --lora NAME=0.8)")
    m.kind, m.family, m.source = data["kind"], data.get("family", "any"), data["source"].strip()
    if m.kind not in KINDS:
        return f"field 'kind' = {m.kind!r}: use one of {', '.join(KINDS)}"
    if m.kind != "upscaler" and "family" not in data:
        return f"missing field 'family' (required for a {m.kind}: one of {', '.join(FAMILIES)})"
    if m.family not in FAMILIES and not (m.kind == "upscaler" and m.family == "any"):
        return f"field 'family' = {m.family!r}: use one of {', '.join(FAMILIES)}"
    m.weight = float(data.get("weight", 1.0))
    if not -4.0 <= m.weight <= 4.0:
        return f"field 'weight' = {m.weight:g}: use -4 to 4 (1 is full strength)"
    trigger = data.get("trigger", "")
    if isinstance(trigger, list):
        if not all(isinstance(t, str) for t in trigger):
            return "field 'trigger' must be text or a list of texts"
        trigger = ", ".join(t.strip() for t in trigger if t.strip())
    m.trigger, m.description = trigger.strip(), data.get("description", "").strip()
    m.weight_name = data.get("weight_name")
    m.control, m.mode = data.get("control"), data.get("mode")
    if m.kind == "controlnet" and m.control not in CONTROL_KINDS:
        return f"field 'control' = {m.control!r}: a controlnet needs one of {', '.join(CONTROL_KINDS)}"
    if "encoder" in data and m.kind != "image-prompt":
        return "field 'encoder' is only for image-prompt manifests (the adapter's image encoder folder)"
    m.encoder = data.get("encoder", m.encoder)
    if m.kind == "image-prompt" and not 0 <= m.weight <= 2:
        return f"field 'weight' = {m.weight:g}: an image prompt's default scale goes from 0 to 2"
    if m.kind == "lora" and ("control" in data or "mode" in data):
        return f"field '{'control' if 'control' in data else 'mode'}' is only for controlnet manifests"
    error = _sampling_error(m, data)
    if error:
        return error
    if "preview" in data:
        preview, error = _inside(m.path.parent / data["preview"], root, "field 'preview'")
        if error:
            return error
        m.preview = preview if preview.is_file() else None
    return _source_error(m, root)


def _sampling_error(m: Manifest, data: dict) -> str | None:
    """Reads a LoRA's own steps/guidance/scheduler, checked as the panel checks typed-in ones."""
    from ..request import MAX_STEPS, SCHEDULERS

    given = [key for key in SAMPLING if key in data]
    if given and m.kind != "lora":
        return f"field '{given[0]}' is only for lora manifests (a LoRA's own sampling settings)"
    if "steps" in data and not 1 <= data["steps"] <= MAX_STEPS:
        return f"field 'steps' = {data['steps']}: use 1 to {MAX_STEPS}"
    if "guidance" in data and not 0 <= data["guidance"] <= 30:
        return f"field 'guidance' = {data['guidance']}: use 0 to 30 (1 = no guidance, what distilled LoRAs use)"
    if "scheduler" in data and data["scheduler"] not in SCHEDULERS:
        return f"field 'scheduler' = {data['scheduler']!r}: use one of {', '.join(SCHEDULERS)}"
    m.steps, m.scheduler = data.get("steps"), data.get("scheduler")
    m.guidance = float(data["guidance"]) if "guidance" in data else None
    return None


def _source_error(m: Manifest, root: Path) -> str | None:
    src = m.source
    if m.kind == "image-prompt":
        return _adapter_source_error(m, root)
    if m.weight_name is not None:  # a file in a Hub repo
        if not HUB_RE.fullmatch(src):
            return f"field 'source' = {src!r}: with weight_name, the source is a Hub id like 'org/repo'"
        if Path(m.weight_name).suffix.lower() != ".safetensors":
            return f"field 'weight_name' = {m.weight_name!r}: {pickle_message(m.weight_name, 'plugin')}"
        m.hub = True
        return None
    suffix = Path(src).suffix.lower()
    if is_pickle(src):
        return f"field 'source' = {src!r}: {pickle_message(src, 'plugin')}"
    local = m.path.parent / Path(src).expanduser()
    if suffix == ".safetensors" or local.exists() or src.startswith((".", "/", "~")) or not HUB_RE.fullmatch(src):
        m.file, error = _inside(local, root, "field 'source'")
        if error:
            return error
        if m.kind in ("lora", "upscaler") and suffix != ".safetensors":
            return f"field 'source' = {src!r}: a {m.kind} source must be a .safetensors file"
        if m.kind in ("lora", "upscaler") and m.file.exists() and not m.file.is_file():
            return (f"field 'source' = {src!r} is not a regular file (a FIFO, a device or a folder); point it at "
                    "a .safetensors file")
        return None
    if m.kind in ("lora", "upscaler"):
        return (f"missing field 'weight_name': the source {src!r} is a Hub repo, so name the LoRA file in it, e.g. "
                "weight_name = \"pytorch_lora_weights.safetensors\"")
    m.hub = True  # a ControlNet repo in diffusers layout
    return None


def _inside(path: Path, root: Path, what: str) -> tuple[Path, str | None]:
    """`path` resolved (symlinks and '..' followed); an error unless it stays inside `root` or assets/."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(r) for r in (root, ASSETS.resolve())):
        return resolved, None
    return resolved, (f"{what} leads outside the plugin folder {show_path(root)} and assets/ (to {resolved}); keep "
                      "plugin files inside the plugin folder")


def _adapter_source_error(m: Manifest, root: Path) -> str | None:
    """An image-prompt adapter: `source` a folder (inside the plugin folder or assets/) or a Hub repo, `weight_name`
    its .safetensors inside (maybe in a subfolder), `encoder` the image encoder's folder beside that file; without
    `weight_name`, the source is a Flux Redux prior pipeline (FluxPriorReduxPipeline) in diffusers' layout."""
    if m.weight_name is not None and Path(m.weight_name).suffix.lower() != ".safetensors":
        return ("field 'weight_name' must name the adapter's .safetensors file inside the source, e.g. "
                "weight_name = \"models/ip-adapter_sd15.safetensors\" (without it the source is a Flux Redux "
                "pipeline folder or repo)")
    local = m.path.parent / Path(m.source).expanduser()
    if local.exists() or m.source.startswith((".", "/", "~")) or not HUB_RE.fullmatch(m.source):
        m.file, error = _inside(local, root, "field 'source'")
        return error
    m.hub = True
    return None


def _bare_lora(path: Path, root: Path) -> Manifest:
    m = Manifest(name=path.stem, source=path.name, path=path, description=f"LoRA file in {show_path(path.parent)}")
    m.file, m.error = _inside(path, root, "this file (a link?)")
    if m.error is None and not NAME_RE.fullmatch(m.name):
        m.error = ("its file name is not a usable plugin name: rename it to letters, digits, '_', '.' or '-', or "
                   "write a manifest for it")
    if m.error is None:
        try:
            m.family = detect_lora_family(read_header(m.file, path.name)) or "unknown"
        except UserError as e:
            m.error = str(e)
    return m


def find_lora(name: str, catalog: dict[str, Manifest], family: str, allow_paths: bool) -> Manifest:
    """The LoRA plugin `name` in `catalog` (or, where `allow_paths`, a local file named by its path); a
    UserError naming the usable LoRAs for `family` if there is none."""
    plugin = catalog.get(name)
    if plugin is not None:
        if plugin.error:
            raise UserError(f"Plugin {name!r} ({show_path(plugin.path)}) cannot be used: {plugin.error.rstrip('.')}.")
        if plugin.kind != "lora":
            raise UserError(f"Plugin {name!r} is a {plugin.kind}, not a LoRA; use it as a control instead.")
        return plugin
    path = Path(name).expanduser()
    if ((path.suffix.lower() == ".safetensors" or is_pickle(path)) or "/" in name or os.sep in name
            or name.startswith(("~", "."))):
        if not allow_paths:
            raise UserError(f"LoRA {name!r}: LoRAs are chosen by plugin name here; only the command line may load "
                            "a file by its path. Put the file in plugins/ to use it from the app.")
        if is_pickle(path):
            raise UserError(f"LoRA {name!r}: {pickle_message(path.name, 'plugin')}")
        if not path.is_file():
            raise UserError(f"LoRA {name!r}: no such file.")
        return Manifest(name=name, source=name, path=path, file=path.resolve())
    usable = sorted(m.name for m in catalog.values() if m.kind == "lora" and not m.error
                    and m.family in (family, "unknown"))
    close = difflib.get_close_matches(name, list(catalog), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"There is no LoRA plugin named {name!r}.{hint} For this model: "
                    f"{', '.join(usable) or 'none'} (see `python app.py plugins`).")


def fetch_lora_file(plugin: Manifest, hub: Hub) -> Path:
    """The plugin's local file, downloaded from the Hub on first use."""
    if not plugin.hub:
        if plugin.file is None or not plugin.file.is_file():
            raise UserError(f"LoRA {plugin.name!r}: its file {plugin.source!r} is missing ({show_path(plugin.file)}).")
        return plugin.file
    what = f"LoRA {plugin.name!r} ({plugin.source}/{plugin.weight_name})"
    return hub.file(plugin.source, plugin.weight_name, what,
                    fetch=f"`hf download {plugin.source} {plugin.weight_name}`",
                    missing=f"LoRA {plugin.name!r}: {plugin.source} has no file {plugin.weight_name!r}. Fix the "
                            "manifest's 'weight_name'.")


def manifest_status(m: Manifest) -> str:
    """One plugin's status as `app.py plugins` lists it: "ready", "download on use" or "error: <why>"."""
    if m.error:
        return f"error: {m.error}"
    if m.hub:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(m.source, m.weight_name or "config.json")  # config.json: a ControlNet repo
        return "ready" if isinstance(cached, str) else "download on use"
    if m.file is None or not m.file.exists():
        return f"error: its file {m.source!r} is missing (looked for {show_path(m.file)})"
    return "ready"


def show_path(path: Path | None) -> str:
    """A path for messages: relative to the project when inside it."""
    if path is None:
        return "?"
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
