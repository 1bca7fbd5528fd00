"""Training of the built-in model: the forward process (add noise, learn to remove it) on the shapes world.

Stages, each resumable from `work/<stage>.ckpt` and each writing its finished part into the output
pipeline folder: tokenizer -> vae -> unet (+ jointly trained CLIP text encoder) -> pipeline.
Run through `python app.py train builtin`; every stage is seeded, so the same command reproduces
the shipped weights (up to floating-point differences between machines).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .tokenizer import build_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: Path = Path("assets/builtin")
    work: Path = Path("runs/builtin")
    seed: int = 0
    vae_steps: int = 2000
    decoder_steps: int = 1000  # decoder-only fine-tuning: sharper images, same latent space
    unet_steps: int = 5000
    pool: int = 40000  # scenes rendered and encoded once for the UNet stage
    batch: int = 32
    threads: int = 1
    log_every: int = 100
    save_every: int = 500


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE, layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(16, 32, 64), norm_num_groups=16)


def unet_config(cross_dim: int) -> dict:
    # cross-attention at 8x8 and 4x4 on the way down and at every level on the way up, where the
    # full-resolution layers bind position words to places
    return dict(sample_size=world.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 128), norm_num_groups=16, cross_attention_dim=cross_dim,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D",) * 3, attention_head_dim=4)


def text_config(vocab_size: int, bos: int, eos: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos)


def noise_scheduler_config() -> dict:
    # v-prediction on a cosine schedule: flat-colour backgrounds (black, white) need a near-zero terminal SNR
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                timestep_spacing="trailing", clip_sample=False)


# ------------------------------------------------------------------------------------------------ data

def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def vae_batch(rng: random.Random, n: int) -> torch.Tensor:
    """Varied images so the autoencoder can represent every style LoRAs may ask for, not just 8 colours."""
    images = []
    for _ in range(n):
        scene = world.random_scene(rng, two_objects=0.3)
        r = rng.random()
        style = "outline" if r < 0.2 else "pastel" if r < 0.35 else "plain"
        img = world.render(scene, style).astype(np.float32)
        if rng.random() < 0.2:  # arbitrary colours: a random per-channel affine map
            a = np.array([rng.uniform(-1, 1) for _ in range(3)], np.float32)
            b = np.array([rng.uniform(0, 255) for _ in range(3)], np.float32)
            img = np.clip(img * a + b, 0, 255)
        images.append(img.astype(np.uint8))
    return _to_tensor(images)


# ----------------------------------------------------------------------------------------- checkpoints

def _save_ckpt(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_ckpt(path: Path) -> dict | None:
    # our own checkpoint, written by _save_ckpt above: the only pickle this project ever reads
    return torch.load(path, weights_only=False) if path.exists() else None


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def sample_timesteps(n: int, total: int, gen: torch.Generator, high_from: float = 0.7) -> torch.Tensor:
    """Half the batch uniform over [0, total), half from the noisiest 30%: that is where the layout (where the
    object goes, what the control map says) is decided from the text alone, and where the model learns it."""
    uniform = torch.randint(0, total, (n,), generator=gen)
    high = torch.randint(int(high_from * total), total, (n,), generator=gen)
    return torch.where(torch.arange(n) % 2 == 0, high, uniform)


def v_loss(denoise, x0: torch.Tensor, alphas: torch.Tensor, gen: torch.Generator,
           prediction: str = "v_prediction") -> torch.Tensor:
    """The forward process and its loss: noise x0 at a random t, ask `denoise(xt, t)` for v (or the noise).

    Unweighted on purpose. Min-SNR weighting (tried first) gives the high-noise steps a weight near zero, and
    those are the only steps where position words matter: the model then placed objects by the noise, not
    the prompt (position at chance), and the ControlNets learned little."""
    noise = torch.randn(x0.shape, generator=gen)
    t = sample_timesteps(x0.shape[0], len(alphas), gen)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction == "v_prediction" else noise
    pred = denoise(xt, t)
    return F.mse_loss(pred.float(), target)


# ------------------------------------------------------------------------------------------------ VAE

def train_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_config())
    with torch.no_grad():  # start the log-variance near -8: without this the KL term stalls training
        vae.quant_conv.bias[4:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt_path = cfg.work / "vae.ckpt"
    start = 0
    if (ck := _load_ckpt(ckpt_path)) is not None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        log.info("vae: resumed at step %d", start)
    t0 = time.time()
    for step in range(start, cfg.vae_steps):
        rng = random.Random(cfg.seed * 1_000_003 + step)
        x = vae_batch(rng, 16)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, 1e-3)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            log.info("vae step %d/%d mse %.5f (%.2f steps/s)", step + 1, cfg.vae_steps, mse.item(),
                     (step + 1 - start) / (time.time() - t0))
        if (step + 1) % cfg.save_every == 0:
            _save_ckpt(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    _save_ckpt(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": cfg.vae_steps})
    vae.eval()
    with torch.no_grad():  # scaling factor = 1 / std of the latents, as Stable Diffusion does
        z = vae.encode(vae_batch(random.Random(12345), 256)).latent_dist.mean
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, vae_batch(random.Random(12345), 256)).item()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log.info("vae: held-out reconstruction mse %.5f, scaling factor %.3f", mse, vae.config.scaling_factor)
    return vae, mse


def finetune_decoder(cfg: TrainConfig, vae):
    """Train the decoder longer with the encoder frozen: the latent space (what the UNet learns) is unchanged,
    so this stage is independent of the UNet stage and sharpens every image the model makes."""
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    ckpt_path = cfg.work / "vae_decoder.ckpt"
    start = 0
    if (ck := _load_ckpt(ckpt_path)) is not None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
    t0 = time.time()
    for step in range(start, cfg.decoder_steps):
        rng = random.Random(cfg.seed * 1_000_003 + 300_000 + step)
        x = vae_batch(rng, 16)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.decoder_steps, 5e-4, warmup=50)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            log.info("decoder step %d/%d loss %.5f (%.2f steps/s)", step + 1, cfg.decoder_steps, loss.item(),
                     (step + 1 - start) / (time.time() - t0))
        if (step + 1) % cfg.save_every == 0:
            _save_ckpt(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    _save_ckpt(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": cfg.decoder_steps})
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        x = vae_batch(random.Random(12345), 256)
        mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()
    log.info("vae after decoder fine-tuning: held-out reconstruction mse %.5f", mse)
    return vae, mse


# ----------------------------------------------------------------------------------------------- UNet

def encode_pool(vae, cfg: TrainConfig) -> tuple[list[world.Scene], torch.Tensor]:
    """Render `cfg.pool` scenes once and keep their latents (the VAE is frozen from here on)."""
    cache = cfg.work / f"pool_{cfg.pool}_{cfg.seed}.pt"
    if (ck := _load_ckpt(cache)) is not None:
        return ck["scenes"], ck["latents"]
    rng = random.Random(cfg.seed + 7)
    scenes = [world.random_scene(rng) for _ in range(cfg.pool)]
    chunks = []
    with torch.no_grad():
        for i in range(0, cfg.pool, 256):
            x = _to_tensor([world.render(s) for s in scenes[i:i + 256]])
            chunks.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).half())
    latents = torch.cat(chunks)
    _save_ckpt(cache, {"scenes": scenes, "latents": latents})
    return scenes, latents


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_unet_and_text(tokenizer):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tc))
    unet = UNet2DConditionModel(**unet_config(tc["hidden_size"]))
    return unet, text_encoder


def train_unet(cfg: TrainConfig, vae, tokenizer):
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed + 1)
    unet, text_encoder = build_unet_and_text(tokenizer)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    sched = DDPMScheduler(**noise_scheduler_config())
    alphas = sched.alphas_cumprod
    ckpt_path = cfg.work / "unet.ckpt"
    start = 0
    if (ck := _load_ckpt(ckpt_path)) is not None:
        for m, k in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            m.load_state_dict(ck[k])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        log.info("unet: resumed at step %d", start)
    scenes, latents = encode_pool(vae, cfg)
    log.info("unet: %.1fM params, text encoder %.1fM, pool %d", sum(p.numel() for p in unet.parameters()) / 1e6,
             sum(p.numel() for p in text_encoder.parameters()) / 1e6, len(scenes))

    def save(step):
        _save_ckpt(ckpt_path, {"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                               "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                               "opt": opt.state_dict(), "step": step})

    t0 = time.time()
    for step in range(start, cfg.unet_steps):
        rng = random.Random(cfg.seed * 1_000_003 + 500_000 + step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = [rng.randrange(len(scenes)) for _ in range(cfg.batch)]
        caps = ["" if rng.random() < 0.1 else world.caption(scenes[i], rng, drop=0.15) for i in idx]
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.unet_steps, 6e-4)
        cond = text_encoder(tokenize(tokenizer, caps))[0]
        loss = v_loss(lambda xt, t: unet(xt, t, cond).sample, latents[idx].float(), alphas, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for ema, m in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pm in zip(ema.parameters(), m.parameters()):
                    pe.lerp_(pm, 1 - decay)
        if (step + 1) % cfg.log_every == 0:
            log.info("unet step %d/%d loss %.4f (%.2f steps/s)", step + 1, cfg.unet_steps, loss.item(),
                     (step + 1 - start) / (time.time() - t0))
        if (step + 1) % cfg.save_every == 0:
            save(step + 1)
    save(cfg.unet_steps)
    return ema_unet, ema_text


# ------------------------------------------------------------------------------------------- pipeline

def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, notes: dict) -> None:
    """Write the diffusers pipeline folder, fp16 safetensors, plus the file that names its family."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    # a fresh copy: a tokenizer that has padded batches saves its padding state into tokenizer.json
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    scheduler = DPMSolverMultistepScheduler.from_config(DDPMScheduler(**noise_scheduler_config()).config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    # weights stay fp16 on disk, but transformers would load the text encoder as fp16 by default while diffusers
    # loads the rest as fp32: record fp32 so a plain `from_pretrained(folder)` gives a consistent pipeline
    te_config = out / "text_encoder" / "config.json"
    te_config.write_text(te_config.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    studio = {"family": "builtin", **notes}
    (out / "studio.json").write_text(json.dumps(studio, indent=2) + "\n")


def train_all(cfg: TrainConfig) -> Path:
    from transformers import CLIPTokenizer

    torch.set_num_threads(cfg.threads)
    cfg.work.mkdir(parents=True, exist_ok=True)
    build_tokenizer(cfg.work / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(cfg.work / "tokenizer")
    t0 = time.time()
    vae, vae_mse = train_vae(cfg)
    t_vae = time.time() - t0
    vae.requires_grad_(False)
    unet, text_encoder = train_unet(cfg, vae, tokenizer)  # on the encoder's latents; the decoder does not matter
    t_unet = time.time() - t0 - t_vae
    t1 = time.time()
    vae, decoder_mse = finetune_decoder(cfg, vae)
    notes = {"native_size": world.SIZE, "seed": cfg.seed, "vae_steps": cfg.vae_steps, "unet_steps": cfg.unet_steps,
             "decoder_steps": cfg.decoder_steps, "vae_mse_before_decoder_finetune": round(vae_mse, 5),
             "vae_mse": round(decoder_mse, 5), "vae_minutes": round(t_vae / 60, 1),
             "decoder_minutes": round((time.time() - t1) / 60, 1), "unet_minutes": round(t_unet / 60, 1)}
    save_pipeline(cfg.out, vae, text_encoder, tokenizer, unet, notes)
    log.info("built-in model written to %s (%s)", cfg.out, notes)
    return cfg.out
