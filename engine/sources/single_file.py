"""Load a single `.safetensors` checkpoint (A1111 / ComfyUI / Civitai style) as a diffusers pipeline.

A single file holds weights only; the pipeline around them (component configs, tokenizers, scheduler)
comes from a diffusers config: a folder beside the file named like it without `.safetensors`, a
folder or Hub id the caller gives, or else the family's Hub repo. Hub configs are fetched once
(json/txt only, a few hundred KB) into the normal Hugging Face cache and read from there offline.
SD1.5 and SDXL files carry every component; a Flux file carries the transformer, and the VAE and
text encoders come from the config's weights.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..families import family as family_of
from ..families import has_variants
from ..request import UserError
from .checkpoint import read_header, variant_of_keys
from .hub import Hub

log = logging.getLogger(__name__)

# what diffusers itself fetches for a single file's configs (no weights)
CONFIG_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt", "**/*.model"]
def config_for(family: str, path: Path, config: str | None = None) -> str:
    """Which config a single file loads with: the folder beside it, then `config`, then the family's repo."""
    beside = path.with_suffix("")
    if (beside / "model_index.json").is_file():
        return str(beside)
    if config:
        return config
    kin = family_of(family)
    if has_variants(family):
        variant = variant_of_keys(family, read_header(path, path.name))
        return kin.variant_configs.get(variant, kin.single_file_config)
    return kin.single_file_config


def _how_to_get(family: str, repo: str, path: Path) -> str:
    if family_of(family).single_file_transformer:
        fetch = (f"`hf download {repo} --exclude 'transformer/*' 'flux1-*' 'ae.safetensors'` (configs, VAE and "
                 "text encoders)")
    else:
        fetch = f"`hf download {repo} --include '*.json' '*.txt'`"
    return (f"Run once online, or {fetch}, or put a diffusers config folder next to the file named "
            f"{path.with_suffix('').name}/.")


def local_config(family: str, path: Path, config: str, hub: Hub) -> str:
    """A local folder holding `config`'s pipeline configs; downloads them (configs only) unless offline."""
    if Path(config).expanduser().is_dir():
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise UserError(f"The config folder {folder} has no model_index.json. Use a folder saved with "
                            "save_pretrained (or downloaded from the Hub) for this model family.")
        return str(folder)
    folder = hub.snapshot(config, CONFIG_PATTERNS, f"The configs of {config}, which {path.name} needs,", not_cached=(
        f"{path.name} is a single-file {family} checkpoint and needs the configs of {config}, which are not in the "
        f"Hugging Face cache (offline). {_how_to_get(family, config, path)}"))
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{config} is not a diffusers pipeline (no model_index.json), so it cannot serve as the "
                        f"config of {path.name}. {_how_to_get(family, config, path)}")
    return str(folder)


def _explain(e: Exception, family: str, path: Path, config: str) -> UserError:
    """Turn diffusers' load errors into one line that names the problem and the fix."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    size = r"(?:torch\.Size\(\[([\d, ]*)\]\)|\(([\d, ]*)\))"  # torch.Size([16, 32]) or (16, 32)
    shape = re.search(rf"because (\S+) expected shape {size}, but got {size}", msg)
    if shape:
        name, want, got = shape[1], shape[2] or shape[3], shape[4] or shape[5]
    elif shape := re.search(rf"Cannot load (\S+) because it has shape {size} in the checkpoint but shape {size}", msg):
        name, got, want = shape[1], shape[2] or shape[3], shape[4] or shape[5]
    if shape:
        return UserError(f"{path.name} has {family} tensor names but does not fit the config {config}: {name} has "
                         f"shape ({got}) in the file, the config expects ({want}). It may be another variant (SD2, "
                         "inpainting, refiner); put the matching diffusers config folder next to the file named "
                         f"{path.with_suffix('').name}/.")
    if "appear to be missing in the checkpoint" in msg:  # diffusers' SingleFileComponentError
        return UserError(f"{path.name} lacks weights the {family} pipeline needs ({msg}). Use a full checkpoint "
                         "(UNet, VAE and text encoders in one file) or the model's diffusers folder.")
    return UserError(f"{path.name} could not be loaded as a {family} checkpoint with the config {config} ({msg}).")


def _check_complete(pipe, path: Path, family: str, config: str) -> None:
    """diffusers leaves weights the file lacks on the meta device without complaint; refuse such a pipeline."""
    import torch

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            missing = [n for n, t in [*component.named_parameters(), *component.named_buffers()] if t.is_meta]
            if missing:
                raise UserError(f"{path.name} does not fit the config {config}: its {name} has no weights for "
                                f"{len(missing)} tensor(s) such as {missing[0]}. Is it really a {family} checkpoint "
                                "of the same variant? Put the matching diffusers config folder next to the file "
                                f"named {path.with_suffix('').name}/.")


def load_single_file(family: str, path: str, dtype, config: str | None = None, hub: Hub | None = None):
    """The family's text-to-image pipeline from one `.safetensors` checkpoint (never a pickle)."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path.name} is not a .safetensors file; single-file checkpoints are read only from "
                        ".safetensors (pickle files can run code when loaded).")
    kin = family_of(family)
    if kin.single_file_config is None:
        raise UserError(f"Single-file checkpoints of {kin.label} models are not supported; give its diffusers folder "
                        "or Hub id instead.")
    hub = hub or Hub()
    name = config_for(family, path, config)
    folder = local_config(family, path, name, hub)
    log.info("loading %s as %s with the config %s", path.name, family, name)
    try:
        if kin.single_file_transformer:
            # the file holds the transformer; the VAE and text encoders come from the config's own weights
            transformer = getattr(diffusers, kin.single_file_transformer).from_single_file(
                str(path), config=folder, subfolder="transformer", dtype=dtype, local_files_only=True)
            source = folder if Path(name).expanduser().is_dir() else name  # a Hub id: fetch/read its weights
            try:
                pipe = getattr(diffusers, kin.pipelines["txt2img"]).from_pretrained(
                    source, transformer=transformer, dtype=dtype, use_safetensors=True, local_files_only=hub.offline)
            except OSError as e:  # weights of the VAE / text encoders not cached, or not in the folder
                raise UserError(f"{path.name} holds only the {kin.label} transformer; the VAE and text encoders "
                                f"come from {name}, and they are missing ({str(e).splitlines()[0][:120]}). "
                                f"{_how_to_get(family, name, path)}") from None
        else:
            extra = {**kin.load_extra, "feature_extractor": None} if kin.load_extra else {}
            pipe = getattr(diffusers, kin.pipelines["txt2img"]).from_single_file(
                str(path), config=folder, dtype=dtype, local_files_only=True, **extra)
    except UserError:
        raise
    except (ValueError, KeyError, IndexError, RuntimeError, OSError, SingleFileComponentError) as e:
        raise _explain(e, family, path, name) from None
    _check_complete(pipe, path, family, name)
    return pipe
