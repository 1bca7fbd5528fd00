"""Adherence and speed of the built-in model: scores generated images against their prompts.

    python benchmarks/eval_builtin.py                 # defaults + guidance 1, 200 prompts, appends RESULTS.md
    python benchmarks/eval_builtin.py --sweep         # also steps/guidance/scheduler candidates (picks defaults)

Prompts are drawn from the grammar with a fixed seed; each image has its own fixed seed. A second set of
two-object prompts ("pairs") tests binding words to places, and a third of stick-figure prompts ("people"),
thin and hard to colour and place, is where guidance shows what it is for. The scorer
(engine/train/evaluate.py) is checked on ground-truth renders first and must score ~100% there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import common  # noqa: E402


def images_for(pipe, scenes, steps: int, guidance: float, seed: int, batch: int = 25) -> list:
    """The pipeline's images for the scenes' captions, batched; image k has the fixed seed `seed + k`."""
    import torch

    from engine.train import world

    images = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe([world.caption(s) for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens).images
    return images


def run_config(pipe, sets: dict, steps: int, guidance: float, scheduler: str) -> dict:
    from engine.engine import make_scheduler
    from engine.train import evaluate

    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    t0 = time.perf_counter()
    scenes = sets["single"]
    images = images_for(pipe, scenes, steps, guidance, 1000)
    out = evaluate.summarize([evaluate.score_image(im, s.things[0], s.background) for im, s in zip(images, scenes)])
    out["s_per_image_batched"] = (time.perf_counter() - t0) / len(scenes)
    # two-object prompts: binding words to places
    right = [evaluate.score_pair(im, s) for im, s in zip(images_for(pipe, sets["pairs"], steps, guidance, 5000),
                                                          sets["pairs"])]
    out["pairs"] = sum(right) / max(len(right), 1)
    # stick figures: thin, few pixels, the hardest to colour and place (the scorer's size rule is for shapes)
    people = evaluate.summarize([evaluate.score_image(im, s.things[0], s.background) for im, s in
                                 zip(images_for(pipe, sets["people"], steps, guidance, 7000), sets["people"])])
    out["people"], out["people_color_error"] = people["bg+color+position"], people["color_error"]
    return out


def latency(engine, threads: int, runs: int = 15) -> float:
    import torch

    from engine.request import Request

    torch.set_num_threads(threads)
    req = Request(prompt="a big red circle on the left, blue background", seed=0)
    engine.generate(req)  # warm
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        engine.generate(Request(prompt=req.prompt, seed=i))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: list[tuple[str, dict]]) -> str:
    keys = ["background", "color", "position", "shape", "size", "bg+color+position", "all", "pairs", "people"]
    lines = ["| setting | " + " | ".join(keys) + " | colour error (people) | s/image (batched) |",
             "|" + "---|" * (len(keys) + 3)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.0f}%" for k in keys)
                     + f" | {r['color_error']:.1f} ({r['people_color_error']:.1f}) | {r['s_per_image_batched']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--pairs", type=int, default=100, help="two-object prompts, and person prompts, per setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--model", default="builtin", help="builtin, or a pipeline folder (a candidate before it ships)")
    args = p.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from PIL import Image

    from engine.engine import Engine
    from engine.request import DEFAULTS
    from engine.train import evaluate, world

    truth = evaluate.summarize([evaluate.score_image(Image.fromarray(world.render(s)), s.things[0], s.background)
                                for s in evaluate.eval_scenes(args.n)])
    truth["pairs"] = float(np.mean([evaluate.score_pair(Image.fromarray(world.render(s)), s)
                                    for s in evaluate.pair_scenes(args.pairs)]))
    truth["people"] = evaluate.summarize([evaluate.score_image(Image.fromarray(world.render(s)), s.things[0],
                                                               s.background)
                                          for s in evaluate.person_scenes(args.pairs)])["bg+color+position"]
    print("scorer on ground-truth renders:", truth, flush=True)
    engine = Engine(device="cpu")
    pipe = engine.load(args.model).pipe
    d = DEFAULTS["builtin"]
    sets = {"single": evaluate.eval_scenes(args.n), "pairs": evaluate.pair_scenes(args.pairs),
            "people": evaluate.person_scenes(args.pairs)}
    configs = [(f"default ({d.steps} steps, cfg {d.guidance:g}, {d.scheduler})", d.steps, d.guidance, d.scheduler),
               (f"guidance 1 ({d.steps} steps, {d.scheduler})", d.steps, 1.0, d.scheduler)]
    if args.sweep:
        configs += [(f"{s} steps, cfg {g:g}, {sch}", s, g, sch) for s, g, sch in
                    [(12, 1.0, "dpm++2m"), (12, 1.5, "dpm++2m"), (12, 2.0, "dpm++2m"), (12, 3.0, "dpm++2m"),
                     (12, 5.0, "dpm++2m"), (10, 2.0, "dpm++2m"), (20, 2.0, "dpm++2m"), (12, 2.0, "unipc"),
                     (30, 2.0, "euler-a")]]
    rows = []
    for name, steps, guidance, scheduler in configs:
        r = run_config(pipe, sets, steps, guidance, scheduler)
        rows.append((name, r))
        print(f"{name}: {r}", flush=True)
    lat1 = latency(engine, 1)
    lat2 = latency(engine, 2)
    print(f"latency warm, default settings: {lat1:.3f} s (1 thread), {lat2:.3f} s (2 threads)")
    commit = common.commit()
    section = (f"\n## Built-in model adherence ({date.today()}, commit {commit}, {args.n} prompts, CPU)\n\n"
               f"Scorer on ground-truth renders: bg {100 * truth['background']:.0f}%, colour "
               f"{100 * truth['color']:.0f}%, position {100 * truth['position']:.0f}%, shape "
               f"{100 * truth['shape']:.0f}%, two-object pairs {100 * truth['pairs']:.0f}%, people "
               f"{100 * truth['people']:.0f}%.\n\n"
               f"`pairs`: {args.pairs} two-object prompts (\"a ... on the left and a ... on the right, ... "
               f"background\"), right when each half holds its named colour on the named background. `people`: "
               f"{args.pairs} stick-figure prompts (\"a small blue person on the right, purple background\"), "
               f"right when background, colour and position are.\n\n"
               f"{table(rows)}\n\n"
               f"Latency, one image at default settings, warm (median of 15): **{lat1:.3f} s** on 1 thread, "
               f"{lat2:.3f} s on 2 threads (goal <= 0.5 s).\n")
    common.report(section, args)  # prints it; appends to RESULTS.md unless --no-write
    if not args.no_write:
        (ROOT / "benchmarks" / "builtin_eval_latest.md").write_text(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
