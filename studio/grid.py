"""X/Y/Z plots (AUTOMATIC1111's script): one request varied along up to three axes, drawn as one labelled grid.

`axes("steps=4,10,20 cfg=1,2,4")` reads the axes (a name and its values); `cells(request, axes)` gives the
requests, x fastest; `draw(images, axes)` lays their images out with the values as labels: x across, y down, one
block per z value. Pure: no torch, no gradio.
"""

from __future__ import annotations

import dataclasses
import itertools

from engine.request import Request, UserError

MAX_CELLS = 36
# axis name -> (Request field, how a value is read)
AXES = {"steps": ("steps", int), "cfg": ("guidance", float), "seed": ("seed", int), "scheduler": ("scheduler", str),
        "model": ("model", str), "style": ("styles", lambda v: [v]), "negative": ("negative", str)}
ALIASES = {"guidance": "cfg", "sampler": "scheduler", "styles": "style"}


@dataclasses.dataclass(frozen=True)
class Axis:
    name: str
    values: tuple


def axes(text: str) -> list[Axis]:
    """`steps=4,10,20 cfg=1,2,4` as axes; a UserError naming what is wrong and how to write it."""
    how = "write --xyz AXIS=V1,V2,... (up to three), e.g. --xyz steps=4,10,20 cfg=1,2,4"
    out = []
    for part in text.split():
        name, _, values = part.partition("=")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in AXES or not values:
            raise UserError(f"--xyz {part!r}: {how}. Axes: {', '.join(AXES)}.")
        field, read = AXES[name]
        try:
            parsed = tuple(read(v.strip()) for v in values.split(",") if v.strip())
        except ValueError:
            raise UserError(f"--xyz {part!r}: the {name} values must be {read.__name__} numbers.") from None
        if not parsed:
            raise UserError(f"--xyz {part!r}: {how}.")
        out.append(Axis(name, parsed))
    if not 1 <= len(out) <= 3:
        raise UserError(f"--xyz needs one to three axes: {how}.")
    if len({a.name for a in out}) < len(out):
        raise UserError("--xyz: each axis once.")
    total = 1
    for a in out:
        total *= len(a.values)
    if total > MAX_CELLS:
        raise UserError(f"--xyz asks for {total} images; at most {MAX_CELLS} in one grid. Use fewer values.")
    return out


def cells(request: Request, grid: list[Axis]) -> list[Request]:
    """One request per cell, x varying fastest, then y, then z; each keeps the request's seed unless seed varies."""
    out = []
    for combo in itertools.product(*(a.values for a in reversed(grid))):
        req = dataclasses.replace(request, count=1)
        for axis, value in zip(reversed(grid), combo):
            field, _ = AXES[axis.name]
            setattr(req, field, value)
        out.append(req)
    return out


def label(axis: Axis, value) -> str:
    return f"{axis.name}: {value[0] if isinstance(value, list) else value}"


def draw(images: list, grid: list[Axis], min_cell: int = 128):
    """The cells' images in a labelled grid (x across, y down, a block per z), as one RGB image."""
    from PIL import Image, ImageDraw

    nx = len(grid[0].values)
    ny = len(grid[1].values) if len(grid) > 1 else 1
    nz = len(grid[2].values) if len(grid) > 2 else 1
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    zoom = max(1, -(-min_cell // min(w, h)))  # small images (the built-in model's 64 px) drawn larger
    cw, ch = w * zoom, h * zoom
    left = 110 if len(grid) > 1 else 8
    top, title = 22, 22 if nz > 1 else 0
    block = title + top + ny * ch
    sheet = Image.new("RGB", (left + nx * cw + 8, nz * block + 8), "white")
    pen = ImageDraw.Draw(sheet)
    for k, image in enumerate(images):
        x, y, z = k % nx, (k // nx) % ny, k // (nx * ny)
        origin = (left + x * cw, z * block + title + top + y * ch)
        sheet.paste(image.convert("RGB").resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST),
                    origin)
    for z in range(nz):
        base = z * block
        if nz > 1:
            pen.text((8, base + 4), label(grid[2], grid[2].values[z]), fill="black")
        for x, value in enumerate(grid[0].values):
            pen.text((left + x * cw + 4, base + title + 4), label(grid[0], value), fill="black")
        if len(grid) > 1:
            for y, value in enumerate(grid[1].values):
                pen.text((6, base + title + top + y * ch + ch // 2 - 6), label(grid[1], value), fill="black")
    return sheet
