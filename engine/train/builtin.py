"""Training of the built-in model: the forward process (add noise, learn to remove it) on the shapes world.

Stages, each resumable from `work/<stage>.ckpt`: tokenizer -> vae -> decoder (fine-tuned, encoder frozen)
and unet (+ jointly trained CLIP text encoder; independent of the decoder, so the two can run at once) ->
pipeline (assembles the diffusers folder). Run through `python app.py train builtin [--stage S]`;
every stage is seeded, so the same command reproduces the shipped weights (up to floating-point
differences between machines and devices).
"""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .loop import Budget, finished, load_ckpt, optimizer, save_ckpt, setup_device, step_fn, train_loop
from .tokenizer import build_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: Path = Path("assets/builtin")
    work: Path = Path("runs/builtin")
    seed: int = 0
    # the shipped model's numbers (studio.json records them): its first phase ran on a lent GPU
    # (tools/train_on_gpu.sh, in time budgets), its second continued the UNet on this CPU (--init)
    vae_steps: int = 2200
    decoder_steps: int = 3300  # decoder-only fine-tuning: sharper images, same latent space
    unet_steps: int = 1700
    pool: int = 100000  # scenes rendered and encoded once for the UNet stage
    batch: int = 256  # UNet stage
    vae_batch: int = 64  # VAE and decoder stages
    held_out: int = 256  # images the VAE's quality is measured on after its stages (the shape check: up to 200)
    threads: int = 1
    device: str = "cpu"
    workers: int = 0  # processes that render batches ahead of the trainer (useful with a GPU)
    minutes: dict = field(default_factory=dict)  # stage -> time budget; replaces that stage's step count
    unet_lr: float = 6e-4
    init: Path | None = None  # a finished pipeline folder to continue from (its VAE, UNet and text encoder)
    # multi-aspect UNet training: canvas sides to draw (one width x height a batch, aspect at most 2:1, the batch
    # shrunk so its area stays batch * 64 * 64), rendered and encoded by the frozen VAE on the fly; () = the 64x64
    # pool. `square_share` of the batches stay 64x64, so the native size keeps its quality.
    sides: tuple[int, ...] = ()
    square_share: float = 0.25
    # continue the UNet only, the text encoder as shipped: the ControlNets and LoRAs trained on its features
    freeze_text: bool = False
    log_every: int = 100
    save_every: int = 500


STAGES = ("vae", "decoder", "unet", "pipeline")
MINUTE_SHARES = {"vae": 0.25, "decoder": 0.15, "unet": 0.6}  # how `--minutes` splits over a whole run


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 128), norm_num_groups=16)


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


