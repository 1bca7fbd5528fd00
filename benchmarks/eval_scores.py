"""The built-in model's scores over held-out prompts, shared by eval_builtin.py and eval_fast.py: images for a set
of scenes, their scores per size and configuration, and the tables that print them."""

from __future__ import annotations

import time

import numpy as np

SIZE_KEYS = ["background", "color", "position", "shape", "one_object", "bg+color+position+one"]

def images_for(pipe, scenes, steps: int, guidance: float, seed: int, batch: int = 25, width: int | None = None,
               height: int | None = None) -> list:
    """The pipeline's images for the scenes' captions, batched; image k has the fixed seed `seed + k`."""
    import torch

    from engine.train import world

    images = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe([world.caption(s) for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, width=width, height=height).images
    return images

def run_config(pipe, sets: dict, steps: int, guidance: float, scheduler: str) -> dict:
    from engine.sources.loading import make_scheduler
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

def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"64x64,96x64" -> [(64, 64), (96, 64)] (width x height)."""
    try:
        return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: give WIDTHxHEIGHT pairs separated by commas, e.g. 64x64,96x64") from None

def run_sizes(pipe, scenes, sizes: list[tuple[int, int]], steps: int, guidance: float, scheduler: str) -> dict:
    """Per canvas size: the single-shape scores (with one-object counts) at the given sampling settings."""
    from engine.sources.loading import make_scheduler
    from engine.train import evaluate

    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    out = {}
    for w, h in sizes:
        t0 = time.perf_counter()
        images = images_for(pipe, scenes, steps, guidance, 1000, width=w, height=h)
        scores = [evaluate.score_image(im, s.things[0], s.background) for im, s in zip(images, scenes)]
        out[(w, h)] = evaluate.summarize(scores)
        out[(w, h)]["objects_mean"] = float(np.mean([sc["objects"] for sc in scores]))
        out[(w, h)]["s_per_image_batched"] = (time.perf_counter() - t0) / len(scenes)
        print(f"{w}x{h}: {out[(w, h)]}", flush=True)
    return out

def sizes_table(results: dict[str, dict]) -> str:
    """One row per size and model: `results` maps a model's name to run_sizes' output."""
    lines = ["| size | model | " + " | ".join(k.replace("_", " ") for k in SIZE_KEYS) + " | objects (mean) |",
             "|" + "---|" * (len(SIZE_KEYS) + 3)]
    sizes = next(iter(results.values())).keys()
    for w, h in sizes:
        for name, r in results.items():
            row = r[(w, h)]
            lines.append(f"| {w}x{h} | {name} | " + " | ".join(f"{100 * row[k]:.0f}%" for k in SIZE_KEYS)
                         + f" | {row['objects_mean']:.2f} |")
    return "\n".join(lines)

def table(rows: list[tuple[str, dict]]) -> str:
    keys = ["background", "color", "position", "shape", "size", "bg+color+position", "all", "pairs", "people"]
    lines = ["| setting | " + " | ".join(keys) + " | colour error (people) | s/image (batched) |",
             "|" + "---|" * (len(keys) + 3)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.0f}%" for k in keys)
                     + f" | {r['color_error']:.1f} ({r['people_color_error']:.1f}) | {r['s_per_image_batched']:.3f} |")
    return "\n".join(lines)
