"""Safe image input: every picture a user hands us (init image, control image, dropped PNG) comes in here.

`load_image` turns a path, bytes, file object, PIL image or numpy array into a plain RGB image, or raises a
`UserError` that names the image and says what to do. Sizes are checked from the file header before any
pixels are decoded, so a decompression bomb costs nothing. `fit_to` brings an image to the generation size.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.request import UserError

log = logging.getLogger(__name__)

MAX_PIXELS = 4096 * 4096
MAX_BYTES = 20 * 2**20  # the largest image file any door takes: the page, the APIs, MCP, the CLI (one limit)
FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
FIT_MODES = ("crop", "resize", "pad")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)


def _name(what: str) -> str:
    return what[:1].upper() + what[1:]


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def open_image(source: Any, what: str = "image", max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_BYTES) -> Image.Image:
    """Open `source` and check it from its header only; pixels are not decoded yet.

    A PIL image is checked and returned as it is (not copied); anything else is read into memory
    (at most `max_bytes`) so no file handle stays open.
    """
    what = _name(what)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, what, max_pixels)
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, what, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        data = _read_path(os.fspath(source), what, max_bytes)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise TypeError(f"{what}: the file object must be opened in binary mode ('rb').")
    else:
        raise TypeError(f"{what}: cannot read an image from a {type(source).__name__}; "
                        "pass a path, bytes, a binary file, a PIL image or a numpy array.")
    if len(data) > max_bytes:
        raise UserError(f"{what} is larger than the {_mb(max_bytes)} limit. "
                        "Save it as a smaller JPEG or PNG (e.g. 2048 pixels on the long side) and try again.")
    return _open_bytes(data, what, max_pixels)


def load_image(source: Any, what: str = "image", max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               background: Any = "white") -> Image.Image:
    """Return `source` as a decoded RGB image, upright (EXIF orientation applied).

    Transparent parts are laid over `background` (a colour name or RGB tuple): white suits photos and
    init images, black suits control maps. Animated GIF/WebP/PNG and multi-page TIFF: the first frame
    is used (frames are never counted, so a file of thousands of frames costs no more than one).
    16-bit and float images are scaled to 8 bits; CMYK, palette and other modes are converted to RGB.
    """
    image = open_image(source, what, max_pixels, max_bytes)
    what = _name(what)
    try:
        image.load()
        if getattr(image, "is_animated", False):
            log.info("%s has several frames; using the first one.", what)
        image = ImageOps.exif_transpose(image)  # returns a new image; the caller's stays untouched
    except _DECODE_ERRORS as error:
        log.info("%s failed to decode: %s", what, error)
        raise UserError(f"{what} is damaged or incomplete (the file ends early or its data is corrupt). "
                        "Save or download it again and re-upload it.") from None
    return _to_rgb(image, what, background)


def fit_to(image: Image.Image, width: int, height: int, mode: str = "crop", background: Any = "black",
           resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Return `image` at exactly `width` x `height`.

    - "crop" (default): scale until the image covers the target, then cut the overflow equally from both
      sides (centre crop). Nothing is stretched; the edges of a differently shaped image are lost.
    - "resize": stretch to the target; everything is kept but shapes are distorted if the aspect differs.
    - "pad": scale until the whole image fits inside, centred, and fill the bars with `background`.
    Returns the same object when it already has that size.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"fit_to mode {mode!r} is unknown; use one of {', '.join(FIT_MODES)}.")
    if width < 1 or height < 1:
        raise ValueError(f"fit_to needs a positive size, got {width}x{height}.")
    size = (int(width), int(height))
    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, method=resample, centering=(0.5, 0.5))
    if mode == "resize":
        return image.resize(size, resample)
    return ImageOps.pad(image, size, method=resample, color=background, centering=(0.5, 0.5))


def _read_path(path: str, what: str, max_bytes: int) -> bytes:
    if not os.path.exists(path):
        raise UserError(f"{what} was not found at {path!r}. Check the path, or upload the file again.")
    if os.path.isdir(path):
        raise UserError(f"{what} path {path!r} is a folder, not an image file. Pick a {FORMATS} file.")
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{what} is an empty file (0 bytes); the upload or download did not finish. "
                        "Save it again and re-upload it.")
    if size > max_bytes:
        raise UserError(f"{what} is {_mb(size)}, over the {_mb(max_bytes)} limit. "
                        "Save it as a smaller JPEG or PNG (e.g. 2048 pixels on the long side) and try again.")
    with open(path, "rb") as file:
        return file.read()


def _open_bytes(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise UserError(f"{what} is an empty file (0 bytes); the upload or download did not finish. "
                        "Save it again and re-upload it.")
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<"):
        if b"<svg" in head:
            raise UserError(f"{what} is an SVG drawing; SVG isn't supported. "
                            "Export it as PNG from your drawing program and upload that.")
        if b"<html" in head or b"<!doctype html" in head:
            raise UserError(f"{what} is a web page (HTML) saved with an image name, not an image. "
                            "Open it in a browser, right-click the picture and save the image itself.")
        raise UserError(f"{what} is a text/XML file, not an image. Upload a {FORMATS} file.")
    if head.startswith(b"%pdf"):
        raise UserError(f"{what} is a PDF, which isn't supported. Export the page as PNG and upload that.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise UserError(_too_many_pixels(what, None, max_pixels)) from None
    except UnidentifiedImageError:
        raise UserError(f"{what} is not an image this app can read. Upload a {FORMATS} file.") from None
    except _DECODE_ERRORS as error:
        log.info("%s failed to open: %s", what, error)
        raise UserError(f"{what} is damaged or incomplete (its header could not be read). "
                        "Save or download it again and re-upload it.") from None
    _check_pixels(image.size, what, max_pixels)
    return image


def _too_many_pixels(what: str, size: tuple[int, int] | None, max_pixels: int) -> str:
    claim = f"{size[0]}x{size[1]} pixels" if size else "far more pixels than can be opened safely"
    return (f"{what} is {claim}; the limit is {max_pixels / 1e6:.1f} megapixels "
            f"(e.g. {int(max_pixels ** 0.5)}x{int(max_pixels ** 0.5)}). "
            "Scale it down (2048 pixels on the long side is plenty) and try again.")


def _check_pixels(size: tuple[int, int], what: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UserError(f"{what} has no pixels ({width}x{height}). Upload a real picture.")
    if width * height > max_pixels:
        raise UserError(_too_many_pixels(what, size, max_pixels))


def _from_array(array: np.ndarray, what: str, max_pixels: int) -> Image.Image:
    a = array
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise UserError(f"{what} is an array of shape {a.shape}; expected height x width (grey), "
                        "height x width x 3 (RGB) or height x width x 4 (RGBA).")
    _check_pixels((a.shape[1], a.shape[0]), what, max_pixels)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise UserError(f"{what} contains NaN or infinite values; it cannot be shown as a picture.")
        scale = 255.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else 1.0  # 0..1 floats are common
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise UserError(f"{what} has values from {a.min()} to {a.max()}; pixel values must be 0 to 255.")
        a = a.astype(np.uint8)
    else:
        raise UserError(f"{what} is an array of {a.dtype}; use uint8 (0-255) or float (0-1) values.")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_rgb(image: Image.Image, what: str, background: Any) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_grey_to_uint8(np.asarray(image), image.mode))
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, background)
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise UserError(f"{what} uses the colour mode {image.mode}, which cannot be converted to RGB. "
                        "Save it as an ordinary RGB PNG or JPEG.") from None


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit grey is divided down; 32-bit int is read as 16-bit if it goes above 255; float is stretched."""
    if mode == "F":
        a = a.astype(np.float64)
        low, high = float(a.min()), float(a.max())
        if low >= 0.0 and high <= 1.0:
            return np.rint(a * 255).astype(np.uint8)
        return np.rint((a - low) / ((high - low) or 1.0) * 255).astype(np.uint8)
    if mode.startswith("I;16") or a.max() > 255:
        return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)
