"""Generation settings in PNG text chunks, out and back in.

Every PNG we save carries two text chunks:
- `parameters`: the AUTOMATIC1111 "infotext" that A1111, SD.Next, Fooocus, Civitai and most image viewers read
  (written and parsed by engine/images/infotext.py);
- `studio`: our own JSON (`{"version": 1, "request": ..., "model": ...}`), which restores every setting exactly.
Reading prefers `studio` and falls back to `parameters`, so PNGs from those other tools can be dropped in too.
Also A1111's short file hash (`model_hash`) for the `Model hash` and `Lora hashes` keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.images.infotext import describe_source, infotext, parse_infotext, request_from_infotext
from engine.images.loading import open_image
from engine.request import Request, UserError, check_saved

log = logging.getLogger(__name__)

STUDIO_FORMAT = 1
PARAMETERS_KEY = "parameters"
STUDIO_KEY = "studio"
NO_SETTINGS = ("This PNG has no generation settings (no 'parameters' or 'studio' text). "
               "Drop a PNG made by this app, AUTOMATIC1111, SD.Next or Fooocus.")


# ---------------------------------------------------------------------------------------------- writing


def studio_json(request: Request, seed: int, model_name: str) -> dict:
    """Our own chunk: the whole request with the seed actually used (images are not stored)."""
    plain = dataclasses.replace(request, seed=seed, init_image=None,
                                controls=[dataclasses.replace(u, image=None) for u in request.controls])
    return {"version": STUDIO_FORMAT, "request": plain.to_json(), "model": model_name}


def png_info(request: Request, seed: int, model_name: str, model_hash: str | None = None,
             extra: dict | None = None) -> PngInfo:
    """The two text chunks, ready for `Image.save(..., pnginfo=...)`."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, infotext(request, seed, model_name, model_hash, extra))
    info.add_text(STUDIO_KEY, json.dumps(studio_json(request, seed, model_name)))
    return info


def save_png(image: Image.Image, path_or_file: Any, request: Request, seed: int, model_name: str,
             model_hash: str | None = None, extra: dict | None = None) -> None:
    """Save `image` as PNG with its `parameters` and `studio` text chunks."""
    image.save(path_or_file, format="PNG", pnginfo=png_info(request, seed, model_name, model_hash, extra))


def png_bytes(image: Image.Image, request: Request, seed: int, model_name: str, model_hash: str | None = None,
              extra: dict | None = None) -> bytes:
    """Same as `save_png`, into bytes."""
    buffer = io.BytesIO()
    save_png(image, buffer, request, seed, model_name, model_hash, extra)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- reading


def read_png_settings(path_or_file: Any) -> tuple[Request, str]:
    """The request stored in a PNG (or A1111-style JPEG/WebP) and where it came from, e.g. "this app's own settings".

    Our `studio` chunk wins; `parameters` is the fallback. Raises `UserError` for files without settings
    and for damaged settings, never anything else for bad input.
    """
    image = open_image(path_or_file, what="The dropped image")
    try:
        texts = _settings_texts(image)
    finally:
        if image is not path_or_file:
            image.close()
    studio_error = None
    if STUDIO_KEY in texts:
        try:
            request, model = _request_from_studio(texts[STUDIO_KEY])
            return request, f"this app's own settings (model {model})" if model else "this app's own settings"
        except UserError as error:
            if PARAMETERS_KEY not in texts:
                raise
            studio_error = error
            log.warning("Ignoring a damaged 'studio' chunk, using 'parameters' instead: %s", error)
    if PARAMETERS_KEY in texts:
        params = parse_infotext(texts[PARAMETERS_KEY])
        request = check_saved(request_from_infotext(params))
        return request, describe_source(params) + (" (our own settings were damaged)" if studio_error else "")
    raise UserError(NO_SETTINGS)


# ---------------------------------------------------------------------------------------------- hashing

