"""The `fast` plugin: a 4-step LoRA distilled from the built-in model (issue #19), as LCM-LoRA and Hyper-SD are
for SDXL, trained by the project's own code.

Teacher: the built-in model as it ships, sampled as users get it (DPM++ 2M, 10 steps, guidance 2). For a caption
and a starting noise z the teacher's image latent x0* is made once (`teacher_pairs`, kept per canvas size in
`work/`). Student: the same UNet with a LoRA, sampled by DDIM in 4 steps without guidance (one UNet call a step
instead of two). At each of its timesteps t it sees x_t = sqrt(a_t) x0* + sqrt(1 - a_t) e*, the point of the DDIM
path from z to x0* (e* is the noise DDIM reads from z when it predicts x0* at the first step), and learns the v
that points to x0*. A student that learned it walks in 4 steps the path the teacher walked in 10, with the
teacher's guidance baked in; a quarter of the batch sits at random timesteps, so 5-8 steps still work.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world
from .builtin import bucket_batch, bucket_shares, tokenize
from .loop import load_ckpt, save_ckpt, train_loop
from .lora import save_lora

log = logging.getLogger(__name__)
NAME = "fast"
STEPS, GUIDANCE, SCHEDULER = 4, 1.0, "ddim"  # what the manifest asks for when the user has not set them
TEACHER = dict(steps=10, guidance=2.0)  # the built-in model's defaults (engine.request.DEFAULTS["builtin"])
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
           "conv2", "time_emb_proj"]
SIDES = (48, 64, 80, 96, 128)
DESCRIPTION = ("4-step mode: the built-in model distilled into 4 DDIM steps without guidance, about 4x faster. "
               "Sets steps, scheduler and guidance unless you set them.")


def student_timesteps() -> list[int]:
    from diffusers import DDIMScheduler

    from .builtin import noise_scheduler_config

    sched = DDIMScheduler(**noise_scheduler_config())
    sched.set_timesteps(STEPS)
    return [int(t) for t in sched.timesteps]


def _captions(rng: random.Random, n: int) -> list[str]:
    """User-like prompts: whole captions, some with words dropped, a few empty (the teacher's free choice)."""
    scenes = [world.random_scene(rng, two_objects=0.2) for _ in range(n)]
    return ["" if rng.random() < 0.05 else world.caption(s, rng, drop=0.15) for s in scenes]


def teacher_pairs(pipe, size: tuple[int, int], count: int, work: Path, seed: int = 0, chunk: int = 64) -> dict:
    """`count` (caption, z, x0*) of the teacher at canvas `size`, made in chunks saved to `work` (resumable)."""
    path = work / f"fast_pairs_{size[0]}x{size[1]}.pt"
    have = load_ckpt(path) or {"captions": [], "z": [], "x0": []}
    width, height = size
    shape = (4, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    n_chunk = bucket_batch(chunk, width, height)
    while len(have["captions"]) < count:
        k = len(have["captions"])
        rng = random.Random(seed * 1_000_003 + 300_000 + k * 7 + width * 131 + height)
        caps = _captions(rng, min(n_chunk, count - k))
        gen = torch.Generator().manual_seed(hash((seed, width, height, k)) % 2**62)
        z = torch.randn((len(caps), *shape), generator=gen)
        with torch.no_grad():
            x0 = pipe(caps, num_inference_steps=TEACHER["steps"], guidance_scale=TEACHER["guidance"], latents=z.clone(),
                      width=width, height=height, output_type="latent").images
        have["captions"] += caps
        have["z"].append(z)
        have["x0"].append(x0.float())
        save_ckpt(path, have)
        if len(have["captions"]) // n_chunk % 10 == 0:
            log.info("teacher pairs %dx%d: %d/%d", width, height, len(have["captions"]), count)
    return {"captions": have["captions"], "z": torch.cat(have["z"]), "x0": torch.cat(have["x0"])}


def distill_loss(unet, text: torch.Tensor, z: torch.Tensor, x0: torch.Tensor, alphas: torch.Tensor,
                 timesteps: list[int], gen: torch.Generator) -> torch.Tensor:
    """The student's v-loss on the DDIM path from z to the teacher's x0 (see the module's docstring)."""
    a_first = alphas[timesteps[0]]
    eps = (z - a_first.sqrt() * x0) / (1 - a_first).sqrt()
    n = x0.shape[0]
    fixed = torch.tensor(timesteps)[torch.randint(0, len(timesteps), (n,), generator=gen)]
    anywhere = torch.randint(min(timesteps), max(timesteps) + 1, (n,), generator=gen)
    t = torch.where(torch.rand(n, generator=gen) < 0.75, fixed, anywhere)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = a.sqrt() * eps - (1 - a).sqrt() * x0
    return F.mse_loss(unet(xt, t, text).sample.float(), target)


def train_fast(pipe_dir: Path, out: Path, work: Path, pairs: int = 6000, steps: int = 3000, batch: int = 32,
               rank: int = 16, lr: float = 5e-4, minutes: float | None = None, sides: tuple[int, ...] = SIDES,
               square_share: float = 0.4, seed: int = 0) -> Path:
    """Distil the built-in model in `pipe_dir` into the `fast` LoRA plugin, written to `out` (e.g. assets/plugins).
    `pairs`: teacher images, counted in 64x64 images' area and spread over the canvases like the training steps."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from .builtin import noise_scheduler_config

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    shares = bucket_shares(sides, square_share)
    pools = {size: teacher_pairs(pipe, size, max(bucket_batch(batch, *size), bucket_batch(round(pairs * share), *size)),
                                 work, seed) for size, share in shares.items()}
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    for m in (pipe.vae, unet, text_encoder):
        m.requires_grad_(False).eval()
    torch.manual_seed(seed + 5)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights="gaussian"),
                     adapter_name=NAME)
    params = [p for p in unet.parameters() if p.requires_grad]
    alphas = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod
    timesteps = student_timesteps()

    def make(step: int):
        rng = random.Random(seed * 1_000_003 + 400_000 + step)
        size = rng.choices(list(shares), weights=list(shares.values()))[0]
        pool = pools[size]
        idx = [rng.randrange(len(pool["captions"])) for _ in range(bucket_batch(batch, *size))]
        return tokenize(tokenizer, [pool["captions"][i] for i in idx]), pool["z"][idx], pool["x0"][idx]

    def loss_fn(step: int, item) -> torch.Tensor:
        ids, z, x0 = item
        with torch.no_grad():
            text = text_encoder(ids)[0]
        return distill_loss(unet, text, z, x0, alphas, timesteps, torch.Generator().manual_seed(seed * 104729 + step))

    lora_only = _LoraParams(unet)
    info = train_loop("fast lora", {"lora": lora_only}, torch.optim.AdamW(params, lr=lr), make, loss_fn, steps=steps,
                      lr=lr, warmup=100, minutes=minutes, ckpt=work / "fast_lora.ckpt", log_every=50, save_every=100,
                      finish=lambda budget: {"steps": budget.total, "batch": batch, "minutes": budget.minutes_spent()})
    state = get_peft_model_state_dict(unet, adapter_name=NAME)
    manifest = {"name": NAME, "kind": "lora", "family": "builtin", "source": f"{NAME}.safetensors", "weight": 1.0,
                "trigger": "", "description": DESCRIPTION, "steps": STEPS, "scheduler": SCHEDULER,
                "guidance": GUIDANCE}
    path = save_lora(StableDiffusionPipeline, state, out, NAME, manifest)
    (out / f"{NAME}.json").write_text(json.dumps({  # how it was made, for the model card (engine/train/card.py)
        **info, "rank": rank, "pairs": sum(len(p["captions"]) for p in pools.values()), "sides": list(sides),
        "teacher_steps": TEACHER["steps"], "teacher_guidance": TEACHER["guidance"], "student_steps": STEPS,
        "lr": lr}, indent=1))
    log.info("fast lora: %s, written to %s", info, path)
    return path


class _LoraParams(torch.nn.Module):
    """The UNet's LoRA weights alone as a module, so the training checkpoint holds the adapter, not the base."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def state_dict(self, *args, **kwargs):
        return {n: p.detach().clone() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_state_dict(self, state, strict: bool = True):
        own = dict(self.unet.named_parameters())
        with torch.no_grad():
            for n, value in state.items():
                own[n].copy_(value)