def _vae_step(seed: int, n: int, offset: int, step: int) -> torch.Tensor:
    return vae_batch(random.Random(seed * 1_000_003 + offset + step), n)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _unet_step(seed: int, batch: int, scenes: list, tokenizer, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pooled latents step `step` trains on, and its captions' token ids (10% empty: guidance)."""
    rng = random.Random(seed * 1_000_003 + 500_000 + step)
    idx = [rng.randrange(len(scenes)) for _ in range(batch)]
    caps = ["" if rng.random() < 0.1 else world.caption(scenes[i], rng, drop=0.15) for i in idx]
    return torch.tensor(idx), tokenize(tokenizer, caps)


def canvas_buckets(sides: tuple[int, ...], max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """The (width, height) pairs multi-aspect training draws from: every pair of sides up to `max_aspect`:1."""
    for side in sides:
        world.check_size(side, side)
    return [(w, h) for w in sides for h in sides if max(w, h) <= max_aspect * min(w, h)]


def bucket_batch(batch: int, width: int, height: int) -> int:
    """Images a step at width x height: as many as keep the batch's area that of `batch` 64x64 images."""
    return max(1, round(batch * world.SIZE * world.SIZE / (width * height)))


def bucket_shares(sides: tuple[int, ...], square_share: float) -> dict[tuple[int, int], float]:
    """How often a step draws each canvas: `square_share` 64x64, the rest spread evenly over all the buckets."""
    buckets = canvas_buckets(sides)
    shares = {b: (1 - square_share) / len(buckets) for b in buckets}
    shares[(world.SIZE, world.SIZE)] = shares.get((world.SIZE, world.SIZE), 0.0) + square_share
    return shares


def _aspect_step(seed: int, batch: int, shares: dict, pools: dict, tokenizer,
                 step: int) -> tuple[tuple[tuple[int, int], torch.Tensor], torch.Tensor]:
    """Step `step`'s canvas (drawn by `shares`), which of that canvas's pooled latents it trains on, and their
    captions' token ids (10% empty: guidance). `pools` maps a canvas to its scenes."""
    rng = random.Random(seed * 1_000_003 + 800_000 + step)
    size = rng.choices(list(shares), weights=list(shares.values()))[0]
    scenes = pools[size]
    idx = [rng.randrange(len(scenes)) for _ in range(bucket_batch(batch, *size))]
    caps = ["" if rng.random() < 0.1 else world.caption(scenes[i], rng, drop=0.15) for i in idx]
    return (size, torch.tensor(idx)), tokenize(tokenizer, caps)


# ------------------------------------------------------------------------------------------------ loss

def sample_timesteps(n: int, total: int, gen: torch.Generator, high_from: float = 0.7) -> torch.Tensor:
    """Half the batch uniform over [0, total), half from the noisiest 30%: that is where the layout (where the
    object goes, what the control map says) is decided from the text alone, and where the model learns it."""
    uniform = torch.randint(0, total, (n,), generator=gen)
    high = torch.randint(int(high_from * total), total, (n,), generator=gen)
    return torch.where(torch.arange(n) % 2 == 0, high, uniform)


def v_loss(denoise, x0: torch.Tensor, alphas: torch.Tensor, gen: torch.Generator,
           prediction: str = "v_prediction") -> torch.Tensor:
    """The forward process and its loss: noise x0 at a random t, ask `denoise(xt, t)` for v (or the noise).

    Noise and timesteps come from a CPU generator (the same on every device). Unweighted on purpose.
    Min-SNR weighting (tried first) gives the high-noise steps a weight near zero, and those are the only steps
    where position words matter: the model then placed objects by the noise, not the prompt (position at
    chance), and the ControlNets learned little."""
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = sample_timesteps(x0.shape[0], len(alphas), gen)
    a = alphas[t].view(-1, 1, 1, 1).to(x0.device)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction == "v_prediction" else noise
    pred = denoise(xt, t.to(x0.device))
    return F.mse_loss(pred.float(), target)


# ------------------------------------------------------------------------------------------------ VAE

def vae_quality(vae, device: str, n: int = 256) -> dict:
    """Held-out reconstruction MSE, the latents' scaling factor, and how often the shape scorer still reads the
    right shape after encode + decode of ground-truth renders (the ceiling for the whole model's shape score)."""
    from .evaluate import eval_scenes, score_image

    with torch.no_grad():
        x = vae_batch(random.Random(12345), n).to(device)
        z = vae.encode(x).latent_dist.mean
        mse = F.mse_loss(vae.decode(z).sample, x).item()
        scenes = eval_scenes(min(n, 200))
        rec = vae.decode(vae.encode(_to_tensor([world.render(s) for s in scenes]).to(device)).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    shape = float(np.mean([score_image(r, s.things[0], s.background)["shape"] for r, s in zip(rec, scenes)]))
    return {"mse": round(mse, 5), "scaling_factor": float(1.0 / z.std()), "roundtrip_shape": shape}


def _new_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**vae_config())
    with torch.no_grad():  # start the log-variance near -8: without this the KL term stalls training
        vae.quant_conv.bias[4:] = -8.0
    return vae


def load_vae(cfg: TrainConfig, name: str = "vae"):
    """The finished VAE of stage `name` (vae or decoder), with its scaling factor, on cfg.device."""
    ck = load_ckpt(cfg.work / f"{name}.ckpt")
    if ck is None and cfg.init is not None:  # continuing a finished model: its VAE as shipped
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.init, subfolder="vae", torch_dtype=torch.float32)
        notes = json.loads((cfg.init / "studio.json").read_text())
        info = {"steps": notes["vae_steps"], "batch": notes.get("vae_batch"), "minutes": notes["vae_minutes"],
                "mse": notes["vae_mse_before_decoder_finetune"], "scaling_factor": vae.config.scaling_factor}
        if name == "decoder":
            info.update(steps=notes["decoder_steps"], minutes=notes["decoder_minutes"], mse=notes["vae_mse"],
                        roundtrip_shape=notes["roundtrip_shape"])
        return vae.to(cfg.device).requires_grad_(False).eval(), info
    if ck is None or not ck.get("done"):
        raise RuntimeError(f"the {name} stage has not finished: run `python app.py train builtin --stage {name}`")
    vae = _new_vae()
    vae.load_state_dict(ck["model"])
    vae.register_to_config(scaling_factor=ck["info"]["scaling_factor"])
    return vae.to(cfg.device).requires_grad_(False).eval(), ck["info"]


def train_vae(cfg: TrainConfig):
    dev = cfg.device
    torch.manual_seed(cfg.seed)
    vae = _new_vae().to(dev)

    def loss_fn(step: int, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev, non_blocking=True)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()

    def finish(budget: Budget) -> dict:
        vae.eval()
        return {"steps": budget.total, "batch": cfg.vae_batch, "minutes": budget.minutes_spent(),
                **vae_quality(vae, dev, cfg.held_out)}

    info = train_loop("vae", {"model": vae}, optimizer(vae.parameters(), 1e-3, dev),
                      step_fn(_vae_step, cfg.seed, cfg.vae_batch, 0), loss_fn, steps=cfg.vae_steps, lr=1e-3,
                      minutes=cfg.minutes.get("vae"), ckpt=cfg.work / "vae.ckpt", workers=cfg.workers,
                      log_every=cfg.log_every, save_every=cfg.save_every, finish=finish)
    vae.register_to_config(scaling_factor=info["scaling_factor"])
    log.info("vae: %s", info)
    return vae.requires_grad_(False).eval(), info


def finetune_decoder(cfg: TrainConfig):
    """Train the decoder longer with the encoder frozen: the latent space (what the UNet learns) is unchanged,
    so this stage is independent of the UNet stage and sharpens every image the model makes."""
    dev = cfg.device
    vae, vae_info = load_vae(cfg)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)

    def loss_fn(step: int, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev, non_blocking=True)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)

    def finish(budget: Budget) -> dict:
        vae.eval()
        return {"steps": budget.total, "batch": cfg.vae_batch, "minutes": budget.minutes_spent(),
                **vae_quality(vae, dev, cfg.held_out), "scaling_factor": vae_info["scaling_factor"]}

    info = train_loop("decoder", {"model": vae}, optimizer(params, 5e-4, dev),
                      step_fn(_vae_step, cfg.seed, cfg.vae_batch, 300_000), loss_fn, steps=cfg.decoder_steps,
                      lr=5e-4, warmup=50, minutes=cfg.minutes.get("decoder"), ckpt=cfg.work / "decoder.ckpt",
                      workers=cfg.workers, log_every=cfg.log_every, save_every=cfg.save_every, finish=finish)
    log.info("vae after decoder fine-tuning: %s", info)
    return vae.requires_grad_(False).eval(), info


