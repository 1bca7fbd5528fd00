"""The LoRA adapters loaded on each pipeline: loading (or hot-swapping) a file as a peft adapter, the per-pipeline
cache with its least-recently-used eviction, discarding a failed load, and setting the active adapters' weights.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..request import UserError
from .lora_files import LoraCheck, first_line
from .manifests import Manifest, show_path

log = logging.getLogger(__name__)


@dataclass
class Adapter:
    """One LoRA loaded on a pipeline as a peft adapter."""

    adapter: str  # peft adapter name (plugin names may hold characters peft does not allow)
    file: Path
    origin: str  # where the plugin's weights come from (local path or Hub file): another origin is loaded anew
    stamp: tuple[int, int]  # (mtime_ns, size) when loaded: a changed file is loaded again
    digest: str  # A1111 short hash for `Lora hashes`
    layers: dict[str, int]
    used: float = 0.0


@dataclass
class PipeState:
    adapters: dict[str, Adapter] = field(default_factory=dict)  # plugin name (or CLI path) -> adapter
    active: tuple[tuple[str, float], ...] = ()  # (adapter, weight) in effect; () = LoRAs off
    streak: int = 0  # consecutive requests with this same `active`
    fused: bool = False
    snapshots: list = field(default_factory=list)  # (parameter, its unfused value on CPU) while fused
    bypassed: list = field(default_factory=list)  # (parent, name, peft layer) taken out of the tree while fused
    layers: list = field(default_factory=list)  # the pipeline's peft LoRA layers (see _set_adapters)
    layers_key: tuple = ()


class AdapterCache:
    """Adapters per pipeline, at most `max_cached` each. `hotswap` (compiled models): a new LoRA replaces the
    weights of the least recently used idle adapter instead of adding modules, so the compiled graph survives."""

    def __init__(self, max_cached: int = 8, hotswap: bool = False, hotswap_rank: int = 64):
        self.max_cached = max(1, max_cached)
        self.hotswap, self.hotswap_rank = hotswap, hotswap_rank
        self.loads = 0  # files loaded into a pipeline so far (a cached switch does not count)
        self._ids = itertools.count(1)

    def load(self, pipe, plugin: Manifest, name: str, file: Path, check: LoraCheck, loaded_now: list[str],
             slot: Adapter | None = None) -> Adapter:
        """Load `file` as a new adapter, or hot-swap it into the idle adapter `slot` (no new modules, so a compiled
        model is not recompiled); a swap that peft refuses (other target layers) falls back to a new adapter."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        from ..images.metadata import model_hash

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
                         first_line(e))
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
                raise UserError(f"LoRA {name!r} ({show_path(file)}): only {got} of its {expected} {component} layers "
                                "took effect in diffusers, so it was not loaded.")
        log.info("loaded LoRA %s from %s in %.3f s", name, file.name, time.perf_counter() - t0)
        return Adapter(adapter, file, origin(plugin), (stat.st_mtime_ns, stat.st_size), model_hash(file, 12),
                        check.layers)

    def discard(self, pipe, loaded_now: list[str]) -> None:
        """Delete the adapters one failed `apply` loaded (the caller then restores the previous weights)."""
        present = {a for names in pipe.get_list_adapters().values() for a in names}
        doomed = [a for a in loaded_now if a in present]
        if doomed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.delete_adapters(doomed)
        release_cuda_cache()

    def idle_slot(self, state: PipeState, keep: set[str], check: LoraCheck) -> Adapter | None:
        """For hot-swap: the least recently used idle adapter once the cache is full (taken out of the cache)."""
        if len(state.adapters) < self.max_cached or any(c.startswith("text_encoder") for c in check.layers):
            return None  # room left, or text-encoder layers, which diffusers cannot hot-swap
        idle = sorted((a.used, k) for k, a in state.adapters.items()
                      if k not in keep and not any(c.startswith("text_encoder") for c in a.layers))
        return state.adapters.pop(idle[0][1]) if idle else None

    def evict(self, pipe, state: PipeState, keep: set[str], room: int) -> None:
        """Drop least recently used, unrequested adapters so that `room` new ones fit under `max_cached`."""
        idle = sorted((a.used, k) for k, a in state.adapters.items() if k not in keep)
        dropped = []
        while idle and len(state.adapters) + room > self.max_cached:
            _, key = idle.pop(0)
            dropped.append(state.adapters.pop(key).adapter)
        if dropped:
            pipe.delete_adapters(dropped)
            release_cuda_cache()
            log.info("dropped %d cached LoRA(s) to stay under %d per model", len(dropped), self.max_cached)

    def set_weights(self, pipe, state: PipeState, names: list[str], weights: list[float]) -> None:
        """What `pipe.enable_lora()` + `pipe.set_adapters(names, weights)` do, through the same peft layer methods,
        on a cached list of the LoRA layers: diffusers walks every module of every component three times per
        call (16.7 vs 7.1 ms per switch on the built-in model). The list is rebuilt whenever a file was loaded
        or the adapter names changed."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        models = [getattr(pipe, c) for c in lora_components(pipe)]
        key = (self.loads,) + tuple((id(m), tuple(getattr(m, "peft_config", {}))) for m in models)
        if state.layers_key != key:
            state.layers = [x for m in models for x in m.modules() if isinstance(x, BaseTunerLayer)]
            state.layers_key = key
        for layer in state.layers:
            layer.enable_adapters(True)
            layer.set_adapter(names)
            for name, weight in zip(names, weights):
                layer.set_scale(name, weight)


def lora_components(pipe) -> list[str]:
    """The pipeline's components that carry LoRA layers (unet/transformer, text encoders)."""
    return [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]


def origin(plugin: Manifest) -> str:
    return f"hub:{plugin.source}/{plugin.weight_name}" if plugin.hub else str(plugin.file)


def still_current(cached: Adapter, plugin: Manifest) -> bool:
    """A cached adapter serves unless its plugin now points elsewhere or its file changed; a file deleted after
    loading does not matter (the weights are in memory)."""
    if origin(plugin) != cached.origin:
        return False
    if plugin.hub:
        return True  # the Hub cache is huggingface_hub's business
    try:
        stat = cached.file.stat()
    except OSError:
        return True
    return (stat.st_mtime_ns, stat.st_size) == cached.stamp


def release_cuda_cache() -> None:
    """Give freed adapter memory back to the GPU (no gc.collect: adapters hold no reference cycles)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
