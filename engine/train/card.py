"""Writes the built-in model's card (assets/builtin/README.md) from its training notes and evaluation results."""

from __future__ import annotations

import json
from pathlib import Path

from ..request import DEFAULTS
from .builtin import text_config, unet_config, vae_config


def write_card(folder: Path, eval_md: str = "", controlnet_md: str = "") -> Path:
    notes = json.loads((folder / "studio.json").read_text())
    d = DEFAULTS["builtin"]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    unet, vae, text = unet_config(128), vae_config(), text_config(0, 0, 0)
    phases = "; then ".join(
        f"{ph['steps']} steps at batch {ph['batch']}, peak lr {ph.get('lr') or 6e-4:g}, "
        + (f"canvases {min(ph['sides'])}-{max(ph['sides'])} px a side (one size a batch, the batch's area that of "
           f"{ph['batch']} 64x64 images, {ph['square_share']:.0%} of batches 64x64), per-canvas pools of "
           f"{ph.get('pool')} 64x64 images' area{', text encoder frozen' if ph.get('text_encoder') else ''}, "
           if ph.get("sides") else f"pool {ph.get('pool')}, ")
        + f"{ph['minutes']} min on {'a lent H200 GPU' if ph.get('device') == 'cuda' else 'one CPU thread'}"
        for ph in notes.get("unet_phases", []))
    sides = sorted({side for ph in notes.get("unet_phases", []) for side in ph.get("sides", [])})
    canvases = (f" It also trained at canvases of {sides[0]} to {sides[-1]} px a side (aspect up to 2:1); scores per "
                "size below." if sides else "")
    from .controlnet import STEPS

    cn_steps = ", ".join(f"{k} {v} steps" for k, v in STEPS.items())
    assets = folder.parent
    continued = {}  # ControlNets continued after phase 3 (engine/train/controlnet.py writes training.json)
    for kind in STEPS:
        log = assets / f"controlnet-{kind}" / "training.json"
        continued[kind] = json.loads(log.read_text()) if log.is_file() else []
    cn_more = "; ".join(f"{kind}: " + ", then ".join(
        f"{ph['steps']} steps at batch {ph['batch']}, lr {ph['lr']:g}"
        + (f", canvases {min(ph['sides'])}-{max(ph['sides'])} px" if ph.get("sides") else "")
        + f", {ph['minutes']} min on {'a lent GPU' if str(ph.get('device')).startswith('cuda') else 'one CPU thread'}"
        for ph in phases) for kind, phases in continued.items() if phases)
    if cn_more:
        cn_more = (f" Then each continued on the multi-aspect UNet (phase 4), a third of the captions naming sizes "
                   f"and places that contradict the map, so that the map's outline wins over the words: {cn_more}.")
    fast = _fast_paragraph(assets / "plugins")
    cpu_note = notes.get("cpu_note", "not measured")
    card = f"""# The built-in model

A small latent diffusion model trained by this project, from scratch, on its own synthetic "shapes world"
(`engine/train/world.py`), so that the app works with no download and no GPU. Native size 64x64.{canvases}
Family `builtin` (it runs on diffusers' Stable Diffusion pipeline classes; plugins and ControlNets for it
declare that family). fp16 safetensors, {size_mb:.1f} MB in all.

## What it knows
Captions of the grammar `a {{small|big}} {{colour}} {{circle|square|triangle|person}} {{on the left|on the right|at the
top|at the bottom|in the center}}, {{colour}} background`, colours red, green, blue, yellow, purple, orange, white,
black; also two objects joined by "and" (left/right or top/bottom). Words outside that grammar are tokenized
(a CLIP-format BPE learned from the grammar) but mean nothing to it.

## Default settings (chosen by measurement, see below)
{d.steps} steps, guidance {d.guidance:g}, scheduler `{d.scheduler}` (DPM-Solver++ 2M), v-prediction.

## How it was made
`tools/train_on_gpu.sh` (phase 1: every stage on a lent GPU), `python app.py train builtin --stage unet --init
<phase-1 folder>` (phase 2: the UNet continued on the CPU), `INIT=<phase-2 folder> UNET_MIN=4
tools/train_on_gpu.sh` (phase 3: the UNet continued on the GPU, then the ControlNets on the finished UNet){
    ", `tools/continue_multi_aspect.py` (phase 4: the UNet continued on the CPU at many canvas sizes; ControlNets and "
    "LoRAs not retrained)" if sides else ""}.
1. Tokenizer: CLIP-format BPE (vocab.json + merges.txt), 400 merges learned from the grammar's words.
2. VAE (`AutoencoderKL`, channels {vae['block_out_channels']}, {vae['layers_per_block']} layers per block, 4 latent
   channels, 64x64 -> 16x16x4): {notes.get('vae_steps')} steps, batch {notes.get('vae_batch')}, AdamW 1e-3 cosine,
   MSE + 0.5 L1 + 1e-6 KL, log-variance bias started at -8; trained on varied images (outlines, pastels, random
   colour maps) so LoRA styles fit in its latent space. Then the decoder alone, encoder frozen (same latent
   space): {notes.get('decoder_steps')} steps. Held-out reconstruction MSE
   {notes.get('vae_mse_before_decoder_finetune')} -> {notes.get('vae_mse')} (images in [-1, 1]);
   the shape scorer reads {notes.get('roundtrip_shape', 0):.0%} of
   encoded-and-decoded ground-truth renders right (the ceiling for the model's shape score; the first, narrower
   VAE (16, 32, 64) x1 trained on the CPU allowed only 73.5%).
3. UNet (`UNet2DConditionModel`, channels {unet['block_out_channels']}, cross-attention at 8x8 and 4x4 down
   and at every level up) and a CLIP text encoder ({text['num_hidden_layers']} layers, width
   {text['hidden_size']}) trained jointly, in phases: {phases}.
   AdamW cosine, v-prediction on a cosine noise schedule (flat backgrounds need a near-zero terminal SNR),
   an unweighted v-loss with half of each batch drawn from the noisiest 30% of timesteps (where the
   layout is decided: with min-SNR weighting those steps weighed ~0 and position words were ignored),
   EMA 0.999, captions dropped entirely 10% of the time (classifier-free guidance) and partly
   (size/position/background) otherwise; latents of pre-rendered scenes.
4. ControlNets (edge, depth, pose; `ControlNetModel.from_unet`, conditioning embedding (16, 32, 64) for the
   VAE's 4x downsampling), base model (the finished UNet) frozen, on the GPU at once, batch 64, AdamW 3e-4
   cosine, the same loss: {cn_steps}; captions never name the position and half are empty (with the
   position in the caption the base model places the object itself and the ControlNet learns nothing); edge
   maps thickened to 1-3 px half the time.{cn_more} See `assets/controlnet-*/` and the adherence table below.
5. LoRA plugins (`assets/plugins/`, the same loss, base frozen, on the CPU): `pastel` (rank 4 on the attention
   projections, 400 steps, trigger "pastel style") and `outline` (rank 8 on the attention projections and the
   ResNet convolutions, 1000 steps, trigger "outline style": attention alone could not turn filled into
   hollow). Trained on the finished UNet; their effect is measured by `benchmarks/eval_loras.py` (see
   `benchmarks/RESULTS.md`), their loading and switching cost by `benchmarks/lora_plugins.py`.
{fast}
Timing: {notes.get('timing_note', '')}. Every stage is seeded and resumable from `runs/builtin/*.ckpt`;
`--minutes` gives a stage a time budget instead of a step count (the steps it reached are recorded in
`studio.json`; the defaults of `TrainConfig` are phase 1's numbers, `controlnet.STEPS` the shipped
ControlNets'). The same commands reproduce these weights on any device up to floating-point differences
(GPU kernels are not bit-reproducible). On this 2-core CPU the whole first phase would take hours, not
minutes: {cpu_note}.

## Scores (benchmarks/eval_builtin.py, benchmarks/eval_controlnets.py)
{eval_md or "(not measured yet)"}
{controlnet_md}
"""
    path = folder / "README.md"
    path.write_text(card)
    return path


