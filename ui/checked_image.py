"""`checked_image` and `checked_editor`: a `gr.Image` and a `gr.ImageEditor` that check every upload's size from
its header before anything decodes it.

Plain `gr.Image` opens every upload in its preprocess and converts it to `image_mode` (RGB by default), and
decodes pasted `data:` URLs outright: a 20 KB palette PNG of 13000x13000 costs seconds and ~800 MB there, before
any handler could refuse it. This one hands the handler a file path after `engine.images.loading.open_image`
(header only) has accepted it; the engine decodes it later, once, with its own checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

import gradio as gr

from engine.images.loading import MAX_BYTES, open_image
from engine.request import UserError


def checked_image(**kwargs) -> gr.Image:
    """gr.Image(type="filepath", image_mode=None) whose uploads are checked from the header first.

    (The check replaces this instance's preprocess: a gr.Image subclass would make gradio write a .pyi beside
    this file at import.)"""
    image = gr.Image(**kwargs, type="filepath", image_mode=None)
    image.preprocess = lambda payload: check_upload(image, payload)
    return image


MAX_LAYERS = 2  # the page's editor has one paint layer (layers=False); a client sending 8 is not the page


def checked_editor(**kwargs) -> gr.ImageEditor:
    """gr.ImageEditor whose value (background, layers, composite) is checked from each image's header before
    gradio's preprocess decodes and converts all of them: 8 layers of a 79 KB 9000x9000 palette PNG took a server
    from 1.0 to 5.5 GB there. gr.Error with the engine's words when one is too large or there are too many."""
    editor = gr.ImageEditor(**kwargs)
    original = editor.preprocess

    def preprocess(payload):
        if payload is not None:
            try:
                check_editor_value(editor, payload)
            except UserError as e:
                raise gr.Error(str(e)) from None
        return original(payload)

    editor.preprocess = preprocess
    return editor


def check_editor_value(editor: gr.ImageEditor, payload) -> None:
    """UserError unless every image in the editor's value (files or, when the page sent them as blobs, the bytes
    gradio keeps for it) passes `open_image`'s header check, with at most MAX_LAYERS layers."""
    if payload.id is not None:
        cached = editor.blob_storage.get(payload.id)
        parts = (cached.background, cached.layers, cached.composite) if cached else (None, [], None)
    else:
        parts = (payload.background, payload.layers, payload.composite)
    background, layers, composite = parts
    layers = list(layers or [])
    if len(layers) > MAX_LAYERS:
        raise UserError(f"The edit sent {len(layers)} layers; the editor has at most {MAX_LAYERS}. Reload the "
                        "page and paint again.")
    for name, part in [("the edited image", background), ("the painted mask", composite),
                       *[(f"layer {i + 1}", layer) for i, layer in enumerate(layers)]]:
        if part is not None:
            open_image(part if isinstance(part, (bytes, bytearray)) else part.path, name)


def check_upload(image: gr.Image, payload) -> str | None:
    """The upload's file path once its header passed `open_image`; gr.Error with the engine's words if not."""
    if payload is None:
        return None
    label = image.label or "image"
    try:
        if payload.url and payload.url.startswith("data:"):
            return save_data_url(payload.url, label, Path(image.GRADIO_CACHE) / "pasted")
        if payload.path is None:
            raise UserError(f"{label}: the upload has no file; upload it again.")
        open_image(payload.path, label)
        return str(payload.path)
    except UserError as e:
        raise gr.Error(str(e)) from None


def save_data_url(url: str, label: str, folder: Path) -> str:
    """A pasted image as a file in `folder`, its header checked; its pixels are never decoded here."""
    header, _, encoded = url.partition(",")
    if len(encoded) > MAX_BYTES * 4 // 3 + 4:
        raise UserError(f"{label} is larger than the {MAX_BYTES // 2**20} MB limit; paste a smaller image.")
    try:
        data = base64.b64decode(encoded, validate=False) if ";base64" in header else encoded.encode()
    except (binascii.Error, ValueError):
        raise UserError(f"{label}: the pasted data is not a valid image; save it as a file and upload that.") from None
    opened = open_image(data, label)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:20]}.{(opened.format or 'png').lower()}"
    path.write_bytes(data)
    return str(path)
