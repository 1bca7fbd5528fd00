"""One parser each for what several doors accept, so a value reads the same through the chat, the CLI, the APIs
and MCP: LoRA specs (`name=0.8`, `name:0.8`, lists of them), base64 images, whole numbers, an image and mask
brought to one canvas, and the borders of a zoom-out or pan. Each error names the value as the caller spelled it;
the engine's `check_request` judges ranges that depend on the model. No gradio, no torch.
"""

from __future__ import annotations

import base64
import binascii
import math
import re

from engine.request import ImagePrompt, LoraSpec, UserError

PAN_SIDES = ("left", "right", "up", "down")


def lora_spec(text: str, how: str = "--lora NAME=WEIGHT, e.g. --lora pastel=0.8") -> LoraSpec:
    """'pastel=0.8', 'pastel:0.8' or 'pastel' (weight 1) as a LoraSpec; `how` shows the caller's own spelling in
    the error."""
    text = str(text).strip()
    cut = max(text.rfind("="), text.rfind(":"))
    name, weight = (text[:cut], text[cut + 1:]) if cut > 0 else (text, "1")
    if not name.strip():
        raise UserError(f"LoRA {text!r}: write {how}.")
    try:
        return LoraSpec(name.strip(), float(weight))
    except ValueError:
        raise UserError(f"LoRA {text!r}: the weight must be a number; write {how}.") from None


def image_prompt_spec(text: str, how: str = "--image-prompt IMG[,scale=S], e.g. --image-prompt ref.png,scale=0.8"
                      ) -> ImagePrompt:
    """'ref.png' or 'ref.png,scale=0.8' (a path or an image URL the door resolves) as an ImagePrompt."""
    text = str(text).strip()
    image, _, rest = text.partition(",scale=")
    if not image.strip():
        raise UserError(f"Image prompt {text!r}: write {how}.")
    if not rest:
        return ImagePrompt(image.strip())
    try:
        return ImagePrompt(image.strip(), float(rest))
    except ValueError:
        raise UserError(f"Image prompt {text!r}: the scale must be a number from 0 to 2; write {how}.") from None


def lora_list(text: str | None, how: str = "'outline:0.8, pastel:1'") -> list[LoraSpec]:
    """'outline:0.8, pastel' (comma-separated specs) as LoraSpecs; empty text is none."""
    return [lora_spec(item, how) for item in (text or "").split(",") if item.strip()]


def base64_image(text, what: str) -> bytes:
    """The bytes of a base64 image as API clients send it (raw, or a `data:image/png;base64,` URL)."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{what} must be a base64-encoded image (PNG or JPEG), got {type(text).__name__}.")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise UserError(f"{what} is not valid base64. Send the image file's bytes base64-encoded, optionally as "
                        "'data:image/png;base64,...'.") from None


def whole_number(name: str, value, low: int, high: int) -> int:
    """A field that must be a whole number in [low, high], named as the client spelled it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):  # NaN, Infinity too
        raise UserError(f"{name} must be a whole number, got {shown(value)}.")
    if not low <= value <= high:
        raise UserError(f"{name} = {shown(value)} is out of range; use {low} to {high}.")
    return int(value)


def shown(value, limit: int = 40) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters (a client's 5000 digits are not
    echoed back)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300 digits
        return f"a number of {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


SURROGATES = re.compile("[\ud800-\udfff]")
JSON_DEPTH = 32  # deeper than any field a client sends (ControlNet's image in a unit in a list: 5)


def plain_json(value, depth: int = JSON_DEPTH):
    """A JSON body as every encoder can write it back (an API's echo of it, a PNG's text): lone surrogates (half
    an emoji, which UTF-8 can't hold) become U+FFFD, in keys too, and lists or objects nested past `depth` become
    None (orjson refuses 255 levels)."""
    if isinstance(value, str):
        return value if value.isascii() else SURROGATES.sub("\ufffd", value)
    if isinstance(value, (list, dict)) and depth <= 0:
        return None
    if isinstance(value, list):
        return [plain_json(v, depth - 1) for v in value]
    if isinstance(value, dict):
        return {plain_json(k): plain_json(v, depth - 1) for k, v in value.items()}
    return value


def form_value(value, default_mark):
    """A form's number (the page, gradio's /generate, MCP): None (the model's default) when it is unset or the
    form's mark for "default" (steps 0, guidance -1, seed -1); a whole float as an int. Any other value goes on
    as it is, for check_request to judge: a seed of -7 is a mistake to name, not a random seed."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == default_mark):
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


def fit_canvas(init, mask, width: int | None, height: int | None, multiple: int):
    """An image and its mask brought to one size the model can draw: (width, height) when given, else the image's
    own size rounded down to `multiple`. Clients send a mask at the image's size and the target size separately,
    as A1111's UI does; the engine wants them equal."""
    from PIL import Image

    from engine.images.loading import fit_to, load_image, open_image

    init = load_image(init, "The init image")
    mask = open_image(mask, "The mask")
    if mask.size != init.size:
        raise UserError(f"The mask is {mask.width}x{mask.height} but the image is {init.width}x{init.height}; "
                        "they must be the same size (white = repaint, black = keep).")
    mask = load_image(mask, "The mask", background="black").convert("L")
    w = width or max(multiple, init.width // multiple * multiple)
    h = height or max(multiple, init.height // multiple * multiple)
    return (fit_to(init, w, h), fit_to(mask, w, h, resample=Image.Resampling.NEAREST), w, h)


def zoom_borders(size: tuple[int, int], factor: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels that make an image of `size` `factor` times larger on every side."""
    if not 1.0 < factor <= 4.0:
        raise UserError(f"Zoom out {factor:g}: use a factor above 1 and at most 4, e.g. 1.5.")
    w, h = size
    dx, dy = round(w * (factor - 1) / 2 / 8) * 8, round(h * (factor - 1) / 2 / 8) * 8
    return (dx, dy, dx, dy)


def pan_borders(size: tuple[int, int], side: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels that extend an image of `size` by half of it on one side."""
    if side not in PAN_SIDES:
        raise UserError(f"Pan {side!r}: use one of {', '.join(PAN_SIDES)}.")
    w, h = size
    half_w, half_h = round(w / 2 / 8) * 8, round(h / 2 / 8) * 8
    return {"left": (half_w, 0, 0, 0), "right": (0, 0, half_w, 0), "up": (0, half_h, 0, 0),
            "down": (0, 0, 0, half_h)}[side]
