"""Side panel handlers: plain functions from the panel's values to what it should show. No gradio here.

A model switch answers with a `ModelView` (the family's defaults, the plugin rows, a status line), which
`Panel.show_model` turns into component updates; ui/panel_events.py wires these to the panel's events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.request import UserError
from studio.service import Studio, panel_defaults, plugin_rows
from ui.inline import ASPECTS, CUSTOM, parse_ratio, size_for_ratio
from ui.marks import PROBLEM
from ui.state import Settings


@dataclass
class ModelView:
    """What the panel shows for `model`; `defaults` None = it can't be used here, and `status` says why."""

    model: str
    status: str  # the status line ("" = leave it as it is)
    defaults: dict | None = None  # studio.service.panel_defaults
    plugins: list[dict] = field(default_factory=list)  # studio.service.plugin_rows


def model_view(studio: Studio, model: str, ready: str = "") -> ModelView:
    """The defaults and plugins of `model`, with `ready` as the status line; or the reason it can't be used."""
    try:
        defaults = panel_defaults(studio, model)
    except UserError as e:
        return ModelView(model, f"{PROBLEM} {e}")
    if defaults.get("edit_images"):  # an editing model: say how a message works with it
        several = (f"; `--images 2,5` edits up to {defaults['edit_images']} together"
                   if defaults["edit_images"] > 1 else "")
        ready += (f" It edits images: each message changes the selected (or last) image, e.g. 'make the sky "
                  f"purple'{several}; `--new` draws anew." if defaults.get("text_to_image") else
                  f" It edits images only: select one in the chat, then write the change{several}.")
    return ModelView(model, ready, defaults, plugin_rows(studio.engine, model))


def pick_model(studio: Studio, model: str) -> ModelView:
    """A model picked from the list: its family's defaults go into the panel; it loads on the next message."""
    return model_view(studio, model, f"Model **{model}**: its family's defaults are in the panel; it loads on the "
                                     "next message.")


def pick_other_model(studio: Studio, text: str) -> ModelView:
    """A model typed into "Other model": a Hub id, or on a private server also a folder or file."""
    model = (text or "").strip()
    if not model:
        where = ", a folder or a .safetensors path" if studio.local_paths else ""
        return ModelView(model, f"Type a Hub id (owner/name){where} first.")
    return model_view(studio, model, f"Model **{model}** selected; it loads on the next message.")


def aspect_size(studio: Studio, model: str, aspect: str) -> tuple[int, int]:
    """Width and height for an aspect preset at the model's native size; UserError when the model can't be used."""
    d = panel_defaults(studio, model)
    return size_for_ratio(parse_ratio(aspect), d["width"], d["multiple"])


def aspect_label(width, height) -> str:
    """The aspect preset nearest to width x height (within 5.5% of its ratio: half the gap between the closest
    two presets), else CUSTOM; what the Aspect box shows for the current size."""
    try:
        ratio = float(width) / float(height)
    except (TypeError, ValueError, ZeroDivisionError):
        return CUSTOM
    if not math.isfinite(ratio) or ratio <= 0:
        return CUSTOM
    gap, best = min((abs(math.log(ratio * h / w)), label) for label in ASPECTS for w, h in [parse_ratio(label)])
    return best if gap <= 0.055 else CUSTOM


def page_load(studio: Studio, saved: dict | None) -> tuple[Settings | None, ModelView]:
    """A page (re)load: the settings kept in the browser and their model's view, or (None, the default model's
    plugins) when none are kept or their model is gone (then the server's default stays)."""
    remembered = Settings.from_browser(saved)
    if remembered is not None:
        view = model_view(studio, remembered.model)
        if view.defaults is not None:
            return remembered, view
    return None, ModelView(studio.default_model, "", plugins=plugin_rows(studio.engine, studio.default_model))
