"""`python app.py train {builtin,controlnets,loras,smoke}`: run the training stages, resumably.

builtin      tokenizer, VAE, decoder, UNet + text encoder -> assets/builtin (a diffusers pipeline folder);
             `--stage` runs one, `--device cuda --minutes M --workers N` trains on a GPU in a time budget
controlnets  edge, depth, pose ControlNets for it -> assets/controlnet-{edge,depth,pose}
loras        the demo LoRA plugins -> assets/plugins
fast         the 4-step `fast` LoRA plugin, distilled from the built-in model -> assets/plugins
image-prompt the built-in model's image-prompt adapter (IP-Adapter style) -> assets/image-prompt; `--minutes M`
             trains in a time budget (the shipped one: 75 min on one CPU thread, 4900 steps of 32)
smoke        all of the above (and a multi-aspect continuation) at toy step counts into a temporary folder,
             then load and generate (CI)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from .builtin import MINUTE_SHARES, TrainConfig, train_all
from .controlnet import KINDS, train_controlnet
from .fast import train_fast
from .lora import train_demo_loras

log = logging.getLogger(__name__)


def main(args) -> int:
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    if args.what == "smoke":
        smoke(Path(tempfile.mkdtemp(prefix="studio-smoke-")))
        return 0
    if args.what == "builtin":
        cfg = TrainConfig(out=out, work=work, threads=args.threads, device=args.device, workers=args.workers)
        if args.init:
            cfg.init = Path(args.init)
        for name in ("vae_steps", "decoder_steps", "unet_steps", "batch", "vae_batch", "pool", "unet_lr", "sides",
                     "square_share"):  # sides, square_share: multi-aspect UNet training (issue #19)
            if getattr(args, name, None):
                setattr(cfg, name, getattr(args, name))
        if args.minutes:
            cfg.minutes = ({args.stage: args.minutes} if args.stage != "all"
                           else {k: args.minutes * share for k, share in MINUTE_SHARES.items()})
        train_all(cfg, args.stage)
    elif args.what == "controlnets":
        for kind in (args.kind,) if args.kind else KINDS:
            init = Path(args.init) / f"controlnet-{kind}" if args.init else None  # continue a trained one
            extra = {k: getattr(args, k) for k in ("sides", "square_share") if getattr(args, k, None)}
            train_controlnet(kind, out, work, batch=args.batch or 64, device=args.device, minutes=args.minutes,
                             workers=args.workers, init=init, lr=args.unet_lr or 3e-4, **extra)
    elif args.what == "loras":
        train_demo_loras(out, out.parent / "plugins")
    elif args.what == "image-prompt":
        from .image_prompt import train_image_prompt

        init = Path(args.init) if args.init else None  # an earlier run's adapter checkpoint
        train_image_prompt(out, work, out.parent / "image-prompt", steps=args.unet_steps or 4900,
                           batch=args.batch or 32, device=args.device, minutes=args.minutes, workers=args.workers,
                           init=init)
    elif args.what == "fast":
        extra = {k: getattr(args, k) for k in ("pairs", "batch", "sides", "square_share") if getattr(args, k, None)}
        train_fast(out, out.parent / "plugins", work, minutes=args.minutes, **extra)
    return 0


def smoke(folder: Path) -> Path:
    """A few steps of every stage, then load the result through the engine and generate: proves the code runs."""
    from ..engine import Engine
    from ..request import Request

    cfg = TrainConfig(out=folder / "builtin", work=folder / "work", vae_steps=3, decoder_steps=3, unet_steps=3,
                      pool=64, batch=4, vae_batch=4, held_out=8, log_every=1, save_every=2)
    train_all(cfg)
    # the multi-aspect continuation (--init, one canvas size a batch) on top of it
    aspect = TrainConfig(out=folder / "builtin-aspect", work=folder / "work-aspect", init=cfg.out, sides=(48, 80),
                         unet_steps=3, pool=16, batch=4, log_every=1, save_every=2)
    train_all(aspect, "unet")
    train_all(aspect, "pipeline")
    cn = train_controlnet("edge", cfg.out, cfg.work, steps=2, batch=2)
    train_demo_loras(cfg.out, folder / "plugins", steps=2)
    train_fast(cfg.out, folder / "plugins", cfg.work, pairs=8, steps=2, batch=4, sides=(48, 64))
    engine = Engine(device="cpu", local_paths=True)
    result = engine.generate(Request(prompt="a big red circle on the left, blue background", model=str(cfg.out),
                                     seed=0, steps=2))
    assert result.images[0].size == (64, 64)
    wide = engine.generate(Request(prompt="a small blue square, white background", model=str(aspect.out), seed=0,
                                   steps=2, width=80, height=48))
    assert wide.images[0].size == (80, 48)
    log.info("smoke run complete in %s (controlnet %s)", folder, cn)
    return folder
