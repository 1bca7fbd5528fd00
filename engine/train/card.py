"""Writes the built-in model's card (assets/builtin/README.md) from its training notes and evaluation results."""

from __future__ import annotations

import json
from pathlib import Path

from ..request import DEFAULTS
from .builtin import TrainConfig, text_config, unet_config, vae_config


def write_card(folder: Path, eval_md: str = "", controlnet_md: str = "") -> Path:
    notes = json.loads((folder / "studio.json").read_text())
    d = DEFAULTS["builtin"]
    cfg = TrainConfig()
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    unet, vae, text = unet_config(128), vae_config(), text_config(0, 0, 0)
    card = f"""# The built-in model

A small latent diffusion model trained by this project, from scratch, on its own synthetic "shapes world"
(`engine/train/world.py`), so that the app works with no download and no GPU. Native size 64x64.
Family `builtin` (it runs on diffusers' Stable Diffusion pipeline classes; plugins and ControlNets for it
declare that family). fp16 safetensors, {size_mb:.1f} MB in all.

## What it knows
Captions of the grammar `a {{small|big}} {{colour}} {{circle|square|triangle|person}} {{on the left|on the right|at the
top|at the bottom|in the center}}, {{colour}} background`, colours red, green, blue, yellow, purple, orange, white,
black; also two objects joined by "and" (left/right or top/bottom). Words outside that grammar are tokenized
(a CLIP-format BPE learned from the grammar) but mean nothing to it.

## Default settings (chosen by measurement, see below)
{d.steps} steps, guidance {d.guidance:g}, scheduler `{d.scheduler}` (DPM-Solver++ 2M), v-prediction.

## How it was made (`python app.py train builtin`, then `train controlnets`, `train loras`)
1. Tokenizer: CLIP-format BPE (vocab.json + merges.txt), 400 merges learned from the grammar's words.
2. VAE (`AutoencoderKL`, channels {vae['block_out_channels']}, 4 latent channels, 64x64 -> 16x16x4):
   {notes.get('vae_steps')} steps, batch 16, AdamW 1e-3 cosine, MSE + 0.5 L1 + 1e-6 KL, log-variance bias
   started at -8; trained on varied images (outlines, pastels, random colour maps) so LoRA styles fit in
   its latent space. Held-out reconstruction MSE {notes.get('vae_mse')} (images in [-1, 1]);
   {notes.get('vae_minutes')} min.
3. UNet (`UNet2DConditionModel`, channels {unet['block_out_channels']}, cross-attention at 8x8 and 4x4 down
   and at every level up) and a CLIP text encoder ({text['num_hidden_layers']} layers, width
   {text['hidden_size']}) trained jointly: {notes.get('unet_steps')} steps, batch {cfg.batch}, AdamW 6e-4
   cosine, v-prediction on a cosine noise schedule (flat backgrounds need a near-zero terminal SNR),
   an unweighted v-loss with half of each batch drawn from the noisiest 30% of timesteps (where the
   layout is decided: with min-SNR weighting those steps weighed ~0 and position words were ignored),
   EMA 0.999, captions dropped entirely 10% of the time (classifier-free guidance) and partly
   (size/position/background) otherwise; latents of {cfg.pool} pre-rendered scenes;
   {notes.get('unet_minutes')} min on two CPU threads.
4. ControlNets (edge, depth, pose; `ControlNetModel.from_unet`, conditioning embedding (16, 32, 64) for the
   VAE's 4x downsampling), base model frozen: edge and depth 2000 steps (1200, then resumed under a
   2000-step schedule), pose 1200; batch 16, AdamW 3e-4 cosine, the same loss;
   captions never name the position and half are empty (with the position in the caption the base model
   places the object itself and the ControlNet learns nothing); edge maps thickened to 1-3 px half the
   time. See `assets/controlnet-*/` and the adherence table below.
5. LoRA plugins (`assets/plugins/`, the same loss, base frozen): `pastel` (rank 4 on the attention
   projections, 400 steps, trigger "pastel style") and `outline` (rank 8 on the attention projections and the
   ResNet convolutions, 1000 steps, trigger "outline style": attention alone could not turn filled into
   hollow). On 30 held-out prompts: hollow objects 17% -> 77% with outline at 1.0; mean saturation 188 -> 88
   with pastel at 1.0.

Every stage is seeded and resumable from `runs/builtin/*.ckpt`; the same commands reproduce these weights on
this machine (2-core CPU, `--threads 2` for the UNet), up to floating-point differences between machines.

## Scores (benchmarks/eval_builtin.py, benchmarks/eval_controlnets.py)
{eval_md or "(not measured yet)"}
{controlnet_md}
"""
    path = folder / "README.md"
    path.write_text(card)
    return path
