"""Automatic scoring of shapes-world images against their captions: background, colour, position, shape, size.

Pure numpy on 64x64 RGB images. `score_image` reads an image the way a person would check it: the
background is the border's colour, the object is what differs from it, and its bounding box's fill
ratio tells a square (~1.0) from a circle (~0.79) from a triangle (~0.5).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from . import world

_PALETTE = np.array(list(world.COLORS.values()), dtype=np.float32)
_NAMES = list(world.COLORS)
_MAX_DIST = float(np.linalg.norm([255.0, 255.0, 255.0]))


def nearest_color(rgb: np.ndarray, exclude: str | None = None) -> str:
    d = np.linalg.norm(_PALETTE - rgb[None, :], axis=1)
    if exclude is not None:
        d[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(d))]


def _pixels(image) -> np.ndarray:
    """A PIL image (any size, shrunk to 64x64) or an RGB array, as float32 pixels."""
    if hasattr(image, "convert"):
        image = image.convert("RGB").resize((world.SIZE, world.SIZE), Image.BOX)
    return np.asarray(image, dtype=np.float32)


def analyse(image) -> dict:
    """What a 64x64 image shows: background, object colour, position, shape and size (None where unclear)."""
    img = _pixels(image)
    border = np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3), img[:, :3].reshape(-1, 3),
                             img[:, -3:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = nearest_color(bg_rgb)
    diff = np.linalg.norm(img - bg_rgb[None, None, :], axis=2)
    mask = diff > 70
    out = {"background": background, "color": None, "position": None, "shape": None, "size": None, "mask": mask,
           "bg_rgb": bg_rgb, "rgb": None}
    if mask.sum() < 20:
        return out
    out["rgb"] = np.median(img[mask], axis=0)
    out["color"] = nearest_color(out["rgb"], exclude=background)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / world.SIZE, ys.mean() / world.SIZE
    out["position"] = min(world.POSITIONS, key=lambda p: (world.POSITIONS[p][0] - cx) ** 2
                          + (world.POSITIONS[p][1] - cy) ** 2)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / float(h * w)
    out["shape"] = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    out["size"] = "big" if max(h, w) > 23 else "small"
    return out


def core_and_saturation(image) -> tuple[float, float]:
    """Share of the object's bounding-box core (its middle third) that is object, and the mean HSV saturation
    (0-255): a filled shape's core is ~1, an outline's ~0 (how the demo LoRAs' styles are measured)."""
    mask = analyse(image)["mask"]
    ys, xs = np.nonzero(mask) if mask.any() else ([0], [0])
    y0, y1, x0, x1 = min(ys), max(ys) + 1, min(xs), max(xs) + 1
    hy, hx = (y1 - y0) // 3, (x1 - x0) // 3
    core = mask[y0 + hy:y1 - hy, x0 + hx:x1 - hx]
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
    return float(core.mean()) if core.size else 1.0, float(hsv[..., 1].mean())


def score_image(image, thing: world.Thing, background: str) -> dict:
    """Right/wrong per attribute, plus `color_error`: how far (RGB distance, 0-441) the object's and the
    background's colours are from the named ones, averaged; a finer measure than right/wrong once those saturate."""
    seen = analyse(image)
    obj = _MAX_DIST if seen["rgb"] is None else float(np.linalg.norm(seen["rgb"] - world.COLORS[thing.color]))
    bg = float(np.linalg.norm(seen["bg_rgb"] - np.asarray(world.COLORS[background], dtype=np.float32)))
    return {"background": seen["background"] == background, "color": seen["color"] == thing.color,
            "position": seen["position"] == thing.position, "shape": seen["shape"] == thing.kind,
            "size": seen["size"] == thing.size, "color_error": (obj + bg) / 2}


_HALVES = {"on the left": (slice(None), slice(0, world.SIZE // 2)),
           "on the right": (slice(None), slice(world.SIZE // 2, None)),
           "at the top": (slice(0, world.SIZE // 2), slice(None)),
           "at the bottom": (slice(world.SIZE // 2, None), slice(None))}


def score_pair(image, scene: world.Scene) -> bool:
    """A two-object scene is right when each object's half of the image (left/right or top/bottom) holds an
    object of its named colour, on the named background."""
    seen = analyse(image)
    if seen["background"] != scene.background:
        return False
    img = _pixels(image)
    for thing in scene.things:
        half, mask = img[_HALVES[thing.position]], seen["mask"][_HALVES[thing.position]]
        if mask.sum() < 8 or nearest_color(np.median(half[mask], axis=0), exclude=seen["background"]) != thing.color:
            return False
    return True


def pair_scenes(n: int, seed: int = 4321) -> list[world.Scene]:
    """n two-object scenes (left/right or top/bottom) with a fixed seed: the harder evaluation set."""
    rng = random.Random(seed)
    return [world.random_scene(rng, two_objects=1.0) for _ in range(n)]


def person_scenes(n: int, seed: int = 77) -> list[world.Scene]:
    """n stick-figure scenes ("a small blue person on the right, ...") with a fixed seed."""
    rng = random.Random(seed)
    return [world.random_scene(rng, person=True) for _ in range(n)]


def eval_scenes(n: int, seed: int = 1234) -> list[world.Scene]:
    """n single-shape scenes drawn from the grammar with a fixed seed (the evaluation set)."""
    rng = random.Random(seed)
    return [world.random_scene(rng, two_objects=0.0, person=False) for _ in range(n)]


def summarize(scores: list[dict]) -> dict[str, float]:
    keys = ["background", "color", "position", "shape", "size"]
    out = {k: float(np.mean([s[k] for s in scores])) for k in keys}
    out["bg+color+position"] = float(np.mean([s["background"] and s["color"] and s["position"] for s in scores]))
    out["all"] = float(np.mean([all(s[k] for k in keys) for s in scores]))
    out["color_error"] = float(np.mean([s["color_error"] for s in scores]))
    return out
