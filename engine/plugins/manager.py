"""Plugins: `PluginManager`, which applies LoRA plugins to loaded pipelines as peft adapters.

`PluginManager.apply` checks every requested LoRA before it touches the model (file format, family, target layers
and their shapes), loads it once per pipeline as a named peft adapter, and from then on only re-weights it with
`set_adapters`: switching plugins between messages never re-reads a file. A failed load is rolled back, so the
pipeline's adapters and its output stay exactly as they were. Identical requests in a row fuse the LoRAs (on a GPU).
Finding plugins (TOML manifests in plugins/ and assets/plugins/, bare LoRA files) lives in engine/plugin_manifests.py,
the checks of a LoRA file in engine/lora_check.py; their public names are importable from here too.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .lora_check import (
    CROSS_WIDTHS,
    FAMILY_NAMES,
    LORA_A,
    LoraCheck,
    _first_line,
    _match_layers,
    builtin_cross_width,
    check_lora_file,
    detect_lora_family,
)
from .plugin_manifests import (
    ASSETS,
    DEFAULT_DIRS,
    ENV_DIRS,
    FIELDS,
    HUB_RE,
    KINDS,
    NAME_RE,
    REQUIRED,
    ROOT,
    Manifest,
    _show,
    fetch_lora_file,
    find_lora,
    load_manifests,
    manifest_status,
)
from .request import Request, UserError

__all__ = [
    "ASSETS", "AUTO_FUSE_AFTER", "CROSS_WIDTHS", "DEFAULT_DIRS", "ENV_DIRS", "FAMILY_NAMES", "FIELDS", "HUB_RE",
    "KINDS", "LORA_A", "NAME_RE", "REQUIRED", "ROOT", "LoraCheck", "Manifest", "PluginManager",
    "builtin_cross_width", "check_lora", "detect_lora_family", "fetch_lora_file", "find_lora", "load_manifests",
    "manifest_status",
]

log = logging.getLogger(__name__)

AUTO_FUSE_AFTER = 3  # identical consecutive requests before the LoRAs are fused on a GPU (fuse_after=None)


def check_lora(path: Path, pipe, family: str, declared: str, label: str) -> LoraCheck:
    """Everything we can know before touching `pipe`: format, family, and that every target layer exists with the
    LoRA's shapes. Raises UserError naming `label` (the plugin and its file) and the reason."""
    check_lora_file(path, family, declared, label)
    return _match_layers(path, pipe, label)  # looked up here, so that a test can stub out the layer check


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
    layers: list = field(default_factory=list)  # the pipeline's peft LoRA layers (see _set_adapters)
    layers_key: tuple = ()


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
            status = manifest_status(m)
            why = status[len("error: "):] if status.startswith("error") else ""
            if not why and family and m.family not in (family, "unknown"):
                why = f"made for {FAMILY_NAMES.get(m.family, m.family)}; the current model is {FAMILY_NAMES[family]}"
            rows.append({"name": m.name, "kind": m.kind, "family": m.family, "weight": m.weight, "status": status,
                         "description": m.description, "trigger": m.trigger, "compatible": not why, "why": why,
                         "preview": str(m.preview) if m.preview else None, "source": m.source,
                         "weight_name": m.weight_name, "control": m.control, "mode": m.mode,
                         "path": _show(m.path)})
        return rows

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
            plugin = find_lora(spec.name, catalog, family, allow_paths)
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
    _fetch = staticmethod(fetch_lora_file)  # the plugin's local file, downloaded from the Hub on first use

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
                    self._set_adapters(pipe, state, [a for a, _ in active], [w for _, w in active])
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

    def _set_adapters(self, pipe, state: _PipeState, names: list[str], weights: list[float]) -> None:
        """What `pipe.enable_lora()` + `pipe.set_adapters(names, weights)` do, through the same peft layer methods,
        on a cached list of the LoRA layers: diffusers walks every module of every component three times per
        call (16.7 vs 7.1 ms per switch on the built-in model). The list is rebuilt whenever a file was loaded
        or the adapter names changed."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        models = [getattr(pipe, c) for c in self._components(pipe)]
        key = (self.loads,) + tuple((id(m), tuple(getattr(m, "peft_config", {}))) for m in models)
        if state.layers_key != key:
            state.layers = [x for m in models for x in m.modules() if isinstance(x, BaseTunerLayer)]
            state.layers_key = key
        for layer in state.layers:
            layer.enable_adapters(True)
            layer.set_adapter(names)
            for name, weight in zip(names, weights):
                layer.set_scale(name, weight)

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
    """The name A1111 tags use; the same rule as engine.infotext (a path with ':' etc. becomes its stem)."""
    return name if not any(c in name for c in ":<>") else Path(name).stem
