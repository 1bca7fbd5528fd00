"""How well the built-in ControlNets are followed, on held-out control maps.

    python benchmarks/eval_controlnets.py [--n 100]      # appends to benchmarks/RESULTS.md

edge, depth: IoU between the object mask found in the output and the true object's mask (the region the
control map describes), with the control and without it (the same prompts: the no-control IoU is chance).
pose: the same IoU against the stick figure, and the keypoint hit rate (share of the 14 body keypoints
that land within 2 px of figure pixels in the output).
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


def keypoint_hits(mask: np.ndarray, pose: list[tuple[float, float]]) -> float:
    grown = np.pad(mask, 2)
    for _ in range(2):  # grow by one pixel in the 4 directions, twice
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
    grown = grown[2:-2, 2:-2]
    pts = [(int(round(y * 63)), int(round(x * 63))) for x, y in pose[:14]]
    return float(np.mean([grown[min(max(y, 0), 63), min(max(x, 0), 63)] for y, x in pts]))


def evaluate_kind(engine, kind: str, n: int, seed: int = 4242) -> dict:
    from PIL import Image

    from engine.request import ControlUnit, Request
    from engine.train import evaluate, world
    from engine.train.controlnet import control_map

    rng = random.Random(seed)
    with_c, without, hits = [], [], []
    for i in range(n):
        scene = world.random_scene(rng, two_objects=0.0, person=(kind == "pose") or False)
        thing = scene.things[0]
        truth = world.render_mask(thing)
        cmap = Image.fromarray(control_map(kind, scene, world.render(scene)))
        # the prompt names colours only: where and what shape must come from the control
        prompt = f"a {thing.color} {thing.kind}, {scene.background} background"
        for store, controls in ((with_c, [ControlUnit(kind, cmap, preprocessor="none")]), (without, [])):
            result = engine.generate(Request(prompt=prompt, seed=i, controls=controls))
            mask = evaluate.analyse(result.images[0])["mask"]
            store.append(iou(mask, truth))
            if kind == "pose" and controls:
                hits.append(keypoint_hits(mask, thing.pose))
    out = {"iou_control": statistics.mean(with_c), "iou_none": statistics.mean(without)}
    if hits:
        out["keypoint_hits"] = statistics.mean(hits)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True)
    rows = {}
    for kind in ("edge", "depth", "pose"):
        rows[kind] = evaluate_kind(engine, kind, args.n)
        print(kind, rows[kind], flush=True)
    commit = common.commit()
    lines = [f"\n## Built-in ControlNets adherence ({date.today()}, commit {commit}, {args.n} held-out maps each)\n",
             "| control | IoU with control | IoU without (chance) | pose keypoint hits | goal |",
             "|---|---|---|---|---|"]
    for kind, r in rows.items():
        kp = f"{100 * r['keypoint_hits']:.0f}%" if "keypoint_hits" in r else "-"
        goal = "IoU >= 0.7" if kind != "pose" else "keypoint hits reported"
        lines.append(f"| {kind} | {r['iou_control']:.2f} | {r['iou_none']:.2f} | {kp} | {goal} |")
    section = "\n".join(lines) + "\n"
    common.report(section, args)  # prints it; appends to RESULTS.md unless --no-write
    if not args.no_write:
        (ROOT / "benchmarks" / "controlnet_eval_latest.md").write_text(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
