"""Plugins: TOML manifests in plugins/ and assets/plugins/, and LoRA adapters applied to a loaded pipeline.

A manifest describes one plugin (a LoRA, or a ControlNet that engine/control.py loads through `load_manifests`);
a bare LoRA `.safetensors` dropped into a plugin folder is found too, its family read from its tensors.
`PluginManager.apply` checks every requested LoRA before it touches the model (file format, family, target layers
and their shapes), loads it once per pipeline as a named peft adapter, and from then on only re-weights it with
`set_adapters`: switching plugins between messages never re-reads a file. A failed load is rolled back, so the
pipeline's adapters and its output stay exactly as they were. The manifest format is documented in plugins/README.md.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import os
import re
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .request import CONTROL_KINDS, FAMILIES, Request, UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

ROOT = models.ROOT
ASSETS = ROOT / "assets"
DEFAULT_DIRS = (ROOT / "plugins", ASSETS / "plugins")
ENV_DIRS = "STUDIO_PLUGINS"  # os.pathsep-separated folders that replace DEFAULT_DIRS
KINDS = ("lora", "controlnet")
# manifest field -> accepted TOML types; anything else in a manifest is an error that names the field
FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "kind": (str,), "family": (str,), "source": (str,), "weight_name": (str,),
    "weight": (int, float), "trigger": (str, list), "description": (str,), "preview": (str,),
    "control": (str,), "mode": (int,),
}
REQUIRED = ("name", "kind", "family", "source")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
HUB_RE = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")
FAMILY_NAMES = {"builtin": "the built-in model", "sd15": "SD 1.5", "sd2": "SD 2.x", "sdxl": "SDXL", "flux": "Flux"}
# cross-attention width (the input of attn2.to_k) of each UNet family; the built-in model's is read from its config
CROSS_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
LORA_A = (".lora_A.", ".lora_down.", ".lora.down.", "_lora.down.", ".lora_linear_layer.down.")
AUTO_FUSE_AFTER = 3  # identical consecutive requests before the LoRAs are fused on a GPU (fuse_after=None)


# ------------------------------------------------------------------------------------------------ manifests

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
    path: Path | None = None  # the manifest file; the .safetensors itself for a bare LoRA
    weight_name: str | None = None  # the file inside a Hub repo
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
            elif suffix in models.PICKLE_SUFFIXES:
                found.append(Manifest(name=path.stem, path=path, source=path.name, error=_pickle_text(path.name)))
    seen: dict[str, Path | None] = {}
    for m in found:
        if m.name in seen and m.error is None:
            m.error = f"the name {m.name!r} is already used by {_show(seen[m.name])}; rename one of them"
        seen.setdefault(m.name, m.path)
    return found


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _read_manifest(path: Path, root: Path) -> Manifest:
    m = Manifest(name=path.stem, path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        m.error = f"{path.name} is not valid TOML ({e})"
        return m
    if isinstance(data.get("name"), str) and data["name"].strip():
        m.name = data["name"].strip()
    m.error = _manifest_error(m, data, root)
    return m


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
    m.kind, m.family, m.source = data["kind"], data["family"], data["source"].strip()
    if m.kind not in KINDS:
        return f"field 'kind' = {m.kind!r}: use one of {', '.join(KINDS)}"
    if m.family not in FAMILIES:
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
    if m.kind == "lora" and ("control" in data or "mode" in data):
        return f"field '{'control' if 'control' in data else 'mode'}' is only for controlnet manifests"
    if "preview" in data:
        preview, error = _inside(m.path.parent / data["preview"], root, "field 'preview'")
        if error:
            return error
        m.preview = preview if preview.is_file() else None
    return _source_error(m, root)


def _source_error(m: Manifest, root: Path) -> str | None:
    src = m.source
    if m.weight_name is not None:  # a file in a Hub repo
        if not HUB_RE.fullmatch(src):
            return f"field 'source' = {src!r}: with weight_name, the source is a Hub id like 'org/repo'"
        if Path(m.weight_name).suffix.lower() != ".safetensors":
            return f"field 'weight_name' = {m.weight_name!r}: {_pickle_text(m.weight_name)}"
        m.hub = True
        return None
    suffix = Path(src).suffix.lower()
    if suffix in models.PICKLE_SUFFIXES:
        return f"field 'source' = {src!r}: {_pickle_text(src)}"
    local = m.path.parent / Path(src).expanduser()
    if suffix == ".safetensors" or local.exists() or src.startswith((".", "/", "~")) or not HUB_RE.fullmatch(src):
        m.file, error = _inside(local, root, "field 'source'")
        if error:
            return error
        if m.kind == "lora" and suffix != ".safetensors":
            return f"field 'source' = {src!r}: a LoRA source must be a .safetensors file"
        return None
    if m.kind == "lora":
        return (f"missing field 'weight_name': the source {src!r} is a Hub repo, so name the LoRA file in it, e.g. "
                "weight_name = \"pytorch_lora_weights.safetensors\"")
    m.hub = True  # a ControlNet repo in diffusers layout
    return None


def _inside(path: Path, root: Path, what: str) -> tuple[Path, str | None]:
    """`path` resolved (symlinks and '..' followed); an error unless it stays inside `root` or assets/."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(r) for r in (root, ASSETS.resolve())):
        return resolved, None
    return resolved, (f"{what} leads outside the plugin folder {_show(root)} and assets/ (to {resolved}); keep "
                      "plugin files inside the plugin folder")


