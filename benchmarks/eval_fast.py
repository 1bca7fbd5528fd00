"""The 4-step `fast` LoRA plugin against the full built-in model, in one run (`eval_builtin.py --fast`).

Scores: the same held-out prompts and seeds as eval_builtin.py's default row, for the full model at its defaults
(10 steps, guidance 2, DPM++ 2M) and for the model with `assets/plugins/fast.safetensors` at the settings of its
manifest (4 steps, guidance 1, DDIM), and with `--sizes` the single-shape scores per canvas for both. Speed: one
64x64 image through `Engine.generate`, warm, on one thread, the two requests alternately (median of 15 each): the
full model's `Request(prompt)` against `Request(prompt, loras=[fast])`, which takes the plugin's own settings.
Goals (issue #19): >= 95% all-correct in 4 steps, <= 0.12 s a 64x64 image.
"""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "assets" / "plugins" / "fast.toml"


def fast_settings() -> dict:
    import tomllib

    return tomllib.loads(PLUGIN.read_text())


def pipelines(model: str):
    """The full model's pipeline and a second one with the fast LoRA fused in, at the manifest's scheduler."""
    import torch
    from diffusers import StableDiffusionPipeline

    from engine.sources.loading import make_scheduler
    from engine.sources.resolve import Resolver

    folder = Resolver(local_paths=True).resolve(model).location
    full = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    fast = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    fast.load_lora_weights(PLUGIN.parent, weight_name=fast_settings()["source"], adapter_name="fast")
    fast.fuse_lora(lora_scale=1.0)
    fast.scheduler = make_scheduler(fast_settings()["scheduler"], dict(fast.scheduler.config))
    for pipe in (full, fast):
        pipe.set_progress_bar_config(disable=True)
    return full, fast


def latency(runs: int = 15) -> dict[str, float]:
    """Median seconds of one 64x64 image, warm, for each side, alternately. Each side has its own engine, so each
    sees the same request again and again as a user of that mode does (the fast side's LoRA gets fused after a
    few identical requests, engine/plugins/fusing.py); one engine for both would unfuse and refuse it each time."""
    from engine.engine import Engine
    from engine.request import LoraSpec, Request

    prompt = "a big red circle on the left, blue background"
    sides = {"full": lambda seed: Request(prompt=prompt, seed=seed),
             "fast": lambda seed: Request(prompt=prompt, seed=seed, loras=[LoraSpec("fast", 1.0)])}
    engines = {name: Engine(device="cpu") for name in sides}
    for name, make in sides.items():
        for seed in range(4):  # warm: loads, and for fast the LoRA (fused from the 4th identical request on)
            engines[name].generate(make(seed))
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(runs):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t0 = time.perf_counter()
            engines[name].generate(sides[name](r + 10))
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main_fast(args) -> int:
    from benchmarks.eval_scores import parse_sizes, run_config, run_sizes, sizes_table, table
    from engine.request import DEFAULTS
    from engine.train import evaluate

    d, own = DEFAULTS["builtin"], fast_settings()
    full, fast = pipelines(args.model)
    sets = {"single": evaluate.eval_scenes(args.n), "pairs": evaluate.pair_scenes(args.pairs),
            "people": evaluate.person_scenes(args.pairs)}
    rows = [(f"full model ({d.steps} steps, cfg {d.guidance:g}, {d.scheduler})",
             run_config(full, sets, d.steps, d.guidance, d.scheduler)),
            (f"fast LoRA ({own['steps']} steps, cfg {own['guidance']:g}, {own['scheduler']})",
             run_config(fast, sets, own["steps"], own["guidance"], own["scheduler"]))]
    for name, r in rows:
        print(f"{name}: {r}", flush=True)
    sizes_text = ""
    if args.sizes:
        scenes = evaluate.eval_scenes(min(args.n, 60))
        sizes = parse_sizes(args.sizes)
        per_size = {"full": run_sizes(full, scenes, sizes, d.steps, d.guidance, d.scheduler),
                    "fast": run_sizes(fast, scenes, sizes, own["steps"], own["guidance"], own["scheduler"])}
        sizes_text = f"\n\nPer canvas size ({len(scenes)} single-shape prompts a size):\n\n{sizes_table(per_size)}"
    speed = latency()
    ratio = speed["full"] / speed["fast"]
    all_fast = rows[1][1]["all"]
    section = (f"\n## The 4-step `fast` LoRA against the full built-in model ({date.today()}, commit "
               f"{common.commit()}, {args.n} prompts, CPU, {args.threads} thread)\n\n"
               f"Same prompts and seeds for both; `all` = background, colour, position, shape and size right. Goal "
               f">= 95% all-correct in 4 steps: {common.verdict(all_fast, 0.95, lower_is_better=False)}.\n\n"
               f"{table(rows)}{sizes_text}\n\n"
               f"Speed, one 64x64 image through Engine.generate, warm, alternately (median of 15): full model "
               f"**{speed['full']:.3f} s**, fast **{speed['fast']:.3f} s** ({ratio:.1f}x faster); goal <= 0.12 s: "
               f"{common.verdict(speed['fast'], 0.12)}.\n")
    common.report(section, args, latest="fast_eval_latest.md")
    return 0
