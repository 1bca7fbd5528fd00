"""Adherence and speed of the built-in model: scores generated images against their prompts.

    python benchmarks/eval_builtin.py                 # defaults + guidance 1, 200 prompts, appends RESULTS.md
    python benchmarks/eval_builtin.py --sweep         # also steps/guidance/scheduler candidates (picks defaults)
    python benchmarks/eval_builtin.py --sizes 64x64,96x64,128x128 --n 40 [--model runs/x --baseline builtin]
                                                      # per canvas size, default settings, one-object counts
    python benchmarks/eval_builtin.py --fast [--n 200 --sizes ...]
                                                      # the 4-step `fast` LoRA against the full model, side by side

Prompts are drawn from the grammar with a fixed seed; each image has its own fixed seed. A second set of
two-object prompts ("pairs") tests binding words to places, and a third of stick-figure prompts ("people"),
thin and hard to colour and place, is where guidance shows what it is for. The scorer
(engine/train/evaluate.py) is checked on ground-truth renders first and must score ~100% there.
`--sizes` scores the single-shape prompts at each canvas size instead (same prompts and seeds at every size),
with `one object`: exactly one region of the object's colour (a model that learned 64x64 only repeats the
object on larger or wider canvases); `--baseline` scores a second model on the same prompts in the same run.
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

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.eval_scores import SIZE_KEYS, images_for, parse_sizes, run_config, run_sizes, sizes_table, table  # noqa: E402,F401,E501


def main_sizes(args, engine, sizes: list[tuple[int, int]]) -> int:
    from PIL import Image

    from engine.request import DEFAULTS
    from engine.train import evaluate, world

    scenes = evaluate.eval_scenes(args.n)
    truth = {(w, h): evaluate.summarize([evaluate.score_image(Image.fromarray(world.render(s, width=w, height=h)),
                                                              s.things[0], s.background) for s in scenes])
             for w, h in sizes}
    print("scorer on ground-truth renders:", {f"{w}x{h}": t["bg+color+position+one"] for (w, h), t in truth.items()})
    d = DEFAULTS["builtin"]
    models = {args.model: args.model} if not args.baseline else {"baseline": args.baseline, "candidate": args.model}
    results = {name: run_sizes(engine.load(m).pipe, scenes, sizes, d.steps, d.guidance, d.scheduler)
               for name, m in models.items()}
    worst = min(t[k] for t in truth.values() for k in SIZE_KEYS)
    section = (f"\n## Built-in model per canvas size ({date.today()}, commit {common.commit()}, {args.n} prompts a "
               f"size, default settings {d.steps} steps cfg {d.guidance:g} {d.scheduler}, CPU)\n\n"
               + "".join(f"`{name}`: {m}. " for name, m in models.items())
               + f"Same prompts and seeds at every size. Scorer on ground-truth renders at these sizes: worst "
               f"attribute {100 * worst:.0f}%. `one object`: exactly one region of the object's colour; `objects`: "
               f"the mean count of such regions.\n\n{sizes_table(results)}\n")
    common.report(section, args, latest="builtin_sizes_latest.md")
    return 0


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--pairs", type=int, default=100, help="two-object prompts, and person prompts, per setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--model", default="builtin", help="builtin, or a pipeline folder (a candidate before it ships)")
    p.add_argument("--sizes", default=None, help="WxH list, e.g. 64x64,96x64,64x96,80x56,128x128,128x80: per-size "
                                                 "scores only")
    p.add_argument("--baseline", default=None, help="with --sizes: also score this model on the same prompts")
    p.add_argument("--fast", action="store_true", help="score and time the `fast` LoRA plugin (4 steps) against the "
                                                       "full model in one run (with --sizes: also per size)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.fast:
        from benchmarks.eval_fast import main_fast

        return main_fast(args)
    if args.sizes:
        from engine.engine import Engine

        return main_sizes(args, Engine(device="cpu", local_paths=True), parse_sizes(args.sizes))
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
    engine = Engine(device="cpu", local_paths=True)  # --model may name a candidate folder
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
    common.report(section, args, latest="builtin_eval_latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