# ----------------------------------------------------------------------------------------------- UNet

def encode_pool(vae, cfg: TrainConfig) -> tuple[list[world.Scene], torch.Tensor]:
    """Render `cfg.pool` scenes once and keep their latents (the VAE is frozen from here on)."""
    cache = cfg.work / f"pool_{cfg.pool}_{cfg.seed}.pt"
    if (ck := load_ckpt(cache)) is not None:
        return ck["scenes"], ck["latents"]
    rng = random.Random(cfg.seed + 7)
    scenes = [world.random_scene(rng) for _ in range(cfg.pool)]
    chunks = []
    with torch.no_grad():
        for i in range(0, cfg.pool, 512):
            x = _to_tensor([world.render(s) for s in scenes[i:i + 512]]).to(cfg.device)
            chunks.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).half().cpu())
    latents = torch.cat(chunks)
    save_ckpt(cache, {"scenes": scenes, "latents": latents})
    return scenes, latents


def encode_bucket_pools(vae, cfg: TrainConfig) -> tuple[dict, dict]:
    """Multi-aspect pools: for each canvas, scenes rendered at that size and their latents, encoded once. The
    pools together hold the area of `cfg.pool` 64x64 images, split as the steps draw the canvases (so each
    scene is seen about equally often), and never fewer scenes than one batch."""
    shares = bucket_shares(cfg.sides, cfg.square_share)
    cache = cfg.work / f"pools_{cfg.pool}_{cfg.seed}_{'-'.join(map(str, cfg.sides))}_{cfg.square_share:g}.pt"
    if (ck := load_ckpt(cache)) is not None:
        return ck["scenes"], ck["latents"]
    scenes, latents = {}, {}
    for k, ((w, h), share) in enumerate(shares.items()):
        n = max(bucket_batch(cfg.batch, w, h), round(cfg.pool * share * world.SIZE * world.SIZE / (w * h)))
        rng = random.Random(cfg.seed * 1_000_003 + 7 + 10_007 * k)
        scenes[(w, h)] = [world.random_scene(rng) for _ in range(n)]
        chunk = bucket_batch(256, w, h)
        with torch.no_grad():
            latents[(w, h)] = torch.cat([
                (vae.encode(_to_tensor([world.render(s, width=w, height=h) for s in scenes[(w, h)][i:i + chunk]])
                            .to(cfg.device)).latent_dist.mean * vae.config.scaling_factor).half().cpu()
                for i in range(0, n, chunk)])
    log.info("unet: %d canvas pools encoded (%d scenes)", len(scenes), sum(len(v) for v in scenes.values()))
    save_ckpt(cache, {"scenes": scenes, "latents": latents})
    return scenes, latents


