"""Where models come from and how they are loaded: family detection, Hub/folder/single-file loading, the cache.

A model is named by one string: `builtin`, a Hugging Face Hub id, a local diffusers folder, or a single
`.safetensors` checkpoint. Its family (builtin, sd15, sdxl, flux) is read from the checkpoint itself.
Loaded pipelines stay in an LRU cache bounded by a memory budget; the image-to-image and ControlNet
variants of a model are made with `from_pipe`, so they share the weights already in memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .request import UserError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_DIR = ROOT / "assets" / "builtin"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")

# What users pick from in the UI and `app.py models`; any other Hub id works too.
KNOWN_MODELS: dict[str, str] = {
    "builtin": "builtin",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "black-forest-labs/FLUX.1-schnell": "flux",
    "black-forest-labs/FLUX.1-dev": "flux",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
}
# a single file needs its family's configs; these repos hold them (cached after one online use)
SINGLE_FILE_CONFIGS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux": "black-forest-labs/FLUX.1-dev",
}
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
}
# family -> (text-to-image, image-to-image, ControlNet, ControlNet image-to-image) pipeline classes
PIPELINE_CLASSES = {
    "builtin": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
                "StableDiffusionControlNetImg2ImgPipeline"),
    "sd15": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
             "StableDiffusionControlNetImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLControlNetPipeline",
             "StableDiffusionXLControlNetImg2ImgPipeline"),
    "flux": ("FluxPipeline", "FluxImg2ImgPipeline", "FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline"),
}


@dataclass
class Source:
    """A resolved `--model` string."""

    name: str  # what the user typed (or "builtin")
    kind: str  # builtin | hub | folder | file
    location: str  # Hub id or absolute path
    family: str


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------- family detection

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
    except (ValueError, KeyError) as e:
        raise UserError(f"{index} is not a valid model_index.json ({e}). Re-download or re-save the model.") from e
    # longest prefix first: StableDiffusionXL... before StableDiffusion...
    for prefix in sorted(PIPELINE_FAMILIES, key=len, reverse=True):
        if cls.startswith(prefix.replace("Pipeline", "")):
            return PIPELINE_FAMILIES[prefix]
    raise UserError(f"{folder} holds a {cls}, which this app does not run. Supported: SD1.5, SDXL and Flux "
                    "pipelines.")


def safetensors_keys(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header, without reading the tensors; clear error if corrupt."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad headers/offsets
        raise UserError(f"{path} is not a valid .safetensors file ({str(e).splitlines()[0][:120]}). The download "
                        "may be incomplete or the file corrupt: download it again.") from None


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


def check_not_pickle(path: Path, what: str = "model") -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{path.name} is a pickle file ({path.suffix}), which can run code when loaded; this app "
                        f"loads {what}s only from .safetensors. Convert it once in a trusted environment, e.g. "
                        "`safetensors.torch.save_file(torch.load(f, weights_only=True)['state_dict'], "
                        "'model.safetensors')`, or download the .safetensors version.")


def resolve(model: str) -> Source:
    """Turn a `--model` string into a Source with its family, or explain why it can't be used."""
    model = (model or "builtin").strip()
    if model == "builtin":
        if not (BUILTIN_DIR / "model_index.json").is_file():
            raise UserError(f"The built-in model is missing from {BUILTIN_DIR}. Restore it with `git checkout "
                            "assets/builtin` or train it with `python app.py train builtin`.")
        return Source("builtin", "builtin", str(BUILTIN_DIR), "builtin")
    path = Path(model).expanduser()
    looks_like_path = path.exists() or model.startswith((".", "/", "~")) or path.suffix or os.sep in model.strip("/")
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            return Source(model, "folder", str(path), family_of_folder(path))
        check_not_pickle(path)
        if path.suffix.lower() != ".safetensors":
            raise UserError(f"{path.name} is not a model checkpoint this app reads. Use a .safetensors file, a "
                            "diffusers folder or a Hub id.")
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty (0 bytes). Download it again.")
        family = family_of_keys(safetensors_keys(path))
        if family is None:
            raise UserError(f"{path.name} does not look like an SD1.5, SDXL or Flux checkpoint (its tensor names match "
                            "none). If it is a LoRA, load it with --lora instead.")
        return Source(model, "file", str(path), family)
    if looks_like_path and model.count("/") != 1:
        raise UserError(f"No such file or folder: {model}. Check the path, or give a Hub id like "
                        "'stabilityai/stable-diffusion-xl-base-1.0'.")
    return Source(model, "hub", model, hub_family(model))


