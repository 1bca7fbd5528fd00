"""Training of the built-in model's ControlNets (edge, depth, pose) on the shapes world.

Each ControlNet starts as a copy of the built-in UNet's encoder (`ControlNetModel.from_unet`), or continues a
trained one (`init`), and learns, with the base model frozen, to steer it from a control map: Canny edges of the
render, its depth map (near bright) or an OpenPose-style skeleton of a stick figure. With `sides`, every step
draws one canvas size (as the UNet's multi-aspect training does). A third of the captions name sizes and places
that contradict the map, so the map's outline wins over the prompt's words, as a real ControlNet's does.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from . import world
from .builtin import _to_tensor, bucket_batch, bucket_shares, noise_scheduler_config, tokenize, v_loss
from .loop import Budget, optimizer, setup_device, step_fn, train_loop

log = logging.getLogger(__name__)
KINDS = ("edge", "depth", "pose")
# steps per ControlNet at batch 64: what the shipped ones ran on a lent GPU, the three at once, each in a
# 1.6-minute budget (tools/train_on_gpu.sh)
STEPS = {"edge": 900, "depth": 900, "pose": 900}


def control_map(kind: str, scene: world.Scene, image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if kind == "edge":
        return world.render_edges(image)
    if kind == "depth":
        return world.render_depth(scene, width, height)
    return world.render_pose(scene, width, height)


def _without_position(scene: world.Scene, rng: random.Random) -> str:
    things = [world.Thing(t.kind, t.color, t.size, "", t.cx, t.cy, t.depth) for t in scene.things]
    return world.caption(world.Scene(scene.background, things), rng, drop=0.3).replace("  ", " ").replace(" ,", ",")


def contradicting(scene: world.Scene, rng: random.Random) -> str:
    """A caption whose size and place words disagree with the scene (and so with its map)."""
    things = []
    for t in scene.things:
        size = ("big" if t.size == "small" else "small") if rng.random() < 0.7 else t.size
        place = rng.choice([p for p in world.POSITIONS if p != t.position]) if rng.random() < 0.8 else t.position
        things.append(world.Thing(t.kind, t.color, size, place, t.cx, t.cy, t.depth))
    return world.caption(world.Scene(scene.background, things), rng, drop=0.1)


def control_batch(kind: str, rng: random.Random, n: int, width: int = world.SIZE, height: int = world.SIZE):
    """(images in [-1, 1], control maps in [0, 1], captions) for one training step at width x height."""
    images, maps, captions = [], [], []
    for _ in range(n):
        scene = world.random_scene(rng, two_objects=0.25, person=(kind == "pose") or None)
        image = world.render(scene, width=width, height=height)
        images.append(image)
        cmap = control_map(kind, scene, image)
        if kind == "edge" and rng.random() < 0.5:  # lines 1-3 px wide: a large photo's Canny map shrunk to 64 px
            cmap = np.asarray(Image.fromarray(cmap).filter(ImageFilter.MaxFilter(3)))
        maps.append(cmap)
        # a third empty, a third naming no place (where the base model binds position words, a caption that
        # names the true place lets the ControlNet learn nothing: edge IoU stayed at chance that way), a third
        # with size and place words the map contradicts: the map must win
        r = rng.random()
        captions.append("" if r < 0.34 else _without_position(scene, rng) if r < 0.67 else contradicting(scene, rng))
    cond = torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float() / 255.0
    return _to_tensor(images), cond, captions


def _control_step(kind: str, seed: int, batch: int, tokenizer, shares: dict, step: int):
    rng = random.Random(seed * 1_000_003 + 900_000 + step)
    width, height = rng.choices(list(shares), weights=list(shares.values()))[0]
    images, maps, captions = control_batch(kind, rng, bucket_batch(batch, width, height), width, height)
    return images, maps, tokenize(tokenizer, captions)


def train_controlnet(kind: str, pipe_dir: Path, work: Path, steps: int | None = None, batch: int = 64, seed: int = 0,
                     out: Path | None = None, device: str = "cpu", minutes: float | None = None,
                     workers: int = 0, init: Path | None = None, sides: tuple[int, ...] = (),
                     square_share: float = 0.4, lr: float = 3e-4) -> Path:
    """Train one ControlNet for the built-in model in `pipe_dir` (continuing `init` if given, on the canvases of
    `sides` if given, else 64x64); saves it to `out` (fp16 safetensors)."""
    from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline

    setup_device(device)
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32).to(device)
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    for m in (vae, unet, text_encoder):
        m.requires_grad_(False).eval()
    torch.manual_seed(seed + 11)
    # three channel widths = two stride-2 convs = the VAE's 4x downsampling
    net = (ControlNetModel.from_pretrained(init, torch_dtype=torch.float32) if init is not None else
           ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))).to(device)
    shares = bucket_shares(sides, square_share) if sides else {(world.SIZE, world.SIZE): 1.0}
    net.train()
    alphas = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod

    def loss_fn(step: int, batch) -> torch.Tensor:
        images, cond_maps, ids = batch
        gen = torch.Generator().manual_seed(seed * 7919 + step)
        images, cond_maps = images.to(device), cond_maps.to(device)
        with torch.no_grad():
            x0 = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
            text = text_encoder(ids.to(device))[0]

        def denoise(xt, t):
            down, mid = net(xt, t, text, controlnet_cond=cond_maps, return_dict=False)
            return unet(xt, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

        return v_loss(denoise, x0, alphas, gen)

    def finish(budget: Budget) -> dict:
        return {"steps": budget.total, "batch": batch, "minutes": budget.minutes_spent(), "lr": lr,
                "init": str(init) if init else None, "sides": list(sides)}

    info = train_loop(f"controlnet {kind}", {"model": net}, optimizer(net.parameters(), 1e-4, device),
                      step_fn(_control_step, kind, seed, batch, tokenizer, shares), loss_fn,
                      steps=steps or STEPS[kind], lr=lr, warmup=50, minutes=minutes,
                      ckpt=work / f"controlnet_{kind}.ckpt", workers=workers, clip=1.0, log_every=50, save_every=200,
                      finish=finish)
    out = out or pipe_dir.parent / f"controlnet-{kind}"
    net.to(torch.float16).save_pretrained(out, safe_serialization=True)
    phases = []  # how this ControlNet was made, phase by phase, for the model card (engine/train/card.py)
    if init is not None and (Path(init) / "training.json").is_file():
        phases = json.loads((Path(init) / "training.json").read_text())
    (Path(out) / "training.json").write_text(json.dumps(phases + [{**info, "device": device}], indent=1))
    log.info("controlnet %s: %s, written to %s", kind, info, out)
    return out
