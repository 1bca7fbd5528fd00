"""Training of the built-in model's image-prompt adapter (IP-Adapter style: decoupled cross-attention).

The built-in UNet, VAE and text encoder stay frozen. What learns: a small CLIP vision encoder (there is no
pretrained one to download here, so it is trained from scratch with the rest), the projection of its image
embedding into 4 extra tokens, and in every cross-attention layer a key and value projection for those tokens
(`to_k_ip`, `to_v_ip`, started from the text's own). The files are the IP-Adapter format diffusers reads with
`load_ip_adapter` (`ip-adapter.safetensors`: `image_proj.proj`, `image_proj.norm`, `ip_adapter.{1,3,..}.to_k_ip`,
`.to_v_ip`; `image_encoder/`: a CLIPVisionModelWithProjection), so the engine uses diffusers' own loader.

Each step pairs a scene with a reference image of the same object (its colour and shape) drawn elsewhere: another
place, size, background, with colour jitter, noise and blur. Most captions then leave out colour and shape ("a big
one on the left, white background"): the reference must supply them, while size, place and background stay the
caption's. A tenth of the steps drop the reference (zero image embedding: what diffusers gives the unconditional
branch).

The first version learned from the denoising loss alone and passed on colour, not shape (42%, chance 38%): its
encoder's embedding did not tell a circle from a square (a nearest-centroid probe read shape at 45% on training
references). Two training-only signals fix what the pixels' loss is too weak to teach, and neither is in the files:
- the encoder first learns, and keeps learning, to name the reference's shape and colour (a linear head on the
  image embedding, cross-entropy), so shape is in what the projection reads;
- the frozen base model, given the full caption ("a big red triangle on the left, ..."), is the teacher: the
  adapted model, given the caption without colour and shape and the reference, is pulled to its prediction at the
  same noisy latent (distillation, no noise in the target, so the shape's small share of the pixels still counts).
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
from .builtin import _to_tensor, noise_scheduler_config, tokenize, v_loss
from .loop import Budget, optimizer, setup_device, step_fn, train_loop

log = logging.getLogger(__name__)
TOKENS = 4  # image tokens per reference (the standard IP-Adapter's)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def encoder_config() -> dict:
    """A small CLIP vision tower for 64x64 references: 8x8 patches, 4 layers."""
    return dict(image_size=world.SIZE, patch_size=8, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, projection_dim=128)


def reference_of(thing: world.Thing, rng: random.Random) -> np.ndarray:
    """A 64x64 picture of `thing`'s kind and colour somewhere else: another place, size and background, with
    colour jitter, noise and sometimes blur (what a user's reference image is like, not a training render)."""
    background = rng.choice([c for c in world.COLORS if c != thing.color] + ["white"] * 3)
    if background == thing.color:
        background = "black" if thing.color == "white" else "white"
    size = rng.choice(list(world.SIZES))
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    ref = world.Thing(thing.kind, thing.color, size, "", cx, cy, rng.uniform(0.45, 1.0))
    if thing.kind == "person":
        ref.pose = world.random_pose(rng, cx, cy, world.SIZES[size] * 1.5)
    image = world.render(world.Scene(background, [ref]))
    if rng.random() < 0.6:  # tilted, as drawn by hand (from step 1100 on: shapes were read at 58%)
        fill = tuple(int(c) for c in image[0, 0])
        image = np.asarray(Image.fromarray(image).rotate(rng.uniform(-30, 30), resample=Image.Resampling.BICUBIC,
                                                         fillcolor=fill))
    image = image.astype(np.float32)
    if rng.random() < 0.5:  # a light gradient across the picture
        ramp = np.linspace(rng.uniform(-25, 0), rng.uniform(0, 25), image.shape[0], dtype=np.float32)
        image += ramp[:, None, None]
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-20, 20)  # exposure
    image += np.array([rng.uniform(-18, 18) for _ in range(3)], np.float32)  # white balance
    image += np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(0, 8), image.shape)
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return np.asarray(out)