def hub_family(repo_id: str) -> str:
    """Family of a Hub model from its model_index.json (cached, or fetched when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        index = hf_hub_download(repo_id, "model_index.json")
    except LocalEntryNotFoundError:
        if (Path(repo_id).suffix or repo_id.startswith(".")):
            raise UserError(f"No such file or folder: {repo_id}.") from None
        raise UserError(f"Model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                        "(offline). Connect once and run `python app.py models --download " + repo_id + "` (or "
                        "`hf download " + repo_id + "`), or pick a cached model from `python app.py models`.") from None
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN.") from None
    except RepositoryNotFoundError:
        raise UserError(f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private: set HF_TOKEN). "
                        "Check the id.") from None
    except EntryNotFoundError:
        raise UserError(f"{repo_id} is not a diffusers pipeline (no model_index.json). Use a diffusers repo or a "
                        ".safetensors file.") from None
    except (OSError, ValueError) as e:
        raise UserError(f"Could not reach the Hub for {repo_id!r} ({type(e).__name__}). Check the network, or set "
                        "HF_HUB_OFFLINE=1 to use cached models only.") from None
    return family_of_folder(Path(index).parent)


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


def load_pipeline(source: Source, device: str, dtype):
    """Load the family's text-to-image pipeline from a Source (safetensors only)."""
    import diffusers
    from huggingface_hub.errors import LocalEntryNotFoundError

    cls = getattr(diffusers, PIPELINE_CLASSES[source.family][0])
    t0 = time.perf_counter()
    try:
        if source.kind == "file":
            from .single_file import load_single_file

            pipe = load_single_file(source.family, source.location, dtype)
        else:
            extra = {"safety_checker": None, "requires_safety_checker": False} if source.family in ("sd15",) else {}
            pipe = cls.from_pretrained(source.location, dtype=dtype, use_safetensors=True, **extra)
    except UserError:
        raise
    except LocalEntryNotFoundError:
        raise UserError(f"Some files of {source.name!r} are not cached and the Hub is offline. Connect once to "
                        "download them.") from None
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
    pipe: object  # the text-to-image pipeline; owns the weights
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
        """The image-to-image or ControlNet pipeline for this model, sharing the loaded components."""
        import diffusers

        t2i, i2i, cn, cn_i2i = PIPELINE_CLASSES[self.source.family]
        name = {"txt2img": t2i, "img2img": i2i, "control": cn, "control_img2img": cn_i2i}[kind]
        if kind == "txt2img":
            return self.pipe
        if controlnet is None:
            key = (kind,)
            if key not in self.variants:
                self.variants[key] = getattr(diffusers, name).from_pipe(self.pipe)
                self.variants[key].set_progress_bar_config(disable=True)
            return self.variants[key]
        # ControlNet variants are cheap to make (no weights copied) and change with the units
        pipe = getattr(diffusers, name).from_pipe(self.pipe, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make_scheduler(name: str, base_config: dict):
    """A scheduler by our name (see request.SCHEDULERS) from a model's scheduler config."""
    import diffusers

    from .request import SCHEDULERS

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
        _free_memory()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def download(repo_id: str) -> str:
    """Fetch only the files a Hub pipeline needs (safetensors weights, configs) into the Hugging Face cache."""
    from diffusers import DiffusionPipeline

    if _offline():
        raise UserError("HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it and try again.")
    family = hub_family(repo_id)
    try:
        path = DiffusionPipeline.download(repo_id, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not download {repo_id}: {str(e).splitlines()[0][:200]}") from None
    log.info("downloaded %s (%s) to %s", repo_id, family, path)
    return str(path)


def cached_hub_models() -> list[tuple[str, str]]:
    """(repo id, family) of diffusers pipelines in the local Hugging Face cache."""
    from huggingface_hub import scan_cache_dir

    out = []
    try:
        info = scan_cache_dir()
    except Exception:  # no cache folder yet
        return out
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            index = next((f for f in rev.files if f.file_name == "model_index.json"), None)
            if index is not None:
                try:
                    out.append((repo.repo_id, family_of_folder(Path(index.file_path).parent)))
                except UserError:
                    pass  # a pipeline class we don't run; not listed
                break
    return out
