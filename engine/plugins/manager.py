"""`PluginManager`: lists the plugins and applies a request's LoRAs to a loaded pipeline.

`apply` checks every requested LoRA before it touches the model (file format, family, target layers and their
shapes: lora_files.py), loads it once per pipeline as a named peft adapter (adapters.py), and from then on only
re-weights it: switching plugins between messages never re-reads a file. A failed load is rolled back, so the
pipeline's adapters and its output stay exactly as they were. Identical requests in a row fuse the LoRAs on a GPU
(fusing.py). Where plugins are found and what a manifest may say: manifests.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from ..request import LoraSpec, Request, UserError
from ..sources.hub import Hub
from ..sources.loading import free_memory
from . import fusing
from .adapters import Adapter, AdapterCache, PipeState, still_current
from .lora_files import FAMILY_NAMES, LoraCheck, check_lora, first_line
from .manifests import (
    SAMPLING,
    Manifest,
    fetch_lora_file,
    files_state,
    find_lora,
    folders_state,
    load_manifests,
    manifest_status,
    show_path,
)

log = logging.getLogger(__name__)


@dataclass
class PlannedLora:
    """One requested LoRA after the checks: its plugin, file, and the cached adapter (or the check of a new one)."""

    spec: LoraSpec
    plugin: Manifest
    file: Path
    adapter: Adapter | None = None  # None until loaded
    check: LoraCheck | None = None  # for a file that is not loaded yet


@dataclass
class AppliedLoras:
    """What `apply` did: the prompt with trigger words added, the infotext keys, and notes for the user."""

    prompt: str
    infotext: dict = field(default_factory=dict)  # {"Lora hashes": ...}
    triggers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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

    def __init__(self, dirs: list[Path], fuse_after: int | None = None, max_cached: int = 8,
                 hotswap: bool = False, hotswap_rank: int = 64, hub: Hub | None = None):
        self.dirs = [Path(d).expanduser() for d in dirs]
        self.fuse_after = fuse_after
        self.cache = AdapterCache(max_cached, hotswap, hotswap_rank)
        self.hub = hub or Hub()
        self._pipes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._read: tuple[tuple, list[Manifest]] = ((None,), [])  # (files_state, manifests) when last read

    @property
    def loads(self) -> int:
        """Files loaded into a pipeline so far (a cached switch does not count)."""
        return self.cache.loads

    # ------------------------------------------------------------------------------------- listing
    def manifests(self) -> list[Manifest]:
        """Every plugin, read again when a file in the plugin folders (or one a manifest names) was added, changed
        or removed: plugins added while the app runs show up. A generation asks twice, and reading them all cost
        ~3 ms of a 4-step 64x64 image's 0.11 s; looking at the files' state costs ~0.2 ms."""
        state, manifests = self._read
        folders = folders_state(self.dirs)  # before any reading: a file written meanwhile is read again next time
        if (folders, files_state([m.file for m in manifests if m.file])) != state:
            manifests = load_manifests(self.dirs)
            self._read = ((folders, files_state([m.file for m in manifests if m.file])), manifests)
        return list(self._read[1])

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
                         "steps": m.steps, "guidance": m.guidance, "scheduler": m.scheduler,
                         "path": show_path(m.path)})
        return rows

    def sampling(self, req: Request) -> tuple[Request, str | None]:
        """`req` with the steps, guidance and scheduler its LoRAs ask for (a distilled 4-step `fast` plugin) where
        the user left them to the model, and a note saying which were taken; `req` itself when none apply."""
        if not req.loras or None not in (req.steps, req.guidance, req.scheduler):
            return req, None
        catalog = {m.name: m for m in self.manifests() if m.kind == "lora" and m.error is None}
        taken: dict = {}
        for spec in req.loras:
            plugin = catalog.get(spec.name)
            if plugin is None or spec.weight == 0:
                continue
            for key in SAMPLING:
                if getattr(req, key) is None and getattr(plugin, key) is not None and key not in taken:
                    taken[key] = (getattr(plugin, key), plugin.name)
        if not taken:
            return req, None
        said = ", ".join(f"{key} {value:g}" if not isinstance(value, str) else f"{key} {value}"
                         for key, (value, _) in taken.items())
        names = sorted({name for _, name in taken.values()})
        return (dataclasses.replace(req, **{key: value for key, (value, _) in taken.items()}),
                f"LoRA {', '.join(names)} set its own {said} (set them yourself to override).")

    def file_of(self, plugin: Manifest) -> Path:
        """The plugin's local file (downloaded from the Hub on first use)."""
        return fetch_lora_file(plugin, self.hub)

    # --------------------------------------------------------------------------------------- apply
    def apply(self, loaded, req: Request, allow_paths: bool = False) -> AppliedLoras:
        """Make `req.loras` (and nothing else) active on `loaded`'s pipeline.

        `allow_paths`: a LoRA may be named by a local file path (the CLI); remote users get plugin names only.
        Every check runs before the model is touched; any failure leaves adapters and output as they were.
        """
        pipe, family = loaded.pipe, loaded.source.family
        state = self._pipes.setdefault(pipe, PipeState())
        t0 = time.perf_counter()
        plan = self._plan(pipe, family, state, req.loras, allow_paths)
        notes = [f"LoRA {p.plugin.name!r}: {len(p.check.ignored)} of its layers match nothing in this model and are "
                 f"ignored (e.g. {p.check.ignored[0]})." for p in plan if p.check is not None and p.check.ignored]
        loaded_now = self._load_new(pipe, state, plan)
        # weights
        now = time.monotonic()
        for p in plan:
            p.adapter.used = now
        active = tuple((p.adapter.adapter, float(p.spec.weight)) for p in plan if p.spec.weight != 0)
        if self._activate(pipe, state, active, force=bool(loaded_now)):
            notes.append(f"{len(active)} LoRA(s) fused into the model for speed (same set {state.streak} times).")
        # prompt and metadata
        prompt, triggers = req.prompt, []
        for p in plan:
            trigger = p.plugin.trigger
            if p.spec.weight != 0 and trigger and trigger.lower() not in prompt.lower():
                prompt = f"{prompt}, {trigger}" if prompt else trigger
                triggers.append(trigger)
        hashes = ", ".join(f"{_tag_name(p.spec.name)}: {p.adapter.digest}" for p in plan)
        if plan:
            log.info("LoRAs %s ready in %.3f s (%d loaded from file)",
                     [f"{p.spec.name}={p.spec.weight:g}" for p in plan], time.perf_counter() - t0, len(loaded_now))
        return AppliedLoras(prompt, {"Lora hashes": hashes} if hashes else {}, triggers, notes)

    def _plan(self, pipe, family: str, state: PipeState, loras: list[LoraSpec], allow_paths: bool) -> list:
        """Resolve and check every requested LoRA, without touching the model."""
        catalog = {m.name: m for m in self.manifests()} if loras else {}
        plan = []
        for spec in loras:
            plugin = find_lora(spec.name, catalog, family, allow_paths)
            cached = state.adapters.get(spec.name)
            if cached is not None and still_current(cached, plugin):
                plan.append(PlannedLora(spec, plugin, cached.file, adapter=cached))
                continue
            file = fetch_lora_file(plugin, self.hub)
            label = f"LoRA {plugin.name!r} ({show_path(file)})"
            plan.append(PlannedLora(spec, plugin, file, check=check_lora(file, pipe, family, plugin.family, label)))
        return plan

    def _load_new(self, pipe, state: PipeState, plan: list[PlannedLora]) -> list[str]:
        """Load the planned LoRAs that are not loaded yet; on failure delete what this call loaded and restore the
        previous state. Returns the adapter names loaded (or swapped) now."""
        fresh = [p for p in plan if p.adapter is None]
        loaded_now: list[str] = []
        if not fresh:
            return loaded_now
        in_use = {a for a, _ in state.active}
        keep = {p.spec.name for p in plan} | {k for k, a in state.adapters.items() if a.adapter in in_use}
        fusing.unfuse(pipe, state)
        if not self.cache.hotswap:
            self.cache.evict(pipe, state, keep, room=len(fresh))
        elif not pipe.get_list_adapters():
            pipe.enable_lora_hotswap(target_rank=self.cache.hotswap_rank, check_compiled="warn")
        new: dict[str, Adapter] = {}
        p = fresh[0]
        try:
            for p in fresh:
                slot = self.cache.idle_slot(state, keep, p.check) if self.cache.hotswap else None
                new[p.spec.name] = self.cache.load(pipe, p.plugin, p.spec.name, p.file, p.check, loaded_now, slot)
        except Exception as e:
            self.cache.discard(pipe, loaded_now)
            self._activate(pipe, state, state.active, force=True)
            if isinstance(e, UserError):
                raise
            raise UserError(f"LoRA {p.spec.name!r} could not be loaded by diffusers ({first_line(e)}). Nothing was "
                            "changed; the previous LoRAs are still in effect.") from None
        stale = [state.adapters[k].adapter for k in new if k in state.adapters]  # files changed on disk
        state.adapters.update(new)
        if stale:
            pipe.delete_adapters(stale)
        for p in fresh:
            p.adapter = new[p.spec.name]
        return loaded_now

    def unload(self, loaded) -> None:
        """Remove every LoRA from `loaded`'s pipeline and free its memory (the model is back to its own modules)."""
        pipe = loaded.pipe
        state = self._pipes.pop(pipe, None)
        if state is None:
            return
        fusing.unfuse(pipe, state)
        if state.adapters:
            pipe.unload_lora_weights()
        free_memory()

    def _activate(self, pipe, state: PipeState, active: tuple, force: bool = False) -> bool:
        """Set the active adapters and their weights; disable LoRAs entirely when none is asked for. Fuses them
        once the same set has been asked for `fuse_after` times in a row; True when it fused just now."""
        same = active == state.active
        state.streak = state.streak + 1 if same else 1
        if force or not same:  # an unchanged set needs no module walk (diffusers' set_adapters is the slow part)
            fusing.unfuse(pipe, state)
            if state.adapters or force:
                if active:
                    self.cache.set_weights(pipe, state, [a for a, _ in active], [w for _, w in active])
                else:
                    pipe.disable_lora()
            state.active = active
        if not active or state.fused:
            return False
        after = fusing.fuse_after(pipe, self.fuse_after)
        if after and state.streak >= after:
            fusing.fuse(pipe, state, bypass=not self.cache.hotswap)  # hotswap: a compiled model keeps its tree
            return True
        return False


def _tag_name(name: str) -> str:
    """The name A1111 tags use; the same rule as engine.images.infotext (a path with ':' etc. becomes its stem)."""
    return name if not any(c in name for c in ":<>") else Path(name).stem