def caption_without(thing: world.Thing, background: str, rng: random.Random) -> str:
    """The scene's caption with colour and shape left to the reference (sometimes only one of them)."""
    r = rng.random()
    words = ["a", thing.size]
    if r < 0.15:
        words.append(thing.color)  # colour said, shape from the reference
    words.append(thing.kind if 0.15 <= r < 0.3 else "one")
    return " ".join(words) + f" {thing.position}, {background} background"


def full_caption(thing: world.Thing, background: str) -> str:
    """What the teacher reads: the scene said in full, colour and shape included."""
    return f"{world.describe(thing)}, {background} background"


def labels(thing: world.Thing) -> tuple[int, int]:
    """(shape, colour) class indices of the reference's object, for the encoder's naming head."""
    return world.OBJECTS.index(thing.kind), list(world.COLORS).index(thing.color)


def naming_head() -> torch.nn.Linear:
    """Training only: reads shape and colour off the image embedding (kept out of the adapter's files)."""
    return torch.nn.Linear(encoder_config()["projection_dim"], len(world.OBJECTS) + len(world.COLORS))


def naming_loss(head: torch.nn.Module, embeds: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor):
    logits = head(embeds)
    n = len(world.OBJECTS)
    return (torch.nn.functional.cross_entropy(logits[:, :n], shape)
            + torch.nn.functional.cross_entropy(logits[:, n:], colour))


def pixels_for_encoder(images: list[np.ndarray]) -> torch.Tensor:
    """64x64 RGB uint8 images as the encoder reads them: what CLIPImageProcessor(size=64, crop_size=64) gives."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def adapter_batch(rng: random.Random, n: int):
    """(images in [-1, 1], reference pixels for the encoder, captions, the teacher's captions, keep-reference
    flags, shape labels, colour labels) for one step."""
    images, refs, captions, full, keep, shapes, colours = [], [], [], [], [], [], []
    for _ in range(n):
        scene = world.random_scene(rng, two_objects=0.0)
        thing = scene.things[0]
        images.append(world.render(scene))
        refs.append(reference_of(thing, rng))
        r = rng.random()
        with_ref = r >= 0.1
        keep.append(with_ref)
        if with_ref and rng.random() < 0.75:
            captions.append(caption_without(thing, scene.background, rng))
            full.append(full_caption(thing, scene.background))
        else:
            captions.append(world.caption(scene, rng, drop=0.15))
            full.append(captions[-1])
        shape, colour = labels(thing)
        shapes.append(shape)
        colours.append(colour)
    return (_to_tensor(images), pixels_for_encoder(refs), captions, full, torch.tensor(keep), torch.tensor(shapes),
            torch.tensor(colours))


def _adapter_step(seed: int, batch: int, tokenizer, step: int):
    rng = random.Random(seed * 1_000_003 + 700_000 + step)
    images, refs, captions, full, keep, shapes, colours = adapter_batch(rng, batch)
    return images, refs, tokenize(tokenizer, captions), tokenize(tokenizer, full), keep, shapes, colours


def _naming_step(seed: int, batch: int, step: int):
    """References alone, with their labels, for the encoder's first lessons."""
    rng = random.Random(seed * 1_000_003 + 900_000 + step)
    refs, shapes, colours = [], [], []
    for _ in range(batch):
        thing = world.random_scene(rng, two_objects=0.0).things[0]
        refs.append(reference_of(thing, rng))
        shape, colour = labels(thing)
        shapes.append(shape)
        colours.append(colour)
    return pixels_for_encoder(refs), torch.tensor(shapes), torch.tensor(colours)


def train_naming(encoder, head, work: Path, steps: int, batch: int, seed: int, device: str, lr: float,
                 workers: int) -> dict:
    """The encoder learns to name a reference's shape and colour (before it learns to condition the UNet)."""
    def loss_fn(step: int, data) -> torch.Tensor:
        refs, shapes, colours = (x.to(device) for x in data)
        return naming_loss(head, encoder(refs).image_embeds, shapes, colours)

    def finish(budget: Budget) -> dict:
        return {"steps": budget.total, "batch": batch, "minutes": budget.minutes_spent(),
                **naming_accuracy(encoder, head, device)}

    return train_loop("image prompt encoder", {"encoder": encoder, "head": head},
                      optimizer([*encoder.parameters(), *head.parameters()], lr, device),
                      step_fn(_naming_step, seed, batch), loss_fn, steps=steps, lr=lr, warmup=50,
                      ckpt=work / "image_prompt_encoder.ckpt", workers=workers, clip=1.0, log_every=50,
                      save_every=100, finish=finish)


