"""Loading a resolved model: the pipeline classes per family, device and dtype, the LRU cache of loaded models.

The image-to-image and ControlNet variants of a model are made with `from_pipe`, so they share the weights
already in memory. Loaded pipelines stay in a cache bounded by a memory budget.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..families import family
from ..request import SCHEDULERS, UserError
from .hub import Hub
from .pinned import pin
from .resolve import Source

log = logging.getLogger(__name__)

def pipeline_class(source: Source, kind: str) -> str:
    """The diffusers class that runs `kind` (txt2img, img2img, control, control_img2img, inpaint) for `source`."""
    kin = family(source.family)
    jobs = kin.jobs(source.variant)
    if kind in jobs:
        return jobs[kind]
    can = ", ".join(_job_words(k, kin, source.variant) for k in jobs)
    use = kin.variant_uses.get(source.variant)
    if use:
        raise UserError(f"{source.name} is a {kin.label} model made for {use}; it cannot run "
                        f"{_job_words(kind, kin, source.variant)}, only {can}. Use an ordinary {kin.label} model "
                        "for that.")
    raise UserError(f"{source.name} is a {kin.label} model; diffusers has no pipeline for "
                    f"{_job_words(kind, kin, source.variant)} with it. It can do: {can}.")


def _job_words(kind: str, kin, variant: str) -> str:
    """A kind of job as people say it ("text to image", "an edit of the image" for an editing model's img2img)."""
    if kind == "img2img" and kin.edit_limit(variant):
        return "instruction edits of an image"
    return {"txt2img": "text to image", "img2img": "image to image", "inpaint": "inpaint and outpaint",
            "control": "ControlNet", "control_img2img": "ControlNet image to image"}.get(kind, kind)


def loading_class(source: Source) -> str:
    """The class a model is loaded as: its text-to-image pipeline, else (an editor alone) its first one."""
    jobs = family(source.family).jobs(source.variant)
    return jobs.get("txt2img") or next(iter(jobs.values()))


# ---------------------------------------------------------------------------------------- loading

def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but no CUDA GPU is visible. Use --device cpu.")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str | None = None):
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype and dtype != "auto":
        if dtype not in names:
            raise UserError(f"Unknown dtype {dtype!r}; use one of fp32, fp16, bf16 or auto.")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32  # bf16 on this CPU measured slower for the small built-in UNet (see benchmarks)


def load_pipeline(source: Source, device: str, dtype, hub: Hub | None = None):
    """Load the model's first pipeline (`loading_class`) from a Source (safetensors only); `hub`: the process's Hub."""
    import diffusers
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub = hub or Hub()
    cls = getattr(diffusers, loading_class(source))
    t0 = time.perf_counter()
    try:
        if source.kind == "file":
            from .single_file import load_single_file

            pipe = load_single_file(source.family, source.location, dtype, hub=hub)
        else:
            extra = dict(family(source.family).load_extra)
            pipe = cls.from_pretrained(source.location, dtype=dtype, use_safetensors=True,
                                       local_files_only=hub.offline and source.kind == "hub", **extra)
    except UserError:
        raise
    except LocalEntryNotFoundError as e:
        raise hub.explain(e, f"Part of {source.name!r}", source.location) from None
    except (OSError, EnvironmentError) as e:
        msg = str(e).splitlines()[0][:200]
        if "safetensors" in msg.lower() or "no file named" in msg.lower():
            raise UserError(f"{source.name} has no .safetensors weights ({msg}). This app does not load pickle "
                            "weights; use a repo or folder with .safetensors files.") from None
        raise UserError(f"Could not load {source.name}: {msg}") from None
    except (ValueError, KeyError, RuntimeError) as e:
        msg = str(e).splitlines()[0][:200]
        raise UserError(f"{source.name} could not be loaded as a {source.family} model ({msg}). Is the file "
                        "complete and really that kind of checkpoint?") from None
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s (%s, %s) in %.2f s", source.name, source.family, source.kind, time.perf_counter() - t0)
    return pipe


def pipeline_bytes(pipe) -> int:
    import torch

    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
    return total


@dataclass
class LoadedModel:
    source: Source
    pipe: object  # the pipeline it was loaded as (`loading_class`); owns the weights
    nbytes: int
    scheduler_config: dict
    variants: dict = field(default_factory=dict)  # (kind, controlnet ids) -> pipeline sharing `pipe`'s components
    offload: bool = False
    schedulers: dict = field(default_factory=dict)  # name -> scheduler made from this model's config

    def scheduler(self, name: str):
        """The named scheduler for this model, made once (set_timesteps resets its state on every call)."""
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(name, self.scheduler_config)
        return self.schedulers[name]

    def variant(self, kind: str, controlnet=None):
        """The image-to-image, inpaint or ControlNet pipeline for this model, sharing the loaded components."""
        import diffusers

        name = pipeline_class(self.source, kind)
        if kind == "txt2img" or name == type(self.pipe).__name__:
            return self.pipe
        if controlnet is None:
            key = (kind,)
            if key not in self.variants:
                self.variants[key] = self._derive(getattr(diffusers, name))
            return self.variants[key]
        # ControlNet variants are cheap to make (no weights copied) and change with the units
        return self._derive(getattr(diffusers, name), controlnet=controlnet)

    def _derive(self, cls, **parts):
        """A pipeline of class `cls` on this model's loaded components (plus `parts`), on their device."""
        pipe = cls.from_pipe(self.pipe, **parts)
        pipe.set_progress_bar_config(disable=True)
        if not self.offload:
            pin(pipe)
        return pipe


def make_scheduler(name: str, base_config: dict):
    """A scheduler by our name (see request.SCHEDULERS) from a model's scheduler config."""
    import diffusers

    cls_name, extra, _, _ = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


class ModelCache:
    """LRU cache of loaded models, bounded by a memory budget in bytes."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()

    def get(self, key: str) -> LoadedModel | None:
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        return None

    def put(self, key: str, model: LoadedModel) -> None:
        self.models[key] = model
        self.models.move_to_end(key)
        while len(self.models) > 1 and sum(m.nbytes for m in self.models.values()) > self.budget:
            old, _ = self.models.popitem(last=False)
            log.info("model cache: evicted %s to stay under %.1f GB", old, self.budget / 2**30)
        free_memory()


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