def _fast_paragraph(plugins: Path) -> str:
    log = plugins / "fast.json"
    if not log.is_file():
        return ""
    info = json.loads(log.read_text())
    return (f"6. The `fast` plugin (`assets/plugins/fast.*`, `python app.py train fast`): a rank-{info['rank']} LoRA "
            f"on the UNet's attention, feed-forward, ResNet convolutions and time projections, distilled from "
            f"this model sampled at its defaults ({info['teacher_steps']} steps, guidance {info['teacher_guidance']:g})"
            f" into {info['student_steps']} DDIM steps without guidance: {info['pairs']} teacher images at canvases "
            f"{min(info['sides'])}-{max(info['sides'])} px, then {info['steps']} steps at batch {info['batch']} "
            f"({info['minutes']} min on one CPU thread), the student learning the v that leads along the DDIM path "
            "from each starting noise to the teacher's image (engine/train/fast.py). Its manifest sets 4 steps, "
            "DDIM and guidance 1 where the user has not set them.\n")


if __name__ == "__main__":  # python -m engine.train.card [SECTION.md ...]: rewrite the card with these score sections
    import sys

    root = Path(__file__).resolve().parents[2]
    files = [Path(a) for a in sys.argv[1:]] or [root / "benchmarks" / "builtin_eval_latest.md"]
    sections = [f.read_text().strip().replace("\n## ", "\n### ").replace("## ", "### ", 1) for f in files]
    cn = (root / "benchmarks" / "controlnet_eval_latest.md").read_text().strip().replace("## ", "### ", 1)
    print(write_card(root / "assets" / "builtin", "\n\n".join(sections), "\n" + cn))
