"""The built-in model's "shapes world": scenes, captions and renders (image, edge, depth, pose).

Everything the built-in model and its ControlNets/LoRAs learn from is drawn here, on the fly,
from a seeded `random.Random`. A `Scene` is plain data; `render_*` turn it into arrays, 64x64 by default or
any width x height (multi-aspect training): positions are fractions of the width and height, sizes fractions of
the shorter side, so a circle stays round and "on the left" means the left of any canvas.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # native resolution of the built-in model
MIN_SIDE, MAX_SIDE, MULTIPLE = 48, 128, 8  # the canvases multi-aspect training draws (width and height each)
_SUPER = 2  # render at 2x and downsample for clean anti-aliased edges

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "purple": (130, 40, 170),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
OBJECTS = SHAPES + ("person",)
SIZES = {"small": 0.13, "big": 0.24}  # half-extent as a fraction of the canvas
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}


@dataclass
class Thing:
    """One object in a scene: a shape or a stick-figure person."""

    kind: str  # circle | square | triangle | person
    color: str
    size: str  # small | big
    position: str  # a key of POSITIONS
    cx: float  # centre, fractions of the canvas's width and height
    cy: float
    depth: float  # 0 far .. 1 near, for depth maps
    pose: list[tuple[float, float]] = field(default_factory=list)  # 18 OpenPose keypoints (person only), as
    # fractions of a square canvas; on another canvas they keep their offsets from (cx, cy) in shorter-side units


@dataclass
class Scene:
    background: str
    things: list[Thing]


def random_pose(rng: random.Random, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    """A stick figure's 18 keypoints in OpenPose order (nose, neck, r-arm, l-arm, r-leg, l-leg, eyes, ears)."""
    h = 2 * half  # figure height
    neck = (cx, cy - 0.28 * h)
    head = (cx, cy - 0.40 * h)
    hip_y = cy + 0.08 * h
    r_hip, l_hip = (cx - 0.07 * h, hip_y), (cx + 0.07 * h, hip_y)
    r_sh, l_sh = (cx - 0.12 * h, neck[1] + 0.02 * h), (cx + 0.12 * h, neck[1] + 0.02 * h)

    def limb(start, angle, length):
        return (start[0] + length * math.sin(angle), start[1] + length * math.cos(angle))

    # angles measured from "straight down"; arms anywhere from down to raised, legs apart or bent
    ra1 = rng.uniform(0.2, 2.8)
    la1 = rng.uniform(0.2, 2.8)
    r_el = limb(r_sh, -ra1, 0.17 * h)
    r_wr = limb(r_el, -(ra1 + rng.uniform(-0.8, 0.8)), 0.15 * h)
    l_el = limb(l_sh, la1, 0.17 * h)
    l_wr = limb(l_el, la1 + rng.uniform(-0.8, 0.8), 0.15 * h)
    rl, ll = rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.6)
    r_kn = limb(r_hip, -rl, 0.2 * h)
    r_an = limb(r_kn, -(rl + rng.uniform(-0.4, 0.3)), 0.19 * h)
    l_kn = limb(l_hip, ll, 0.2 * h)
    l_an = limb(l_kn, ll + rng.uniform(-0.4, 0.3), 0.19 * h)
    r_eye, l_eye = (head[0] - 0.03 * h, head[1] - 0.02 * h), (head[0] + 0.03 * h, head[1] - 0.02 * h)
    r_ear, l_ear = (head[0] - 0.06 * h, head[1]), (head[0] + 0.06 * h, head[1])
    return [head, neck, r_sh, r_el, r_wr, l_sh, l_el, l_wr, r_hip, r_kn, r_an, l_hip, l_kn, l_an,
            r_eye, l_eye, r_ear, l_ear]


