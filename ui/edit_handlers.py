"""The chat's edits of the selected image: inpaint what was painted on it, zoom out, pan, upscale. Plain handlers
(no gradio, no torch): each builds the engine Request for the edit and runs it like any chat turn, so the reply
shows the pipeline and strength and the metadata records the edit (engine/edit.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from PIL import Image

from studio.parse import pan_borders, zoom_borders
from studio.service import Studio
from ui.handlers import nothing_yet, too_long
from ui.runner import Update, run
from ui.state import MAX_MESSAGE, Session, Settings

ZOOM = 1.5
UPSCALE = 2.0
PAN = {"left": "←", "right": "→", "up": "↑", "down": "↓"}


def mask_from_editor(value, size: tuple[int, int]) -> Image.Image | None:
    """White where the user painted on the image editor (any layer's stroke), at the image's size; None if nothing."""
    layers = (value or {}).get("layers") if isinstance(value, dict) else None
    painted = None
    for layer in layers or []:
        array = np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)
        if array.ndim == 3 and array.shape[2] == 4:
            strokes = array[:, :, 3] > 0
            painted = strokes if painted is None else painted | strokes
    if painted is None or not painted.any():
        return None
    mask = Image.fromarray(painted.astype(np.uint8) * 255, "L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


def _edit(studio: Studio, session: Session, settings: Settings, prompt: str, what: str, **edit) -> Iterator[Update]:
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "There is no image to edit yet: send a prompt first, then edit its image.")
    prompt = (prompt or "").strip() or shot.request.prompt
    if len(prompt) > MAX_MESSAGE:
        return iter([too_long(session, prompt)])
    # the rule, said where it applies: an edit keeps the image's own model, LoRAs and sampling, not the panel's
    session.say("user", f"{what} #{shot.number}" + (f": {prompt}" if prompt != shot.request.prompt else "")
                + f" (with #{shot.number}'s own model, LoRAs and steps)")
    # each edit is one edit of the image as it is now: the source's own edit (its mask, borders, upscale) is done
    fresh = dict(mask=None, outpaint=None, upscale=None, upscaler=None, inpaint_padding=None, strength=None)
    request = dataclasses.replace(shot.request, prompt=prompt, seed=None, init_image=shot.path, width=None,
                                  height=None, count=1, **{**fresh, **edit})
    return run(studio, session, request)


def inpaint(studio: Studio, session: Session, settings: Settings, prompt: str, editor_value) -> Iterator[Update]:
    """Repaint the part painted on the selected image (its prompt, or the message box's)."""
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "There is no image to paint on yet: send a prompt first.")
    size = Image.open(shot.path).size
    mask = mask_from_editor(editor_value, size)
    if mask is None:
        return nothing_yet(session, "Paint over the part to change first (the brush in the editor), then press "
                                    "Inpaint. The rest of the image stays as it is.")
    return _edit(studio, session, settings, prompt, "Inpaint", mask=mask)  # strength: the engine's (1: draws anew)


def zoom_out(studio: Studio, session: Session, settings: Settings, prompt: str) -> Iterator[Update]:
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "There is no image to zoom out of yet: send a prompt first.")
    borders = zoom_borders(Image.open(shot.path).size, ZOOM)
    return _edit(studio, session, settings, prompt, f"Zoom out {ZOOM:g}x", outpaint=borders)


def pan(studio: Studio, session: Session, settings: Settings, prompt: str, side: str) -> Iterator[Update]:
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "There is no image to pan yet: send a prompt first.")
    borders = pan_borders(Image.open(shot.path).size, side)
    return _edit(studio, session, settings, prompt, f"{PAN[side]} Pan {side}", outpaint=borders)


def upscale(studio: Studio, session: Session, settings: Settings, prompt: str) -> Iterator[Update]:
    return _edit(studio, session, settings, prompt, f"Upscale {UPSCALE:g}x", upscale=UPSCALE)


def selected_background(session: Session) -> str | None:
    """The selected image's file, for the editor's canvas."""
    shot = session.selected_shot()
    return shot.path if shot is not None else None
