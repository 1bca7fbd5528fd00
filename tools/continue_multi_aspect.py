"""Continue the built-in model's UNet at many canvas sizes (issue #19), resumably, then assemble the pipeline.

    OMP_NUM_THREADS=1 nohup python tools/continue_multi_aspect.py --minutes 80 >runs/aspect/log.txt 2>&1 &

The same as `python app.py train builtin --init assets/builtin --stage unet` with multi-aspect batches
(TrainConfig.sides, see engine/train/builtin.py), followed by `--stage pipeline`; run it again after an
interruption and it resumes from `--work`. The candidate lands in `--out`; benchmarks/eval_builtin.py --sizes
compares it with the shipped model before it replaces assets/builtin.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default="assets/builtin", help="the finished pipeline folder to continue")
    p.add_argument("--work", default="runs/aspect", help="checkpoints and pools (resumed from)")
    p.add_argument("--out", default="runs/aspect/builtin", help="the continued pipeline folder")
    p.add_argument("--minutes", type=float, default=None, help="time budget of the UNet stage")
    p.add_argument("--steps", type=int, default=2000, help="UNet steps when no --minutes")
    p.add_argument("--batch", type=int, default=48, help="images a step at 64x64 (fewer on larger canvases)")
    p.add_argument("--pool", type=int, default=16000, help="the pools' total area, in 64x64 images")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--sides", default="48,56,64,72,80,96,112,128")
    p.add_argument("--square-share", type=float, default=0.25, help="share of the batches kept at 64x64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--train-text", action="store_true", help="train the text encoder too (the ControlNets and LoRAs "
                                                             "were trained on the shipped one: frozen by default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from engine.train.builtin import TrainConfig, train_all

    cfg = TrainConfig(out=Path(args.out), work=Path(args.work), init=Path(args.init), threads=args.threads,
                      unet_steps=args.steps, batch=args.batch, pool=args.pool, unet_lr=args.lr,
                      sides=tuple(int(v) for v in args.sides.split(",")), square_share=args.square_share,
                      minutes={"unet": args.minutes} if args.minutes else {}, save_every=args.save_every,
                      log_every=20, freeze_text=not args.train_text)
    train_all(cfg, "unet")
    train_all(cfg, "pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