def random_thing(rng: random.Random, kind: str | None = None, position: str | None = None,
                 avoid_color: str | None = None) -> Thing:
    kind = kind or rng.choice(OBJECTS if rng.random() < 0.2 else SHAPES)
    color = rng.choice([c for c in COLORS if c != avoid_color])
    size = rng.choice(list(SIZES))
    position = position or rng.choice(list(POSITIONS))
    px, py = POSITIONS[position]
    cx, cy = px + rng.uniform(-0.05, 0.05), py + rng.uniform(-0.05, 0.05)
    depth = rng.uniform(0.45, 1.0)
    thing = Thing(kind, color, size, position, cx, cy, depth)
    if kind == "person":
        thing.pose = random_pose(rng, cx, cy, SIZES[size] * 1.5)
    return thing


def random_scene(rng: random.Random, two_objects: float = 0.15, person: bool | None = None) -> Scene:
    """A random scene; `person=True` forces one stick figure (for pose training)."""
    background = rng.choice(list(COLORS))
    if person:
        return Scene(background, [random_thing(rng, "person", avoid_color=background)])
    if rng.random() < two_objects:
        p1, p2 = rng.choice([("on the left", "on the right"), ("at the top", "at the bottom")])
        a = random_thing(rng, position=p1, avoid_color=background)
        b = random_thing(rng, position=p2, avoid_color=background)
        return Scene(background, [a, b])
    kind = rng.choice(SHAPES) if person is False else None
    return Scene(background, [random_thing(rng, kind, avoid_color=background)])


def describe(thing: Thing, rng: random.Random | None = None, drop: float = 0.0) -> str:
    words = ["a"]
    if not (rng and rng.random() < drop):
        words.append(thing.size)
    words += [thing.color, thing.kind]
    if not (rng and rng.random() < drop / 2):
        words.append(thing.position)
    return " ".join(words)


def caption(scene: Scene, rng: random.Random | None = None, drop: float = 0.0, extra: str = "") -> str:
    """The grammar's caption; with `rng` and `drop`, size/position/background are sometimes left out."""
    text = " and ".join(describe(t, rng, drop) for t in scene.things)
    if not (rng and rng.random() < drop / 2):
        text += f", {scene.background} background"
    return text + (f", {extra}" if extra else "")


# ---------------------------------------------------------------------------------------------
# rendering

LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]  # OpenPose body-18 limb pairs


def check_size(width: int, height: int) -> None:
    """The canvases the world draws: each side MIN_SIDE..MAX_SIDE pixels, a multiple of MULTIPLE."""
    for name, value in (("width", width), ("height", height)):
        if not (MIN_SIDE <= value <= MAX_SIDE and value % MULTIPLE == 0):
            raise ValueError(f"{name} = {value}: the shapes world draws {MIN_SIDE} to {MAX_SIDE} pixels a side, "
                             f"in multiples of {MULTIPLE}")


class _Canvas:
    """Pixel coordinates of a (supersampled) width x height canvas for fractions of it."""

    def __init__(self, width: int, height: int):
        self.w, self.h, self.m = width, height, min(width, height)

    def centre(self, thing: Thing) -> tuple[float, float]:
        return thing.cx * self.w, thing.cy * self.h

    def keypoint(self, thing: Thing, x: float, y: float) -> tuple[float, float]:
        if self.w == self.h:
            return x * self.w, y * self.h
        return thing.cx * self.w + (x - thing.cx) * self.m, thing.cy * self.h + (y - thing.cy) * self.m


def _shape_polygon(thing: Thing, c: _Canvas) -> list[tuple[float, float]] | None:
    half = SIZES[thing.size] * c.m
    cx, cy = c.centre(thing)
    if thing.kind == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if thing.kind == "triangle":
        return [(cx, cy - half * 1.1), (cx + half * 1.1, cy + half * 0.9), (cx - half * 1.1, cy + half * 0.9)]
    return None


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, fill, c: _Canvas, outline: bool = False) -> None:
    half = SIZES[thing.size] * c.m
    cx, cy = c.centre(thing)
    width = max(2, int(0.035 * c.m))
    if thing.kind == "person":
        pts = [c.keypoint(thing, x, y) for x, y in thing.pose]
        for a, b in LIMBS[:12]:
            draw.line([pts[a], pts[b]], fill=fill, width=int(width * 1.6))
        r = 0.09 * half * 3
        hx, hy = pts[0]
        draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=None if outline else fill, outline=fill,
                     width=width)
        return
    poly = _shape_polygon(thing, c)
    if outline:
        if poly:
            draw.polygon(poly, outline=fill, width=width)
        else:
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], outline=fill, width=width)
    elif poly:
        draw.polygon(poly, fill=fill)
    else:
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)


