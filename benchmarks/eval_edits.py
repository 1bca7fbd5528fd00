"""Edits on the built-in model: does an object asked for inside a mask land inside it, is the rest untouched, does
an outpainted border continue the background? Held-out cases, scored automatically.

    python benchmarks/eval_edits.py               # 50 inpaint cases + 20 outpaint cases at the defaults
    python benchmarks/eval_edits.py --n 10 --no-write

Inpaint: a base image of a random scene, a mask over one half (left/right/top/bottom, chosen at random), and a
prompt for a big object of a colour the base lacks, placed in that half, on the base's background. Hit: at least
80% of the new colour's pixels lie inside the mask and there are at least 60 of them (a 64-px object of the small
size has ~150). The unmasked pixels must be unchanged (largest change outside the mask and its 2x blur feather).
Outpaint: the base zoomed out 1.5x (16 px per side); the new border's median colour must be nearest to the base's
background colour. Goal (issue #17): inpaint hits >= 90%, unchanged 100%.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

HALVES = {"left": ("on the left", (0, 0, 32, 64)), "right": ("on the right", (32, 0, 64, 64)),
          "top": ("at the top", (0, 0, 64, 32)), "bottom": ("at the bottom", (0, 32, 64, 64))}


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--outpaint-n", type=int, default=20)
    p.add_argument("--strength", type=float, default=1.0)
    args = p.parse_args()
    common.setup(args)
    import numpy as np
    from PIL import Image, ImageDraw

    from engine.edit import unmasked_change
    from engine.engine import Engine
    from engine.request import Request
    from engine.train import evaluate, world

    engine = Engine(device="cpu")
    rng = random.Random(2026)
    palette = np.array(list(world.COLORS.values()), np.float32)
    names = list(world.COLORS)
    hits, unchanged, outpaint_ok, times = 0, 0, 0, []
    for i in range(args.n):
        scene = world.random_scene(rng, two_objects=0.0, person=False)
        base = engine.generate(Request(prompt=world.caption(scene), seed=10_000 + i)).images[0]
        bg = evaluate.analyse(base)["background"]
        taken = {bg, evaluate.analyse(base)["color"]}
        colour = rng.choice([c for c in names if c not in taken])
        half = rng.choice(list(HALVES))
        where, box = HALVES[half]
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)
        prompt = f"a big {colour} {rng.choice(world.SHAPES)} {where}, {bg} background"
        t0 = time.perf_counter()
        out = engine.generate(Request(prompt=prompt, seed=20_000 + i, init_image=base, mask=mask,
                                      strength=args.strength)).images[0]
        times.append(time.perf_counter() - t0)
        pixels = np.asarray(out, np.float32)
        nearest = np.argmin(np.linalg.norm(pixels[:, :, None] - palette[None, None], axis=3), axis=2)
        new = nearest == names.index(colour)
        inside = new & (np.asarray(mask) > 0)
        hit = new.sum() >= 60 and inside.sum() >= 0.8 * new.sum()
        hits += hit
        unchanged += unmasked_change(base, out, mask, margin=8) == 0
    for i in range(args.outpaint_n):
        scene = world.random_scene(rng, two_objects=0.0, person=False)
        base = engine.generate(Request(prompt=world.caption(scene), seed=30_000 + i)).images[0]
        bg = evaluate.analyse(base)["background"]
        out = engine.generate(Request(prompt=world.caption(scene), seed=40_000 + i, init_image=base,
                                      outpaint=(16, 16, 16, 16))).images[0]
        a = np.asarray(out, np.float32)
        ring = np.concatenate([a[:12].reshape(-1, 3), a[-12:].reshape(-1, 3), a[:, :12].reshape(-1, 3),
                               a[:, -12:].reshape(-1, 3)])
        outpaint_ok += evaluate.nearest_color(np.median(ring, axis=0)) == bg
    rows = [["inpaint: the asked object inside the mask", f"{hits}/{args.n}", f"{100 * hits / args.n:.0f}%",
             common.verdict(hits / args.n, 0.9, lower_is_better=False)],
            ["inpaint: unmasked pixels unchanged", f"{unchanged}/{args.n}", f"{100 * unchanged / args.n:.0f}%", ""],
            ["outpaint 1.5x: the border continues the background", f"{outpaint_ok}/{args.outpaint_n}",
             f"{100 * outpaint_ok / max(1, args.outpaint_n):.0f}%", ""]]
    section = (f"## Edits on the built-in model (eval_edits.py)\n\n- date {time.strftime('%Y-%m-%d %H:%M')}; commit "
               f"{common.commit()}; defaults (10 steps, cfg 2), inpaint strength {args.strength:g}, mask blur 4; "
               f"inpaint {common.med(times):.2f} s median per image on {args.threads} thread(s)\n\n"
               + common.table(["measure", "count", "rate", "goal"], rows) + "\n")
    common.report(section, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