def naming_accuracy(encoder, head, device: str, n: int = 512) -> dict:
    """How often the head names shape and colour right on fresh training-world references (a check that shape
    is in the embedding; the held-out test is benchmarks/eval_image_prompt.py)."""
    refs, shapes, colours = _naming_step(12345, n, 0)
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        logits = head(encoder(refs.to(device)).image_embeds).cpu()
    encoder.train(was)
    k = len(world.OBJECTS)
    return {"shape_named": round(float((logits[:, :k].argmax(1) == shapes).float().mean()), 3),
            "colour_named": round(float((logits[:, k:].argmax(1) == colours).float().mean()), 3)}


def set_scale(procs, scale: float) -> None:
    """The image tokens' weight in every adapted cross-attention (0: the base model exactly)."""
    for proc in procs:
        proc.scale = [scale] * len(proc.scale)


def initial_state(unet) -> dict:
    """The adapter's starting weights in the IP-Adapter file layout: a small random projection, and each cross-
    attention's image key/value started from its text key/value (as the IP-Adapter paper does)."""
    cross = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    proj = {"proj.weight": torch.randn(cross * TOKENS, encoder_config()["projection_dim"], generator=g) * 0.02,
            "proj.bias": torch.zeros(cross * TOKENS), "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross)}
    layers, key_id = {}, 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = modules[name.removesuffix(".processor")]
        layers[f"{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        layers[f"{key_id}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
        key_id += 2
    return {"image_proj": proj, "ip_adapter": layers}


def trained_state(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights, live in `unet`, back in the IP-Adapter file layout (flat, prefixed)."""
    out = {}
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    for key, value in projection.state_dict().items():
        out["image_proj." + key.replace("image_embeds", "proj")] = value.detach().clone()
    key_id = 1
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            continue
        out[f"ip_adapter.{key_id}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().clone()
        out[f"ip_adapter.{key_id}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().clone()
        key_id += 2
    return out


def attach(unet, state: dict):
    """diffusers' own IP-Adapter processors and image projection on `unet`, with `state`'s weights; returns the
    trainable modules (projection, processors)."""
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    procs = torch.nn.ModuleList(p for n, p in unet.attn_processors.items() if not n.endswith("attn1.processor"))
    return unet.encoder_hid_proj, procs


def train_image_prompt(pipe_dir: Path, work: Path, out: Path, steps: int = 3000, batch: int = 32, seed: int = 0,
                       device: str = "cpu", minutes: float | None = None, lr: float = 3e-4, workers: int = 0,
                       naming_steps: int = 1500, teach: float = 1.0, name: float = 0.1,
                       init: Path | None = None) -> Path:
    """Train the image-prompt adapter of the built-in model in `pipe_dir`; writes `out/ip-adapter.safetensors`,
    `out/image_encoder/` and `out/training.json`.

    First `naming_steps` of the encoder alone (naming shape and colour), then `steps` (or `minutes`) of the
    adapter: the denoising loss, plus `teach` times the distance to the full-caption teacher, plus `name` times the
    naming loss. `init`: an earlier run's adapter checkpoint to start from. Resumes from
    `work/image_prompt_encoder.ckpt` and `work/image_prompt_adapter.ckpt`."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    setup_device(device)
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32).to(device)
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    for m in (vae, unet, text_encoder):
        m.requires_grad_(False).eval()
    torch.manual_seed(seed + 23)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**encoder_config())).to(device)
    projection, procs = attach(unet, initial_state(unet))
    for m in (projection, procs):
        m.to(device).requires_grad_(True).train()
    encoder.train()
    head = naming_head().to(device)
    if init is not None:  # an earlier run's adapter (its encoder, projection and processors)
        from .loop import load_ckpt

        state = load_ckpt(init)
        encoder.load_state_dict(state["encoder"])
        projection.load_state_dict(state["projection"])
        procs.load_state_dict(state["processors"])
        log.info("image prompt: started from %s (step %s)", init, state["step"])
    work.mkdir(parents=True, exist_ok=True)
    naming = train_naming(encoder, head, work, naming_steps, batch * 2, seed, device, lr, workers)
    alphas = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod
    params = [*encoder.parameters(), *projection.parameters(), *procs.parameters(), *head.parameters()]

    def loss_fn(step: int, data) -> torch.Tensor:
        images, refs, ids, full_ids, keep, shapes, colours = data
        gen = torch.Generator().manual_seed(seed * 7919 + step)
        images = images.to(device)
        with torch.no_grad():
            x0 = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
            text = text_encoder(ids.to(device))[0]
            full = text_encoder(full_ids.to(device))[0] if teach else None
        raw = encoder(refs.to(device)).image_embeds
        embeds = raw * keep.to(device).view(-1, 1).float()
        extra = []

        def denoise(xt, t):
            pred = unet(xt, t, text, added_cond_kwargs={"image_embeds": [embeds.unsqueeze(1)]}).sample
            if teach:
                with torch.no_grad():
                    set_scale(procs, 0.0)
                    target = unet(xt, t, full, added_cond_kwargs={"image_embeds": [embeds.unsqueeze(1)]}).sample
                    set_scale(procs, 1.0)
                extra.append(teach * torch.nn.functional.mse_loss(pred.float(), target.float()))
            return pred

        loss = v_loss(denoise, x0, alphas, gen) + sum(extra)
        if name:
            loss = loss + name * naming_loss(head, raw, shapes.to(device), colours.to(device))
        return loss

    def finish(budget: Budget) -> dict:
        return {"steps": budget.total, "batch": batch, "minutes": budget.minutes_spent(), "lr": lr,
                "device": device, "threads": torch.get_num_threads(), "teach": teach, "name": name,
                "naming_steps": naming_steps, "init": str(init) if init else None}

    info = train_loop("image prompt", {"encoder": encoder, "projection": projection, "processors": procs,
                                       "head": head},
                      optimizer(params, lr, device), step_fn(_adapter_step, seed, batch, tokenizer), loss_fn,
                      steps=steps, lr=lr, warmup=100, minutes=minutes, ckpt=work / "image_prompt_adapter.ckpt",
                      workers=workers, clip=1.0, log_every=50, save_every=100, finish=finish)
    info["naming"] = naming
    write(unet, encoder, out, info)
    return out