def pastel(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(0.45 * c + 0.55 * 235) for c in rgb)


def render(scene: Scene, style: str = "plain", width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """RGB uint8 (height, width, 3). style: plain | outline (shapes drawn as outlines) | pastel (soft palette)."""
    tone = pastel if style == "pastel" else (lambda c: c)
    img = Image.new("RGB", (width * _SUPER, height * _SUPER), tone(COLORS[scene.background]))
    draw = ImageDraw.Draw(img)
    for thing in sorted(scene.things, key=lambda t: t.depth):
        _draw_thing(draw, thing, tone(COLORS[thing.color]), _Canvas(width * _SUPER, height * _SUPER),
                    outline=style == "outline")
    return np.asarray(img.resize((width, height), Image.BOX))


def render_mask(thing: Thing, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """Boolean (height, width) mask of one object, for adherence scoring."""
    img = Image.new("L", (width * _SUPER, height * _SUPER), 0)
    _draw_thing(ImageDraw.Draw(img), thing, 255, _Canvas(width * _SUPER, height * _SUPER))
    return np.asarray(img.resize((width, height), Image.BOX)) > 127


def render_depth(scene: Scene, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """Depth map as MiDaS draws it: near bright, background far (black). RGB uint8 (height, width, 3)."""
    img = Image.new("L", (width * _SUPER, height * _SUPER), 0)
    draw = ImageDraw.Draw(img)
    for thing in sorted(scene.things, key=lambda t: t.depth):
        _draw_thing(draw, thing, int(40 + 215 * thing.depth), _Canvas(width * _SUPER, height * _SUPER))
    return np.asarray(img.resize((width, height), Image.BOX).convert("RGB"))


def render_edges(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (white on black), the same detector the app offers as the edge preprocessor."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(image), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


# OpenPose's colours for the 17 limbs and 18 joints (the drawing convention pose ControlNets expect)
_POSE_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
                (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
_POSE_LIMB_ORDER = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
                    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]


def render_pose(scene: Scene, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """OpenPose-style skeleton on black (coloured limbs and joints) for every person in the scene."""
    c = _Canvas(width * 4, height * 4)
    img = Image.new("RGB", (c.w, c.h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for thing in scene.things:
        if thing.kind != "person":
            continue
        pts = [c.keypoint(thing, x, y) for x, y in thing.pose]
        for i, (a, b) in enumerate(_POSE_LIMB_ORDER):
            colour = tuple(int(0.6 * v) for v in _POSE_COLORS[i])
            draw.line([pts[a], pts[b]], fill=colour, width=max(3, c.m // 64))
        r = max(2, c.m // 96)
        for i, (x, y) in enumerate(pts):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_POSE_COLORS[i])
    return np.asarray(img.resize((width, height), Image.BILINEAR))


def keypoints(thing: Thing, width: int = SIZE, height: int = SIZE) -> list[tuple[float, float]]:
    """A person's keypoints in pixels of a width x height canvas (as render and render_pose draw them)."""
    c = _Canvas(width, height)
    return [c.keypoint(thing, x, y) for x, y in thing.pose]


def corpus_words() -> list[str]:
    """Every word the grammar can produce, for the tokenizer."""
    words = {"a", "and", "background", "small", "big", "outline", "pastel", "style"}
    words.update(COLORS)
    words.update(OBJECTS)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)
