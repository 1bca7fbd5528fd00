"""Automatic scoring of shapes-world images against their captions: background, colour, position, shape, size.

Pure numpy on RGB images of any size (read with the shorter side at 64 px, so thresholds are in 64-px units).
`score_image` reads an image the way a person would check it: the background is the border's colour, the
object is what differs from it, and its shape is the one of circle, square and triangle that covers it best
(`shape_of`: each drawn at the object's area and centre, the square at every tilt, the triangle tilted up to 30
degrees; none when even the best covers it poorly, as a bar or a smear). That used to be its bounding box's
fill ratio (a square ~1.0, a circle ~0.79, a triangle ~0.5), which called a square tilted by 5 degrees, or with
softened corners, a circle. `count_objects` counts the separate regions of the object's colour: a model that
never saw wide canvases draws the object twice or more there.
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
    """A PIL image (any size, scaled so its shorter side is 64 px, aspect kept) or an RGB array, as float32."""
    if hasattr(image, "convert"):
        w, h = image.size
        m = min(w, h)
        image = image.convert("RGB").resize((round(w * world.SIZE / m), round(h * world.SIZE / m)), Image.BOX)
    return np.asarray(image, dtype=np.float32)


def analyse(image) -> dict:
    """What an image shows: background, object colour, position, shape and size (None where unclear)."""
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
    cx, cy = xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]
    out["position"] = min(world.POSITIONS, key=lambda p: (world.POSITIONS[p][0] - cx) ** 2
                          + (world.POSITIONS[p][1] - cy) ** 2)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    out["shape"] = shape_of(mask)
    out["size"] = "big" if max(h, w) > 23 else "small"
    return out


def _outlines(area: float) -> dict[str, list[np.ndarray]]:
    """Each shape's outlines at `area`, centred on their centroid, as (k, 2) x/y vertex arrays (the circle a
    64-gon); the triangle is the world's (apex up, 2.2 wide for 2.0 high)."""
    r = np.sqrt(area / np.pi)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    half = np.sqrt(area) / 2
    square = np.array([(-half, -half), (half, -half), (half, half), (-half, half)])
    h = np.sqrt(area / 2.2)
    triangle = np.array([(0, -1.1 * h), (1.1 * h, 0.9 * h), (-1.1 * h, 0.9 * h)])
    triangle = triangle - triangle.mean(axis=0)

    def turned(poly: np.ndarray, degrees) -> list[np.ndarray]:
        out = []
        for a in np.deg2rad(np.asarray(degrees, dtype=float)):
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            out.append(poly @ rot.T)
        return out

    return {"circle": [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)],
            "square": turned(square, range(0, 90, 5)), "triangle": turned(triangle, range(-30, 31, 5))}


def _inside(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie inside the convex polygon `poly` (vertices in either turning order)."""
    edges = np.roll(poly, -1, axis=0) - poly
    cross = edges[:, 0, None] * (y[None] - poly[:, 1, None]) - edges[:, 1, None] * (x[None] - poly[:, 0, None])
    return (cross >= 0).all(axis=0) | (cross <= 0).all(axis=0)


FITS = 0.6  # the best outline's IoU needed to name a shape at all: a model's shapes fit 0.67-0.99 (the lowest a
# faint orange triangle on yellow, half lost to the mask's threshold), a ground-truth render 0.93-1.0, a bar 0.24


def shape_of(mask: np.ndarray) -> str | None:
    """The shape (circle, square or triangle) whose outline, drawn at the mask's area and centroid, overlaps the
    mask best (intersection over union), over the tilts `_outlines` gives; None when none fits (FITS)."""
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    gy, gx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    x, y = gx.ravel() + 0.5 - (cx + 0.5), gy.ravel() + 0.5 - (cy + 0.5)  # pixel centres around the centroid
    flat, area = mask.ravel(), float(mask.sum())
    best = {}
    for kind, outlines in _outlines(area).items():
        for poly in outlines:
            inside = _inside(poly, x, y)
            best[kind] = max(best.get(kind, 0.0), (inside & flat).sum() / float((inside | flat).sum()))
    kind = max(best, key=best.get)
    return kind if best[kind] >= FITS else None


def count_objects(image, color: str, background: str, min_area: int = 12) -> int:
    """How many separate regions (4-connected, at least `min_area` pixels at the 64-px scale) of the named colour
    the image holds: pixels whose nearest colour among the palette (the background's included) is `color`."""
    from scipy import ndimage

    img = _pixels(image)
    d = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=3)
    if color == background:  # never asked by the grammar; the whole canvas would be one region
        return 0
    mask = np.argmin(d, axis=2) == _NAMES.index(color)
    labels, n = ndimage.label(mask)
    areas = np.bincount(labels.ravel())[1:]
    return int((areas >= min_area).sum())


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
    objects = count_objects(image, thing.color, background)
    obj = _MAX_DIST if seen["rgb"] is None else float(np.linalg.norm(seen["rgb"] - world.COLORS[thing.color]))
    bg = float(np.linalg.norm(seen["bg_rgb"] - np.asarray(world.COLORS[background], dtype=np.float32)))
    return {"background": seen["background"] == background, "color": seen["color"] == thing.color,
            "position": seen["position"] == thing.position, "shape": seen["shape"] == thing.kind,
            "size": seen["size"] == thing.size, "one_object": objects == 1, "objects": objects,
            "color_error": (obj + bg) / 2}


def _half(position: str, height: int, width: int) -> tuple[slice, slice]:
    return {"on the left": (slice(None), slice(0, width // 2)), "on the right": (slice(None), slice(width // 2, None)),
            "at the top": (slice(0, height // 2), slice(None)),
            "at the bottom": (slice(height // 2, None), slice(None))}[position]


def score_pair(image, scene: world.Scene) -> bool:
    """A two-object scene is right when each object's half of the image (left/right or top/bottom) holds an
    object of its named colour, on the named background."""
    seen = analyse(image)
    if seen["background"] != scene.background:
        return False
    img = _pixels(image)
    for thing in scene.things:
        where = _half(thing.position, *img.shape[:2])
        half, mask = img[where], seen["mask"][where]
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
    out["one_object"] = float(np.mean([s["one_object"] for s in scores]))
    out["bg+color+position+one"] = float(np.mean([s["background"] and s["color"] and s["position"]
                                                  and s["one_object"] for s in scores]))
    return out
