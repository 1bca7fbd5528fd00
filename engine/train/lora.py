"""LoRA training (peft adapters on the UNet's attention): the built-in demo plugins and `app.py train-lora`.

The base model stays frozen; only low-rank adapters on to_q/to_k/to_v/to_out (and, for structural
styles, the ResNet convolutions) learn. The result is a
diffusers-format LoRA `.safetensors` plus a manifest, so it appears in `plugins/` like any other plugin.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import world
from .builtin import _to_tensor, tokenize, v_loss
from .loop import train_loop

log = logging.getLogger(__name__)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

# the built-in demo plugins: name -> (render style, trigger words, description, steps, rank, extra target layers).
# Outlines change the shape's structure, which attention alone did not learn (it swapped colours instead): its
# LoRA also adapts the ResNet convolutions.
DEMO_LORAS = {
    "outline": ("outline", "outline style", "Draws shapes and figures as outlines instead of filled.", 1000, 8,
                ["conv1", "conv2"]),
    "pastel": ("pastel", "pastel style", "Turns the palette to soft pastel colours.", 400, 4, []),
}


def train_lora(pipe, batches: Callable[[random.Random, int], tuple[torch.Tensor, list[str]]], steps: int,
               rank: int = 4, batch: int = 16, lr: float = 1e-3, seed: int = 0,
               targets: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Train a LoRA on `pipe.unet`; `batches(rng, n)` gives (images in [-1, 1], captions). Returns its state dict."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    for m in (vae, unet, text_encoder):
        m.requires_grad_(False).eval()
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets or TARGETS, init_lora_weights="gaussian")
    unet.add_adapter(config, adapter_name="new_lora")
    params = [p for p in unet.parameters() if p.requires_grad]
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas, prediction = noise_sched.alphas_cumprod, noise_sched.config.prediction_type

    def make(step: int):
        return batches(random.Random(seed * 1_000_003 + 700_000 + step), batch)

    def loss_fn(step: int, images_captions) -> torch.Tensor:
        images, captions = images_captions
        gen = torch.Generator().manual_seed(seed * 104729 + step)
        with torch.no_grad():
            x0 = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
            text = text_encoder(tokenize(tokenizer, captions))[0]
        return v_loss(lambda xt, t: unet(xt, t, text).sample, x0, alphas, gen, prediction)

    # no checkpoint: a LoRA trains in minutes, and `train-lora` users expect a fresh run each time
    train_loop("lora", {}, torch.optim.AdamW(params, lr=lr), make, loss_fn, steps=steps, lr=lr, warmup=30,
               log_every=50)
    state = get_peft_model_state_dict(unet, adapter_name="new_lora")
    unet.delete_adapters("new_lora")
    return state


def save_lora(pipe_cls, state: dict, folder: Path, name: str, manifest: dict) -> Path:
    """Write `<name>.safetensors` (diffusers LoRA format, fp16) and `<name>.toml` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe_cls.save_lora_weights(folder, unet_lora_layers={k: v.half() for k, v in state.items()},
                               weight_name=f"{name}.safetensors", safe_serialization=True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in manifest.items()]
    (folder / f"{name}.toml").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.safetensors"


def world_batches(style: str, trigger: str):
    def batches(rng: random.Random, n: int):
        scenes = [world.random_scene(rng, two_objects=0.2) for _ in range(n)]
        images = [world.render(s, style) for s in scenes]
        return _to_tensor(images), [world.caption(s, rng, drop=0.15, extra=trigger) for s in scenes]

    return batches


def train_demo_loras(pipe_dir: Path, out: Path, steps: int | None = None, seed: int = 0) -> list[Path]:
    """The built-in model's demo plugins (see DEMO_LORAS), written into `out` (e.g. assets/plugins)."""
    from diffusers import StableDiffusionPipeline

    paths = []
    for name, (style, trigger, description, n, rank, extra) in DEMO_LORAS.items():
        pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32)
        state = train_lora(pipe, world_batches(style, trigger), steps or n, rank=rank, seed=seed,
                           targets=TARGETS + extra)
        manifest = {"name": name, "kind": "lora", "family": "builtin", "source": f"{name}.safetensors",
                    "weight": 1.0, "trigger": trigger, "description": description}
        paths.append(save_lora(StableDiffusionPipeline, state, out, name, manifest))
    return paths


def folder_batches(folder: Path, size: int):
    """Images with a same-named .txt caption beside each, resized to the model's native size."""
    from ..images.loading import fit_to, load_image
    from ..request import UserError

    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            txt = path.with_suffix(".txt")
            caption = txt.read_text().strip() if txt.is_file() else ""
            items.append((np.asarray(fit_to(load_image(path, f"Training image {path.name}"), size, size)), caption))
    if not items:
        raise UserError(f"{folder} has no training images (.png/.jpg/.webp, each with a .txt caption beside it).")

    def batches(rng: random.Random, n: int):
        picked = [items[rng.randrange(len(items))] for _ in range(n)]
        return _to_tensor([p[0] for p in picked]), [p[1] for p in picked]

    return batches


def train_lora_from_folder(folder: Path, name: str, model: str = "builtin", steps: int = 600, rank: int = 4,
                           trigger: str = "", out: Path = Path("plugins")) -> Path:
    """`app.py train-lora`: a LoRA plugin for an SD-family model (builtin or SD1.5) from captioned images."""
    from ..families import FAMILIES_BY_NAME, family
    from ..request import UserError
    from ..sources.loading import load_pipeline
    from ..sources.resolve import Resolver

    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder. Give a folder of images with .txt captions.")
    source = Resolver(local_paths=True).resolve(model)  # the command line: local models allowed
    if not family(source.family).lora_training:
        trainable = ", ".join(f.label for f in FAMILIES_BY_NAME.values() if f.lora_training)
        raise UserError(f"train-lora supports {trainable} models; {model} is {family(source.family).label}.")
    pipe = load_pipeline(source, "cpu", torch.float32)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    base = folder_batches(folder, size)

    def with_trigger(rng, n):
        images, caps = base(rng, n)
        return images, [f"{c}, {trigger}" if trigger else c for c in caps]

    state = train_lora(pipe, with_trigger, steps, rank=rank)
    manifest = {"name": name, "kind": "lora", "family": source.family, "source": f"{name}.safetensors",
                "weight": 1.0, "trigger": trigger, "description": f"Trained by train-lora on {folder.name}"}
    return save_lora(type(pipe), state, out, name, manifest)
