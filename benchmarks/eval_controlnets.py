"""How well the built-in ControlNets are followed, on held-out control maps.

    python benchmarks/eval_controlnets.py [--n 100] [--sizes 64x64,96x64,128x128]   # appends to RESULTS.md

edge, depth: IoU between the object mask found in the output and the true object's mask (the region the
control map describes), with the control and without it (the same prompts: the no-control IoU is chance).
pose: the same IoU against the stick figure, and the keypoint hit rate (share of the 14 body keypoints
that land within 2 px of figure pixels in the output).
Each with two prompts: "neutral" names only colours and the object ("a red square, blue background"), and
"contradicting" adds a size and a place that disagree with the map ("a big red square at the top" for a small
square on the left): a ControlNet that decides the outline keeps its IoU there. Goals (issue #19): IoU >= 0.85
neutral and >= 0.75 contradicting for edge and depth, pose keypoint hits >= 95%, at every size.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import common  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def keypoint_hits(mask: np.ndarray, points: list[tuple[float, float]]) -> float:
    """Share of the 14 body keypoints (pixel coordinates) within 2 px of figure pixels in `mask`."""
    grown = np.pad(mask, 2)
    for _ in range(2):  # grow by one pixel in the 4 directions, twice
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
    grown = grown[2:-2, 2:-2]
    h, w = mask.shape
    pts = [(int(round(y)), int(round(x))) for x, y in points[:14]]
    return float(np.mean([grown[min(max(y, 0), h - 1), min(max(x, 0), w - 1)] for y, x in pts]))


def prompts(thing, background: str, rng: random.Random) -> dict[str, str]:
    from engine.train import world

    size = "big" if thing.size == "small" else "small"
    place = rng.choice([p for p in world.POSITIONS if p != thing.position])
    return {"neutral": f"a {thing.color} {thing.kind}, {background} background",
            "contradicting": f"a {size} {thing.color} {thing.kind} {place}, {background} background"}


def evaluate_kind(engine, kind: str, n: int, width: int = 64, height: int = 64, seed: int = 4242) -> dict:
    from PIL import Image

    from engine.request import ControlUnit, Request
    from engine.train import evaluate, world
    from engine.train.controlnet import control_map

    rng = random.Random(seed)
    scores: dict[str, list[float]] = {}
    for i in range(n):
        scene = world.random_scene(rng, two_objects=0.0, person=(kind == "pose") or False)
        thing = scene.things[0]
        unit = ControlUnit(kind, Image.fromarray(control_map(kind, scene, world.render(scene, width=width,
                                                                                         height=height))),
                           preprocessor="none")
        said = prompts(thing, scene.background, rng)
        for name, prompt, controls in (("neutral", said["neutral"], [unit]),
                                       ("contradicting", said["contradicting"], [unit]),
                                       ("none", said["neutral"], [])):
            result = engine.generate(Request(prompt=prompt, seed=i, controls=controls, width=width, height=height))
            mask = evaluate.analyse(result.images[0])["mask"]  # at a shorter side of 64 px
            mh, mw = mask.shape
            scores.setdefault(f"iou_{name}", []).append(iou(mask, world.render_mask(thing, mw, mh)))
            if kind == "pose" and controls:
                scores.setdefault(f"hits_{name}", []).append(keypoint_hits(mask, world.keypoints(thing, mw, mh)))
    return {k: statistics.mean(v) for k, v in scores.items()}


def section(rows: dict, n: int, commit: str) -> str:
    lines = [f"\n## Built-in ControlNets adherence per size ({date.today()}, commit {commit}, {n} held-out maps "
             "per kind and size)\n",
             "IoU of the drawn object with the map's region; *neutral* prompts name colour and object only, "
             "*contradicting* ones add a size and a place the map disagrees with; *none*: no control (chance). "
             "Goals: edge/depth IoU >= 0.85 neutral, >= 0.75 contradicting; pose keypoint hits >= 95%.\n",
             "| control | size | IoU neutral | IoU contradicting | IoU without (chance) | pose hits neutral | "
             "pose hits contradicting |", "|---|---|---|---|---|---|---|"]
    for (kind, w, h), r in rows.items():
        hits = [f"{100 * r[k]:.0f}%" if k in r else "-" for k in ("hits_neutral", "hits_contradicting")]
        lines.append(f"| {kind} | {w}x{h} | {r['iou_neutral']:.2f} | {r['iou_contradicting']:.2f} | "
                     f"{r['iou_none']:.2f} | {hits[0]} | {hits[1]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--sizes", default="64x64", help="WIDTHxHEIGHT canvases, comma-separated")
    p.add_argument("--kinds", default="edge,depth,pose")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from benchmarks.eval_builtin import parse_sizes
    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True)
    rows = {}
    for kind in args.kinds.split(","):
        for w, h in parse_sizes(args.sizes):
            rows[(kind, w, h)] = evaluate_kind(engine, kind, args.n, w, h)
            print(kind, f"{w}x{h}", {k: round(v, 3) for k, v in rows[(kind, w, h)].items()}, flush=True)
    text = section(rows, args.n, common.commit())
    common.report(text, args, latest="controlnet_eval_latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