def write(unet, encoder, out: Path, info: dict) -> None:
    """The adapter's files: `ip-adapter.safetensors`, `image_encoder/` (fp16) and `training.json`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in trained_state(unet).items()},
              str(out / "ip-adapter.safetensors"))
    encoder.to(torch.float16).save_pretrained(out / "image_encoder", safe_serialization=True)
    encoder.to(torch.float32)
    before = []  # a continued run (--init) keeps the runs it continues
    if info.get("init") and (out / "training.json").exists():
        before = [x for x in json.loads((out / "training.json").read_text()) if x != info]
    (out / "training.json").write_text(json.dumps(before + [info], indent=1))
    log.info("image prompt adapter: %s, written to %s", info, out)


def export(pipe_dir: Path, ckpt: Path, out: Path) -> Path:
    """The adapter as it stands in a (maybe unfinished) training checkpoint, written as `train_image_prompt` does."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .loop import load_ckpt

    state = load_ckpt(ckpt)
    if state is None:
        raise FileNotFoundError(ckpt)
    unet = UNet2DConditionModel.from_pretrained(pipe_dir, subfolder="unet")
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**encoder_config()))
    projection, procs = attach(unet, initial_state(unet))
    encoder.load_state_dict(state["encoder"])
    projection.load_state_dict(state["projection"])
    procs.load_state_dict(state["processors"])
    info = state.get("info") or {"steps": state["step"], "minutes": state.get("minutes"), "unfinished": True}
    write(unet, encoder, out, info)
    return out