def build_unet_and_text(tokenizer):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tc))
    unet = UNet2DConditionModel(**unet_config(tc["hidden_size"]))
    return unet, text_encoder


def train_unet(cfg: TrainConfig, tokenizer) -> dict:
    """The UNet and the text encoder, jointly, on the VAE encoder's latents (the decoder does not matter here)."""
    from diffusers import DDPMScheduler

    ckpt_path = cfg.work / "unet.ckpt"
    if (info := finished(ckpt_path)) is not None:
        return info
    dev = cfg.device
    torch.manual_seed(cfg.seed + 1)
    unet, text_encoder = build_unet_and_text(tokenizer)
    unet, text_encoder = unet.to(dev), text_encoder.to(dev)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    text_encoder.requires_grad_(not cfg.freeze_text)
    params = list(unet.parameters()) + ([] if cfg.freeze_text else list(text_encoder.parameters()))
    opt = optimizer(params, cfg.unet_lr, dev, weight_decay=0.01)
    if not ckpt_path.exists() and cfg.init is not None:  # continuing a finished model: its weights, a fresh optimizer
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(cfg.init, subfolder="unet").state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(cfg.init, subfolder="text_encoder").state_dict())
        ema_unet.load_state_dict(unet.state_dict())
        ema_text.load_state_dict(text_encoder.state_dict())
        log.info("unet: continuing from %s", cfg.init)
    alphas = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod
    vae, _ = load_vae(cfg)
    if cfg.sides:  # multi-aspect: one pool per canvas size, one canvas a step
        scenes, pools = encode_bucket_pools(vae, cfg)
        del vae
        pools = {size: z.to(dev) for size, z in pools.items()}

        def latents_of(size_idx: tuple[tuple[int, int], torch.Tensor]) -> torch.Tensor:
            size, idx = size_idx
            return pools[size][idx.to(dev)].float()

        make = step_fn(_aspect_step, cfg.seed, cfg.batch, bucket_shares(cfg.sides, cfg.square_share), scenes,
                       tokenizer)
        data = (f"{len(pools)} canvas pools ({sum(len(v) for v in scenes.values())} scenes), "
                f"{cfg.square_share:.0%} of batches 64x64")
    else:
        scenes, latents = encode_pool(vae, cfg)
        del vae
        latents = latents.to(dev)

        def latents_of(idx: torch.Tensor) -> torch.Tensor:
            return latents[idx.to(dev)].float()

        make = step_fn(_unet_step, cfg.seed, cfg.batch, scenes, tokenizer)
        data = f"pool {len(scenes)}"
    log.info("unet: %.1fM params, text encoder %.1fM, %s", sum(p.numel() for p in unet.parameters()) / 1e6,
             sum(p.numel() for p in text_encoder.parameters()) / 1e6, data)

    def loss_fn(step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        source, ids = batch
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0 = latents_of(source)
        cond = text_encoder(ids.to(dev))[0]
        return v_loss(lambda xt, t: unet(xt, t, cond).sample, x0, alphas, gen)

    def finish(budget: Budget) -> dict:
        info = {"steps": budget.total, "batch": cfg.batch, "minutes": budget.minutes_spent(),
                "pool": cfg.pool, "lr": cfg.unet_lr, "device": dev, "threads": cfg.threads}
        if cfg.sides:
            info.update(sides=list(cfg.sides), square_share=cfg.square_share)
        if cfg.freeze_text:
            info["text_encoder"] = "frozen"
        if cfg.init is not None:  # the phases before this one, as the model being continued recorded them
            before = json.loads((cfg.init / "studio.json").read_text())
            first = {k: before.get(f"unet_{k}") for k in ("steps", "batch", "minutes")}
            info["before"] = before.get("unet_phases") or [{**first, "device": before.get("device"),
                                                            "pool": before.get("pool")}]
        return info

    modules = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    return train_loop("unet", modules, opt, make, loss_fn,
                      steps=cfg.unet_steps, lr=cfg.unet_lr, minutes=cfg.minutes.get("unet"), ckpt=ckpt_path,
                      workers=cfg.workers, clip=1.0,
                      ema=[(ema_unet, unet)] + ([] if cfg.freeze_text else [(ema_text, text_encoder)]),
                      log_every=cfg.log_every, save_every=cfg.save_every, finish=finish)


def load_unet(cfg: TrainConfig, tokenizer):
    """The EMA weights of the finished UNet stage (on the CPU)."""
    ck = load_ckpt(cfg.work / "unet.ckpt")
    if ck is None or not ck.get("done"):
        raise RuntimeError("the unet stage has not finished: run `python app.py train builtin --stage unet`")
    unet, text_encoder = build_unet_and_text(tokenizer)
    unet.load_state_dict(ck["ema_unet"])
    text_encoder.load_state_dict(ck["ema_text"])
    return unet, text_encoder, ck["info"]


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


_PHASE_KEYS = ("steps", "batch", "minutes", "device", "threads", "pool", "lr", "sides", "square_share",
               "text_encoder")


def _phase_note(info: dict, phase: int) -> str:
    """A line for studio.json's timing_note about the UNet phase just trained (a continuation)."""
    where = f"{info.get('threads', 1)} thread(s) of the CPU" if info["device"] == "cpu" else info["device"]
    data = (f"canvases with sides {min(info['sides'])}-{max(info['sides'])} px (one size a batch, "
            f"{info['square_share']:.0%} of batches 64x64; per-canvas pools of {info['pool']} 64x64 images' area)"
            if info.get("sides") else f"a pool of {info['pool']}")
    frozen = " (text encoder frozen)" if info.get("text_encoder") == "frozen" else ""
    return (f"phase {phase} continued the UNet{frozen} on {where} for {info['minutes']:.0f} min "
            f"({info['steps']} steps, batch {info['batch']} 64x64-images' area, lr {info['lr']:g}) on {data}")


def assemble(cfg: TrainConfig, tokenizer) -> Path:
    """The pipeline folder from the finished stages: the fine-tuned decoder (or the plain VAE), the EMA UNet."""
    enc, vae_info = load_vae(cfg)
    try:
        vae, dec = load_vae(cfg, "decoder")
    except RuntimeError:  # no decoder stage: ship the VAE as trained
        vae, dec = enc, {**vae_info, "steps": 0, "minutes": 0}
    unet, text_encoder, unet_info = load_unet(cfg, tokenizer)
    notes = {"native_size": world.SIZE, "seed": cfg.seed, "device": cfg.device,
             "vae_steps": vae_info["steps"], "vae_batch": vae_info["batch"], "vae_minutes": vae_info["minutes"],
             "vae_mse_before_decoder_finetune": vae_info["mse"], "decoder_steps": dec["steps"],
             "decoder_minutes": dec["minutes"], "vae_mse": dec["mse"], "roundtrip_shape": dec["roundtrip_shape"],
             "unet_steps": unet_info["steps"], "unet_batch": unet_info["batch"], "unet_minutes": unet_info["minutes"],
             "pool": unet_info["pool"],
             "unet_phases": unet_info.get("before", []) + [{k: unet_info[k] for k in _PHASE_KEYS if k in unet_info}]}
    if cfg.init is not None:  # the continued model's own notes (timing_note, cpu_note, its first device) stay
        before = json.loads((cfg.init / "studio.json").read_text())
        notes = {**{k: v for k, v in before.items() if k != "family"}, **notes,
                 "device": before.get("device", cfg.device)}
        notes["timing_note"] = "; ".join(filter(None, [before.get("timing_note"), _phase_note(unet_info,
                                                                                          len(notes["unet_phases"]))]))
    save_pipeline(cfg.out, vae.cpu(), text_encoder, tokenizer, unet, notes)
    log.info("built-in model written to %s (%s)", cfg.out, notes)
    return cfg.out


def train_all(cfg: TrainConfig, stage: str = "all") -> Path:
    """Run one stage, or all of them in order; a finished stage is skipped, an interrupted one resumed."""
    from transformers import CLIPTokenizer

    torch.set_num_threads(cfg.threads)
    setup_device(cfg.device)
    cfg.work.mkdir(parents=True, exist_ok=True)
    build_tokenizer(cfg.work / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(cfg.work / "tokenizer")
    for name in STAGES if stage == "all" else (stage,):
        if name == "vae":
            train_vae(cfg)
        elif name == "decoder":
            finetune_decoder(cfg)
        elif name == "unet":
            train_unet(cfg, tokenizer)
        else:
            assemble(cfg, tokenizer)
    return cfg.out
