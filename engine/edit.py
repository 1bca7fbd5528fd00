"""Edits of an existing image: inpaint (a mask), outpaint (a larger canvas), hires upscale, instruction edits.

Each is a diffusers pipeline; this file only prepares their inputs and finishes their outputs:
- inpaint: the mask (white = repaint) is feathered with the pipeline's own `mask_processor.blur`; "masked area
  only" is diffusers' `padding_mask_crop` (crop around the mask, repaint at the model's size, paste back); the
  result is laid over the original with `image_processor.apply_overlay`, so pixels outside the mask are the
  original's, exactly.
- outpaint: the canvas grows by the asked borders, the new border is filled from the image's edge pixels and
  masked for repainting (plus an overlap of a few pixels into the old image so the seam is repainted too).
- hires upscale: the image is resized (Lanczos) to the larger size, then refined by image-to-image at
  `hires_strength` (A1111's "hires fix"); strength 0 is the resize alone.
- instruction edit: an editing model (Flux Kontext, Qwen-Image-Edit, FLUX.2) takes the image, or several, and the
  instruction as they are.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from .request import Request, UserError

log = logging.getLogger(__name__)

OUTPAINT_OVERLAP = 8  # pixels of the old image repainted along a new border: no visible seam


def edit_kind(req: Request) -> str | None:
    """Which edit `req` asks for: inpaint | outpaint | upscale | None (plain image-to-image or text-to-image)."""
    if req.outpaint:
        return "outpaint"
    if req.mask is not None:
        return "inpaint"
    if req.upscale:
        return "upscale"
    return None


def size_from_init(req: Request, init_size: tuple[int, int], multiple: int, max_size: int) -> tuple[int, int]:
    """The size an edit of an image of `init_size` works at unless one is given: the image's own, grown by the
    outpaint borders, in multiples of `multiple` (an upscale then multiplies it: `upscaled_size`)."""
    w, h = init_size
    if req.outpaint:
        left, top, right, bottom = req.outpaint
        w, h = w + left + right, h + top + bottom
    fit = lambda v: max(multiple, min(max_size, v // multiple * multiple))  # noqa: E731
    return fit(w), fit(h)


def upscaled_size(req: Request, multiple: int, max_size: int) -> tuple[int, int]:
    w, h = (round(v * req.upscale / multiple) * multiple for v in (req.width, req.height))
    if max(w, h) > max_size:
        most = max_size / max(req.width, req.height)
        raise UserError(f"{req.width}x{req.height} upscaled {req.upscale:g}x is {w}x{h}, more than this model's "
                        f"{max_size} pixels. Use a smaller factor (at most {most:.2g}).")
    return w, h


@dataclass
class EditPlan:
    """How one inpaint or outpaint runs: the pipeline, its extra arguments, and what to do with its images."""

    pipe: object
    kwargs: dict
    finish: Callable[[list], list]
    infotext: dict = field(default_factory=dict)


def inpaint_plan(loaded, req: Request, init: Image.Image) -> EditPlan:
    """The inpaint pipeline and its inputs for an inpaint (req.mask) or outpaint (req.outpaint) of `init`."""
    pipe = loaded.variant("inpaint")
    if req.outpaint:
        image, mask = outpaint_canvas(init, req.outpaint)
        strength = 1.0  # the new border holds only stretched edge pixels: paint it from noise
        info = {"Outpaint": ", ".join(f"{k} {v}" for k, v in zip(("left", "top", "right", "bottom"), req.outpaint)
                                      if v)}
    else:
        image, mask = init, load_mask(req.mask, init.size)
        strength = req.strength
        info = {"Mask blur": req.mask_blur, "Mask hash": digest(mask)}
        if req.inpaint_padding is not None:
            info["Inpaint area"] = f"Only masked, padding {req.inpaint_padding}"
    size = (req.width, req.height)
    if image.size != size:
        image, mask = image.resize(size, Image.Resampling.LANCZOS), mask.resize(size, Image.Resampling.NEAREST)
    soft = feathered(pipe, mask, req.mask_blur)
    kwargs = dict(image=image, mask_image=soft, strength=strength)
    if req.inpaint_padding is not None and "padding_mask_crop" in parameters(pipe):
        kwargs["padding_mask_crop"] = req.inpaint_padding
        kwargs["output_type"] = "pil"  # diffusers crops and pastes back in PIL only
    info["Init image hash"] = digest(init)
    info["Denoising strength"] = strength
    return EditPlan(pipe, kwargs, lambda images: [paste_back(pipe, soft, image, im) for im in images], info)


def editor_inputs(pipe, req: Request, init: Image.Image) -> dict:
    """An editing model's inputs: the image (and the request's references after it, as image 2, 3, ...) as they
    are, at the size asked for (Kontext would otherwise scale to 1024x1024's area and its own trained sizes)."""
    from .images.loading import load_image

    images = [init] + [load_image(ref, f"Image {i}") for i, ref in enumerate(req.references, 2)]
    # FLUX.2 reads no image under 64 pixels a side: a smaller one is enlarged to that, its aspect kept
    images = [im if min(im.size) >= 64 else im.resize((max(64, round(im.width * 64 / min(im.size))),
                                                       max(64, round(im.height * 64 / min(im.size)))),
                                                      Image.Resampling.LANCZOS) for im in images]
    takes = parameters(pipe)
    kwargs = {"image": images if len(images) > 1 else images[0]}
    if "max_area" in takes:
        kwargs.update(_auto_resize=False, max_area=req.width * req.height)
    return kwargs


def digest(image: Image.Image) -> str:
    """A short hash of an image's pixels: the edit chain in the metadata names its parent and mask by it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:10]


def parameters(pipe) -> set[str]:
    """The arguments a pipeline's __call__ takes (they differ between families)."""
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def load_mask(source, size: tuple[int, int]) -> Image.Image:
    """The mask as an L image of `size` (white = repaint); a clear error when it is empty or of another size."""
    from .images.loading import open_image

    mask = open_image(source, "The mask")
    if mask.size != size:
        raise UserError(f"The mask is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; they must be "
                        "the same size. Paint the mask on the image itself (white = repaint, black = keep).")
    mask = mask.convert("L")
    if mask.getextrema()[1] < 128:
        raise UserError("The mask is empty (nothing white): paint the part to repaint in white, the rest black.")
    return mask


def outpaint_canvas(image: Image.Image, borders: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """The image on a larger canvas (new borders filled from its edge pixels) and the mask of what to paint."""
    left, top, right, bottom = borders
    pixels = np.asarray(image.convert("RGB"))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, np.uint8)
    h, w = pixels.shape[:2]
    o = OUTPAINT_OVERLAP
    y0, x0 = top + (o if top else 0), left + (o if left else 0)
    y1, x1 = top + h - (o if bottom else 0), left + w - (o if right else 0)
    mask[y0:y1, x0:x1] = 0
    return Image.fromarray(canvas), Image.fromarray(mask, "L")


def hires_input(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image resized for the hires pass (Lanczos; an upscaler model plugs in here)."""
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def paste_back(pipe, mask: Image.Image, original: Image.Image, result: Image.Image) -> Image.Image:
    """`result` where the mask is white, `original` where it is black (diffusers' own overlay). A pipeline that
    paints at its own size (Qwen-Image-Edit's inpaint: 1024x1024's area) is brought back to the image's first."""
    if result.size != original.size:
        result = result.resize(original.size, Image.Resampling.LANCZOS)
    return pipe.image_processor.apply_overlay(mask, original.convert("RGB"), result)


def feathered(pipe, mask: Image.Image, blur: int) -> Image.Image:
    """The mask feathered by `blur` pixels (diffusers' Gaussian blur), its faint tail cut at 2 x blur pixels past
    the edge: everything farther from the mask is the original image, exactly."""
    if not blur:
        return mask
    from PIL import ImageChops, ImageFilter

    reach = mask.filter(ImageFilter.MaxFilter(4 * blur + 1))
    return ImageChops.darker(pipe.mask_processor.blur(mask, blur_factor=blur), reach)


def unmasked_change(original: Image.Image, result: Image.Image, mask: Image.Image, margin: int = 0) -> int:
    """The largest pixel change outside the mask, or farther than `margin` pixels from it (a feathered mask, blur
    b, reaches about 2b pixels past its edge); 0 after a correct paste-back. For tests and benchmarks."""
    from PIL import ImageFilter

    mask = mask.convert("L")
    if margin:
        mask = mask.filter(ImageFilter.MaxFilter(2 * margin + 1))
    keep = np.asarray(mask) == 0
    diff = np.abs(np.asarray(original.convert("RGB"), np.int16) - np.asarray(result.convert("RGB"), np.int16))
    return int(diff[keep].max()) if keep.any() else 0
