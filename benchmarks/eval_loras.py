"""What the built-in model's demo LoRAs do to its images, on held-out prompts.

    python benchmarks/eval_loras.py [--n 30]      # appends to benchmarks/RESULTS.md

outline: the share of images whose object is hollow (the middle third of its bounding box is mostly
background), without the LoRA and with it at 0.5 and 1.0. pastel: the mean saturation (HSV, 0-255).
Both also report how often the object stays where the prompt puts it (the style must not move it; background
colour names are not compared, since pastel changes them on purpose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import common  # noqa: E402


def measure(engine, scenes, loras) -> dict:
    from engine.request import LoraSpec, Request
    from engine.train import evaluate, world

    hollow, sat, kept = [], [], []
    for i, s in enumerate(scenes):
        image = engine.generate(Request(prompt=world.caption(s), seed=i,
                                        loras=[LoraSpec(n, w) for n, w in loras])).images[0]
        core, saturation = evaluate.core_and_saturation(image)
        hollow.append(core < 0.5)
        sat.append(saturation)
        score = evaluate.score_image(image, s.things[0], s.background)
        kept.append(score["position"])
    return {"hollow": statistics.mean(hollow), "saturation": statistics.mean(sat), "position": statistics.mean(kept)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from engine.engine import Engine
    from engine.train import evaluate

    engine = Engine(device="cpu", local_paths=True)
    scenes = evaluate.eval_scenes(args.n, seed=777)
    rows = {"none": measure(engine, scenes, [])}
    for name in ("outline", "pastel"):
        for w in (0.5, 1.0):
            rows[f"{name} {w:g}"] = measure(engine, scenes, [(name, w)])
            print(name, w, rows[f"{name} {w:g}"], flush=True)
    title = f"Built-in demo LoRAs, effect ({date.today()}, commit {common.commit()}, {args.n} held-out prompts)"
    lines = [f"\n## {title}\n",
             "| LoRA | hollow objects | mean saturation | position right |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['hollow']:.0f}% | {r['saturation']:.0f} | {100 * r['position']:.0f}% |")
    common.report("\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