def _bare_lora(path: Path, root: Path) -> Manifest:
    m = Manifest(name=path.stem, source=path.name, path=path, description=f"LoRA file in {_show(path.parent)}")
    m.file, m.error = _inside(path, root, "this file (a link?)")
    if m.error is None and not NAME_RE.fullmatch(m.name):
        m.error = ("its file name is not a usable plugin name: rename it to letters, digits, '_', '.' or '-', or "
                   "write a manifest for it")
    if m.error is None:
        try:
            m.family = detect_lora_family(_header(m.file, path.name)) or "unknown"
        except UserError as e:
            m.error = str(e)
    return m


# ------------------------------------------------------------------------------------------ LoRA file checks

_HEADERS: dict[tuple[str, int, int], dict[str, list[int]]] = {}


def _header(path: Path, label: str) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header (no tensor read); a clear error if corrupt or truncated."""
    from safetensors import safe_open

    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _HEADERS:
        return _HEADERS[key]
    if stat.st_size == 0:
        raise UserError(f"{label}: the file is empty (0 bytes). Download or copy it again.")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad headers and offsets
        raise UserError(f"{label}: not a valid .safetensors file ({str(e).splitlines()[0][:120]}). It may be "
                        "truncated or corrupt: download or copy it again.") from None
    if len(_HEADERS) > 256:
        _HEADERS.clear()
    _HEADERS[key] = shapes
    return shapes


def builtin_cross_width() -> int | None:
    """The built-in UNet's cross-attention width, from its config (None while the model is not there)."""
    try:
        return int(json.loads((models.BUILTIN_DIR / "unet" / "config.json").read_text())["cross_attention_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def detect_lora_family(shapes: dict[str, list[int]]) -> str | None:
    """The family a LoRA was made for, from its tensor names and shapes (kohya or diffusers naming); None if unsure.

    Flux LoRAs target a transformer (`transformer.`, kohya `double_blocks`/`single_blocks`); UNet LoRAs are told
    apart by the width of the cross-attention key/value input: 768 SD1.5, 1024 SD2, 2048 SDXL, the built-in's own.
    """
    keys = list(shapes)
    if any(k.startswith("transformer.") or "single_transformer_blocks" in k or "double_blocks" in k
           or "single_blocks" in k for k in keys):
        return "flux"
    widths = dict(CROSS_WIDTHS)
    builtin = builtin_cross_width()
    if builtin:
        widths[builtin] = "builtin"
    for k, shape in shapes.items():
        if re.search(r"attn2[._](?:processor[._])?to_[kv]", k) and any(s in k for s in LORA_A) and len(shape) == 2:
            return widths.get(shape[1])
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return "sdxl"
    for k, shape in shapes.items():  # text-encoder-only LoRA (768 wide fits SD1.5 and SDXL's first encoder alike)
        if re.search(r"(?:self_attn|mlp)[._]", k) and any(s in k for s in LORA_A) and len(shape) == 2:
            return {1024: "sd2"}.get(shape[1]) or ("builtin" if shape[1] == builtin else None)
    return None


@dataclass
class LoraCheck:
    """What the checks found: the LoRA layers per pipeline component, and layers that match nothing (ignored)."""

    layers: dict[str, int]
    ignored: list[str]


def check_lora(path: Path, pipe, family: str, declared: str, label: str) -> LoraCheck:
    """Everything we can know before touching `pipe`: format, family, and that every target layer exists with the
    LoRA's shapes. Raises UserError naming `label` (the plugin and its file) and the reason."""
    suffix = path.suffix.lower()
    if suffix in models.PICKLE_SUFFIXES:
        raise UserError(f"{label}: {_pickle_text(path.name)}")
    if suffix != ".safetensors":
        raise UserError(f"{label}: LoRAs are loaded only from .safetensors files.")
    shapes = _header(path, label)
    if not any("lora" in k.lower() for k in shapes):
        kind = models.family_of_keys(shapes)
        hint = f" It looks like a full {FAMILY_NAMES.get(kind, kind)} checkpoint: use it with --model." if kind else ""
        raise UserError(f"{label}: this is not a LoRA (none of its {len(shapes)} tensors is a LoRA layer).{hint}")
    detected = detect_lora_family(shapes)
    if detected and declared not in ("unknown", detected):
        raise UserError(f"{label}: the manifest says it is for {FAMILY_NAMES[declared]}, but its tensors are those of "
                        f"a {FAMILY_NAMES.get(detected, detected)} LoRA. Fix the manifest's 'family'.")
    made_for = detected or (declared if declared != "unknown" else None)
    if made_for and made_for != family:
        raise UserError(f"{label}: made for {FAMILY_NAMES.get(made_for, made_for)}, but the current model is "
                        f"{FAMILY_NAMES[family]}. Pick a {FAMILY_NAMES.get(made_for, made_for)} model, or a LoRA "
                        f"made for {FAMILY_NAMES[family]}.")
    return _match_layers(path, pipe, label)


def _match_layers(path: Path, pipe, label: str) -> LoraCheck:
    """Convert the file's keys the way diffusers will (kohya and older formats included) and compare every target
    layer with the model's own modules: missing layers and shape mismatches are found here, not inside diffusers."""
    import diffusers
    import torch
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    kwargs = {"use_safetensors": True, "return_lora_metadata": True}
    if getattr(pipe, "unet", None) is not None:
        kwargs["unet_config"] = pipe.unet.config  # SDXL kohya files name blocks the SGM way
    try:
        state = type(pipe).lora_state_dict(str(path), **kwargs)
    except Exception as e:  # any failure of diffusers' converters
        raise UserError(f"{label}: diffusers {diffusers.__version__} cannot read this LoRA's format "
                        f"({_first_line(e)}). Kohya/Civitai LoRAs load as far as diffusers converts them; LyCORIS "
                        "(LoHa/LoKr) and some trainer-specific layouts do not. Try a diffusers or kohya LoRA "
                        "export.") from None
    state = state[0] if isinstance(state, tuple) else state
    layers, ignored, total = {}, [], 0
    claimed: set[str] = set()
    for name in pipe._lora_loadable_modules:
        model = getattr(pipe, name, None)
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        claimed |= {f"{name}.{k}" for k in part}
        if model is None or not part:
            continue
        try:
            if isinstance(model, diffusers.ModelMixin):
                if "lora_A" not in next(iter(part)):
                    part = convert_unet_state_dict_to_peft(part)
            else:  # a transformers text encoder
                part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
                if not hasattr(model, "text_model"):  # CLIP is flattened in transformers 5
                    part = {k.removeprefix("text_model."): v for k, v in part.items()}
        except Exception as e:
            raise UserError(f"{label}: diffusers {diffusers.__version__} cannot convert this LoRA's {name} layers "
                            f"({_first_line(e)}). Re-export it in diffusers or kohya format.") from None
        modules = dict(model.named_modules())
        matched = 0
        for key, tensor in part.items():
            if ".lora_A." not in key:
                continue
            total += 1
            module_name = key.split(".lora_A.")[0]
            module = modules.get(module_name)
            if module is None:
                ignored.append(f"{name}.{module_name}")
                continue
            base = getattr(module, "base_layer", module)
            b = part.get(key.replace(".lora_A.", ".lora_B."))
            want = None
            if isinstance(base, torch.nn.Linear):
                want = (base.in_features, base.out_features)
            elif isinstance(base, torch.nn.Conv2d):
                want = (base.in_channels, base.out_channels)
            got = (tensor.shape[1] if tensor.ndim > 1 else None, b.shape[0] if b is not None else None)
            if want is not None and got != want:
                raise UserError(f"{label}: its layer {name}.{module_name} is {got[0]}->{got[1]} wide, the model's is "
                                f"{want[0]}->{want[1]}. The LoRA was made for a different model (another family or "
                                "size).")
            matched += 1
        if matched:
            layers[name] = matched
    stray = [k for k in state if k not in claimed]
    if not layers:
        example = (ignored or stray or ["?"])[0]
        raise UserError(f"{label}: none of its {total or len(state)} LoRA layers match anything in this model (e.g. "
                        f"{example!r}), so it would do nothing. It was made for another model.")
    ignored += sorted({k.rsplit(".lora", 1)[0] for k in stray})
    return LoraCheck(layers, ignored)


def _pickle_text(name: str) -> str:
    return (f"{Path(name).name} is a pickle file, which can run code when loaded; plugins load only .safetensors "
            "files. Download the .safetensors version, or convert it once in a trusted environment.")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _show(path: Path | None) -> str:
    """A path for messages: relative to the project when inside it."""
    if path is None:
        return "?"
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------- the manager

@dataclass
class _Adapter:
    """One LoRA loaded on a pipeline as a peft adapter."""

    adapter: str  # peft adapter name (plugin names may hold characters peft does not allow)
    file: Path
    origin: str  # where the plugin's weights come from (local path or Hub file): another origin is loaded anew
    stamp: tuple[int, int]  # (mtime_ns, size) when loaded: a changed file is loaded again
    digest: str  # A1111 short hash for `Lora hashes`
    layers: dict[str, int]
    used: float = 0.0


@dataclass
class _PipeState:
    adapters: dict[str, _Adapter] = field(default_factory=dict)  # plugin name (or CLI path) -> adapter
    active: tuple[tuple[str, float], ...] = ()  # (adapter, weight) in effect; () = LoRAs off
    streak: int = 0  # consecutive requests with this same `active`
    fused: bool = False
    snapshots: list = field(default_factory=list)  # (parameter, its unfused value on CPU) while fused


class PluginManager:
    """Finds plugins and applies LoRAs to loaded pipelines; adapters stay loaded per pipeline and are re-weighted.

    `fuse_after`: fuse the LoRAs into the weights after this many identical consecutive requests (faster sampling,
    unfused again exactly on the next change); None = 3 on CUDA and never elsewhere, 0 = never.
    `max_cached`: LoRAs kept loaded per pipeline; the least recently used inactive one is dropped beyond that.
    `hotswap`: for compiled models: once `max_cached` is reached, a new LoRA is hot-swapped into the weights of the
    least recently used idle adapter instead of adding modules, so the compiled graph survives (diffusers'
    `enable_lora_hotswap(target_rank=hotswap_rank)` runs before the first LoRA; compile after that, or expect
    one recompile). Text-encoder LoRA layers are never hot-swapped (diffusers cannot); they load as new adapters.
    """

    def __init__(self, dirs: list[Path] | None = None, fuse_after: int | None = None, max_cached: int = 8,
                 hotswap: bool = False, hotswap_rank: int = 64):
        if dirs is None:
            env = os.environ.get(ENV_DIRS, "").strip()
            dirs = [Path(p) for p in env.split(os.pathsep) if p.strip()] if env else list(DEFAULT_DIRS)
        self.dirs = [Path(d).expanduser() for d in dirs]
        self.fuse_after = fuse_after
        self.max_cached = max(1, max_cached)
        self.hotswap, self.hotswap_rank = hotswap, hotswap_rank
        self.loads = 0  # files loaded into a pipeline so far (a cached switch does not count)
        self._pipes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------------------------- listing
    def manifests(self) -> list[Manifest]:
        """Every plugin, read afresh (manifests added while the app runs show up)."""
        return load_manifests(self.dirs)

    def listing(self, family: str | None = None) -> list[dict]:
        """Plain rows for `app.py plugins` and the UI panel; `compatible`/`why` judge against `family` if given."""
        rows = []
        for m in self.manifests():
            status = self._status(m)
            why = status[len("error: "):] if status.startswith("error") else ""
            if not why and family and m.family not in (family, "unknown"):
                why = f"made for {FAMILY_NAMES.get(m.family, m.family)}; the current model is {FAMILY_NAMES[family]}"
            rows.append({"name": m.name, "kind": m.kind, "family": m.family, "weight": m.weight, "status": status,
                         "description": m.description, "trigger": m.trigger, "compatible": not why, "why": why,
                         "preview": str(m.preview) if m.preview else None, "source": m.source,
                         "weight_name": m.weight_name, "control": m.control, "mode": m.mode,
                         "path": _show(m.path)})
        return rows

    @staticmethod
    def _status(m: Manifest) -> str:
        if m.error:
            return f"error: {m.error}"
        if m.hub:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(m.source, m.weight_name or "config.json")  # config.json: a ControlNet repo
            return "ready" if isinstance(cached, str) else "download on use"
        if m.file is None or not m.file.exists():
            return f"error: its file {m.source!r} is missing (looked for {_show(m.file)})"
        return "ready"

    # --------------------------------------------------------------------------------------- apply
    def apply(self, loaded, req: Request, allow_paths: bool = False) -> dict:
        """Make `req.loras` (and nothing else) active on `loaded`'s pipeline. Returns {"prompt": the prompt with
        trigger words added, "infotext": {"Lora hashes": ...}, "triggers": [...], "notes": [...]}.

        `allow_paths`: a LoRA may be named by a local file path (the CLI); remote users get plugin names only.
        Every check runs before the model is touched; any failure leaves adapters and output as they were.
        """
        pipe, family = loaded.pipe, loaded.source.family
        state = self._pipes.setdefault(pipe, _PipeState())
        names = [spec.name for spec in req.loras]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"LoRA {twice[0]!r} is asked for twice; give each LoRA once with its weight.")
        catalog = {m.name: m for m in self.manifests()} if req.loras else {}
        t0 = time.perf_counter()
        # 1. resolve and check, without touching the model
        plan = []  # (spec, plugin, cached adapter or None, file, check or None)
        for spec in req.loras:
            plugin = self._find(spec.name, catalog, family, allow_paths)
            cached = state.adapters.get(spec.name)
            if cached is not None and _still_current(cached, plugin):
                plan.append((spec, plugin, cached, cached.file, None))
                continue
            file = self._fetch(plugin)
            label = f"LoRA {plugin.name!r} ({_show(file)})"
            plan.append((spec, plugin, None, file, check_lora(file, pipe, family, plugin.family, label)))
        notes = [f"LoRA {p.name!r}: {len(c.ignored)} of its layers match nothing in this model and are ignored "
                 f"(e.g. {c.ignored[0]})." for _, p, _, _, c in plan if c is not None and c.ignored]
        # 2. load what is new; on failure delete what this call loaded and restore the previous state
        fresh = [item for item in plan if item[2] is None]
        loaded_now: list[str] = []
        in_use = {a for a, _ in state.active}
        keep = {spec.name for spec, *_ in plan} | {k for k, a in state.adapters.items() if a.adapter in in_use}
        if fresh:
            self._unfuse(pipe, state)
            if not self.hotswap:
                self._evict(pipe, state, keep, room=len(fresh))
            elif not pipe.get_list_adapters():
                pipe.enable_lora_hotswap(target_rank=self.hotswap_rank, check_compiled="warn")
        new: dict[str, _Adapter] = {}
        try:
            for spec, plugin, _, file, check in fresh:
                slot = self._idle_slot(state, keep, check) if self.hotswap else None
                new[spec.name] = self._load(pipe, plugin, spec.name, file, check, loaded_now, slot)
        except Exception as e:
            self._rollback(pipe, state, loaded_now)
            if isinstance(e, UserError):
                raise
            raise UserError(f"LoRA {spec.name!r} could not be loaded by diffusers ({_first_line(e)}). Nothing was "
                            "changed; the previous LoRAs are still in effect.") from None
        stale = [state.adapters[k].adapter for k in new if k in state.adapters]  # files changed on disk
        state.adapters.update(new)
        if stale:
            pipe.delete_adapters(stale)
        plan = [(s, p, a or new[s.name], f, c) for s, p, a, f, c in plan]
        # 3. weights
        now = time.monotonic()
        for _, _, adapter, _, _ in plan:
            adapter.used = now
        active = tuple((adapter.adapter, float(spec.weight)) for spec, _, adapter, _, _ in plan if spec.weight != 0)
        if self._activate(pipe, state, active, force=bool(loaded_now)):
            notes.append(f"{len(active)} LoRA(s) fused into the model for speed (same set {state.streak} times).")
        # 4. prompt and metadata
        prompt, triggers = req.prompt, []
        for spec, plugin, *_ in plan:
            if spec.weight != 0 and plugin.trigger and plugin.trigger.lower() not in prompt.lower():
                prompt = f"{prompt}, {plugin.trigger}" if prompt else plugin.trigger
                triggers.append(plugin.trigger)
        hashes = ", ".join(f"{_tag_name(spec.name)}: {adapter.digest}" for spec, _, adapter, _, _ in plan)
        if plan:
            log.info("LoRAs %s ready in %.3f s (%d loaded from file)", [f"{s.name}={s.weight:g}" for s, *_ in plan],
                     time.perf_counter() - t0, len(loaded_now))
        return {"prompt": prompt, "infotext": {"Lora hashes": hashes} if hashes else {}, "triggers": triggers,
                "notes": notes}

    def unload(self, loaded) -> None:
        """Remove every LoRA from `loaded`'s pipeline and free its memory (the model is back to its own modules)."""
        pipe = loaded.pipe
        state = self._pipes.pop(pipe, None)
        if state is None:
            return
        self._unfuse(pipe, state)
        if state.adapters:
            pipe.unload_lora_weights()
        models._free_memory()

    # ------------------------------------------------------------------------------------ internals
    def _find(self, name: str, catalog: dict[str, Manifest], family: str, allow_paths: bool) -> Manifest:
        plugin = catalog.get(name)
        if plugin is not None:
            if plugin.error:
                raise UserError(f"Plugin {name!r} ({_show(plugin.path)}) cannot be used: {plugin.error}.")
            if plugin.kind != "lora":
                raise UserError(f"Plugin {name!r} is a {plugin.kind}, not a LoRA; use it as a control instead.")
            return plugin
        path = Path(name).expanduser()
        if (path.suffix.lower() in (".safetensors", *models.PICKLE_SUFFIXES) or "/" in name or os.sep in name
                or name.startswith(("~", "."))):
            if not allow_paths:
                raise UserError(f"LoRA {name!r}: LoRAs are chosen by plugin name here; only the command line may load "
                                "a file by its path. Put the file in plugins/ to use it from the app.")
            if path.suffix.lower() in models.PICKLE_SUFFIXES:
                raise UserError(f"LoRA {name!r}: {_pickle_text(path.name)}")
            if not path.is_file():
                raise UserError(f"LoRA {name!r}: no such file.")
            return Manifest(name=name, source=name, path=path, file=path.resolve())
        usable = sorted(m.name for m in catalog.values() if m.kind == "lora" and not m.error
                        and m.family in (family, "unknown"))
        close = difflib.get_close_matches(name, list(catalog), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"There is no LoRA plugin named {name!r}.{hint} For this model: "
                        f"{', '.join(usable) or 'none'} (see `python app.py plugins`).")

    def _fetch(self, plugin: Manifest) -> Path:
        """The plugin's local file, downloaded from the Hub on first use."""
        if not plugin.hub:
            if plugin.file is None or not plugin.file.is_file():
                raise UserError(f"LoRA {plugin.name!r}: its file {plugin.source!r} is missing ({_show(plugin.file)}).")
            return plugin.file
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        where = f"{plugin.source}/{plugin.weight_name}"
        try:
            return Path(hf_hub_download(plugin.source, plugin.weight_name))
        except LocalEntryNotFoundError:
            raise UserError(f"LoRA {plugin.name!r}: {where} is not downloaded yet and the Hub cannot be reached "
                            f"(offline). Connect once, or fetch it with `hf download {plugin.source} "
                            f"{plugin.weight_name}`.") from None
        except GatedRepoError:
            raise UserError(f"LoRA {plugin.name!r}: {plugin.source} is gated; accept its licence on huggingface.co "
                            "and set HF_TOKEN.") from None
        except RepositoryNotFoundError:
            raise UserError(f"LoRA {plugin.name!r}: there is no Hub repo {plugin.source!r} (or it is private: set "
                            "HF_TOKEN). Fix the manifest's 'source'.") from None
        except EntryNotFoundError:
            raise UserError(f"LoRA {plugin.name!r}: {plugin.source} has no file {plugin.weight_name!r}. Fix the "
                            "manifest's 'weight_name'.") from None
        except (OSError, ValueError) as e:
            raise UserError(f"LoRA {plugin.name!r}: could not download {where} ({_first_line(e)}).") from None

    def _load(self, pipe, plugin: Manifest, name: str, file: Path, check: LoraCheck, loaded_now: list[str],
              slot: _Adapter | None = None) -> _Adapter:
        """Load `file` as a new adapter, or hot-swap it into the idle adapter `slot` (no new modules, so a compiled
        model is not recompiled); a swap that peft refuses (other target layers) falls back to a new adapter."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        from .metadata import model_hash

        stat = file.stat()
        t0 = time.perf_counter()
        adapter = None
        if slot is not None:
            loaded_now.append(slot.adapter)  # swapped or deleted: it was idle either way
            try:
                pipe.load_lora_weights(str(file), adapter_name=slot.adapter, hotswap=True, use_safetensors=True)
                adapter = slot.adapter
            except Exception as e:  # peft checks before swapping anything
                log.info("hot-swap of %s into %s refused (%s); loading it as a new adapter", name, slot.adapter,
                         _first_line(e))
                pipe.delete_adapters(slot.adapter)
        if adapter is None:
            adapter = f"{re.sub(r'[^A-Za-z0-9_]', '_', Path(name).stem)[:40]}_{next(self._ids)}"
            loaded_now.append(adapter)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peft's "multiple adapters" notice: that is the point here
                pipe.load_lora_weights(str(file), adapter_name=adapter, use_safetensors=True)
        self.loads += 1
        for component, expected in check.layers.items():  # diffusers only warns when keys fall through
            model = getattr(pipe, component)
            got = sum(isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}) for m in model.modules())
            if got < expected:
                raise UserError(f"LoRA {name!r} ({_show(file)}): only {got} of its {expected} {component} layers "
                                "took effect in diffusers, so it was not loaded.")
        log.info("loaded LoRA %s from %s in %.3f s", name, file.name, time.perf_counter() - t0)
        return _Adapter(adapter, file, _origin(plugin), (stat.st_mtime_ns, stat.st_size), model_hash(file, 12),
                        check.layers)

    def _rollback(self, pipe, state: _PipeState, loaded_now: list[str]) -> None:
        present = {a for names in pipe.get_list_adapters().values() for a in names}
        doomed = [a for a in loaded_now if a in present]
        if doomed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.delete_adapters(doomed)
        self._activate(pipe, state, state.active, force=True)
        _release_cuda_cache()

    def _idle_slot(self, state: _PipeState, keep: set[str], check: LoraCheck) -> _Adapter | None:
        """For hot-swap: the least recently used idle adapter once the cache is full (taken out of the cache)."""
        if len(state.adapters) < self.max_cached or any(c.startswith("text_encoder") for c in check.layers):
            return None  # room left, or text-encoder layers, which diffusers cannot hot-swap
        idle = sorted((a.used, k) for k, a in state.adapters.items()
                      if k not in keep and not any(c.startswith("text_encoder") for c in a.layers))
        return state.adapters.pop(idle[0][1]) if idle else None

    def _evict(self, pipe, state: _PipeState, keep: set[str], room: int) -> None:
        """Drop least recently used, unrequested adapters so that `room` new ones fit under `max_cached`."""
        idle = sorted((a.used, k) for k, a in state.adapters.items() if k not in keep)
        dropped = []
        while idle and len(state.adapters) + room > self.max_cached:
            _, key = idle.pop(0)
            dropped.append(state.adapters.pop(key).adapter)
        if dropped:
            pipe.delete_adapters(dropped)
            _release_cuda_cache()
            log.info("dropped %d cached LoRA(s) to stay under %d per model", len(dropped), self.max_cached)

    def _activate(self, pipe, state: _PipeState, active: tuple, force: bool = False) -> bool:
        """Set the active adapters and their weights; disable LoRAs entirely when none is asked for. Fuses them
        once the same set has been asked for `fuse_after` times in a row; True when it fused just now."""
        same = active == state.active
        state.streak = state.streak + 1 if same else 1
        if force or not same:  # an unchanged set needs no module walk (diffusers' set_adapters is the slow part)
            self._unfuse(pipe, state)
            if state.adapters or force:
                if active:
                    pipe.enable_lora()
                    pipe.set_adapters([a for a, _ in active], [w for _, w in active])
                else:
                    pipe.disable_lora()
            state.active = active
        if not active or state.fused:
            return False
        fuse_after = self._fuse_after(pipe)
        if fuse_after and state.streak >= fuse_after:
            self._fuse(pipe, state)
            return True
        return False

    def _fuse_after(self, pipe) -> int:
        if self.fuse_after is not None:
            return self.fuse_after
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        on_gpu = denoiser is not None and next(denoiser.parameters()).device.type == "cuda"
        return AUTO_FUSE_AFTER if on_gpu else 0

    def _components(self, pipe) -> list[str]:
        return [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]

    def _fuse(self, pipe, state: _PipeState) -> None:
        """Merge the active LoRAs into the weights. The touched weights are saved first, so that unfusing restores
        them bit for bit (subtracting the delta again would drift, most in bf16)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        names = [a for a, _ in state.active]
        t0 = time.perf_counter()
        for component in self._components(pipe):
            for module in getattr(pipe, component).modules():
                if isinstance(module, BaseTunerLayer) and any(a in getattr(module, "lora_A", {}) for a in names):
                    weight = module.get_base_layer().weight
                    state.snapshots.append((weight, weight.detach().to("cpu", copy=True)))
        pipe.fuse_lora(components=self._components(pipe), adapter_names=names)
        state.fused = True
        log.info("fused LoRAs %s in %.3f s", names, time.perf_counter() - t0)

    def _unfuse(self, pipe, state: _PipeState) -> None:
        if not state.fused:
            return
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft: "Already unmerged" for layers of inactive adapters
            pipe.unfuse_lora(components=self._components(pipe))
        with torch.no_grad():
            for weight, saved in state.snapshots:
                weight.copy_(saved)
        state.fused, state.snapshots = False, []


def _origin(plugin: Manifest) -> str:
    return f"hub:{plugin.source}/{plugin.weight_name}" if plugin.hub else str(plugin.file)


def _still_current(cached: _Adapter, plugin: Manifest) -> bool:
    """A cached adapter serves unless its plugin now points elsewhere or its file changed; a file deleted after
    loading does not matter (the weights are in memory)."""
    if _origin(plugin) != cached.origin:
        return False
    if plugin.hub:
        return True  # the Hub cache is huggingface_hub's business
    try:
        stat = cached.file.stat()
    except OSError:
        return True
    return (stat.st_mtime_ns, stat.st_size) == cached.stamp


def _release_cuda_cache() -> None:
    """Give freed adapter memory back to the GPU (no gc.collect: adapters hold no reference cycles)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tag_name(name: str) -> str:
    """The name A1111 tags use; the same rule as engine.metadata (a path with ':' etc. becomes its stem)."""
    return name if not any(c in name for c in ":<>") else Path(name).stem