_HASHES: dict[tuple[str, int, int], str] = {}


def model_hash(path: str | os.PathLike, length: int = 10) -> str:
    """A1111's short hash of a single file: the first `length` hex digits of its sha256 (10 for checkpoints,
    12 for LoRAs in `Lora hashes`). Cached by (path, mtime, size); folders have no such hash: pass None."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    digest = _HASHES.get(key)
    if digest is None:
        started = time.perf_counter()
        sha = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(2**20):
                sha.update(chunk)
        digest = _HASHES[key] = sha.hexdigest()
        log.info("Hashed %s (%.0f MB) in %.1f s", path.name, stat.st_size / 2**20, time.perf_counter() - started)
    return digest[:length]


# ---------------------------------------------------------------------------------------------- helpers


def _request_from_studio(text: str) -> tuple[Request, str]:
    damaged = "This PNG's 'studio' settings are damaged ({}). Drop the original file, or type the settings."
    try:
        data = json.loads(text)
    except ValueError:
        raise UserError(damaged.format("not valid JSON")) from None
    except RecursionError:  # the decoder recurses per [ or {: '[' * 100000 is no settings, not a crash
        raise UserError(damaged.format("its JSON is nested too deeply")) from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise UserError(damaged.format("no request in it"))
    version = data.get("version")
    if version != STUDIO_FORMAT:
        if isinstance(version, int) and version > STUDIO_FORMAT:
            raise UserError(f"This PNG was saved by a newer version of the app (settings format {version}); "
                            "update the app to read it.")
        raise UserError(damaged.format(f"unknown format {version!r}"))
    try:
        request = Request.from_json(data["request"])
    except (TypeError, ValueError, AttributeError) as error:
        raise UserError(damaged.format(str(error)[:200])) from None
    request = check_saved(request)  # numbers and texts checked like typed-in ones
    model = data.get("model")
    return request, model if isinstance(model, str) else ""


def _settings_texts(image: Image.Image) -> dict[str, str]:
    """The `studio` / `parameters` texts of a PNG (chunks before or after the pixels) or JPEG/WebP EXIF."""
    found = _pick_texts(image.info)
    if not found and image.format == "PNG":
        try:
            found = _pick_texts(image.text)  # loads the image to reach chunks written after the pixel data
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            log.info("Reading trailing PNG chunks failed: %s", error)
            raise UserError("The dropped image is damaged or incomplete, so its settings can't be read. "
                            "Drop the original file again.") from None
    if not found and image.format in ("JPEG", "WEBP"):
        exif = image.getexif()
        raw = exif.get_ifd(0x8769).get(0x9286) or exif.get(0x9286)  # UserComment, in the Exif IFD or IFD0
        text = _decode_user_comment(raw)
        if text:
            found[PARAMETERS_KEY] = text
    return found


def _pick_texts(chunks: dict) -> dict[str, str]:
    found = {}
    for key in (STUDIO_KEY, PARAMETERS_KEY):
        value = chunks.get(key)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"This PNG's '{key}' text is not readable text (bad encoding). "
                                "Drop the original file, or type the settings.") from None
        if isinstance(value, str) and value.strip():
            found[key] = _repair_utf8(value)
    return found


def _repair_utf8(text: str) -> str:
    """tEXt is Latin-1 by the PNG spec, but some tools write UTF-8 bytes into it; undo that mojibake."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _decode_user_comment(raw: Any) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text (A1111 writes UTF-16)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        candidates = []
        for encoding in ("utf-16-be", "utf-16-le"):
            try:
                candidates.append(body.decode(encoding))
            except UnicodeDecodeError:
                pass
        # The wrong byte order turns ASCII into CJK-looking characters: keep the most ASCII-like reading.
        return max(candidates, key=lambda t: sum(c < "\x80" for c in t), default=None)
    try:
        return (body if prefix in (b"ASCII\0\0\0", b"\0" * 8) else raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
