"""The side panel's events wired to ui/panel_handlers.py: model switches, aspect presets, seed buttons, and
the settings kept in the browser.

None of these run the engine (the model loads on the next message), so none join the engine's queue group.
"""

from __future__ import annotations

import gradio as gr

from engine.request import UserError
from studio.service import Studio
from ui import handlers, panel_handlers
from ui.inline import ASPECTS
from ui.layout import Page
from ui.marks import PROBLEM
from ui.panel import Panel
from ui.panel_handlers import ModelView
from ui.state import RANDOM_SEED
from ui.status import ModelStatus

# answered at once, outside gradio's queue: a full queue of generations never keeps the panel or a page load waiting
PRIVATE = dict(api_visibility="private", queue=False)


def show_view(panel: Panel, status_md: gr.Markdown, view: ModelView, keep=None) -> dict:
    """A `ModelView` as component updates: the status line (when it has one), defaults and plugin rows."""
    out = {status_md: view.status} if view.status else {}
    if view.defaults is not None:
        out.update(panel.show_model(view.defaults, view.plugins, keep=keep))
    return out


def wire_panel(demo: gr.Blocks, page: Page, studio: Studio, status: ModelStatus | None = None) -> None:
    """Attach the panel's events (call inside the gr.Blocks context)."""
    panel, status_md = page.panel, page.status_md
    model_out = [status_md, panel.steps, panel.guidance, panel.width, panel.height, panel.scheduler,
                 *panel.plugin_outputs()]

    def on_model(values: dict):
        return show_view(panel, status_md, panel_handlers.pick_model(studio, values[panel.model]))

    panel.model.input(on_model, {panel.model}, model_out, **PRIVATE)

    def on_other_model(values: dict):
        view = panel_handlers.pick_other_model(studio, values[panel.other_model])
        out = show_view(panel, status_md, view)
        if view.defaults is not None:  # the typed model joins the picker's list
            choices = [c for c in panel.model.choices if c[1] != view.model] + [(view.model, view.model)]
            out[panel.model] = gr.update(choices=choices, value=view.model)
        return out

    for trigger in (panel.use_model.click, panel.other_model.submit):
        trigger(on_other_model, {panel.other_model}, model_out + [panel.model], **PRIVATE)

    def on_aspect(values: dict):
        if values[panel.aspect] not in ASPECTS:  # "custom": the size stays as it is
            return {}
        try:
            width, height = panel_handlers.aspect_size(studio, values[panel.model], values[panel.aspect])
        except UserError as e:
            return {status_md: f"{PROBLEM} {e}"}
        return {panel.width: width, panel.height: height}

    panel.aspect.input(on_aspect, {panel.model, panel.aspect}, [panel.width, panel.height, status_md], **PRIVATE)
    for side in (panel.width, panel.height):  # the box names the current size's aspect, "custom" if none
        side.change(panel_handlers.aspect_label, [panel.width, panel.height], panel.aspect, **PRIVATE)
    panel.random_seed.click(lambda: RANDOM_SEED, None, panel.seed, **PRIVATE)

    def on_last_seed(session):
        seed = handlers.last_seed(session)
        return gr.update() if seed is None else seed

    panel.last_seed.click(on_last_seed, page.state, panel.seed, **PRIVATE)

    # Settings survive a reload: every change is written to the browser's storage, and read back on load.
    def on_load(values: dict):
        remembered, view = panel_handlers.page_load(studio, values[page.saved])
        out = panel.show_plugins(view.plugins)
        if remembered is not None:
            out.update(panel.show(remembered))
            out.update(show_view(panel, status_md, view, keep=remembered))  # with the size limits of its family
        if status is not None:
            out[status_md] = status.text
        return out

    load_out = model_out + [panel.model, panel.count, panel.negative, panel.seed, panel.vary_strength]
    demo.load(on_load, {page.saved}, load_out, **PRIVATE)

    gr.on([c.change for c in panel.persisted()], lambda values: panel.read_plain(values).to_browser(),
          set(panel.persisted()), page.saved, show_progress="hidden", **PRIVATE)

    if status is not None and not status.done:
        timer = gr.Timer(1.0)
        timer.tick(lambda: {status_md: status.text, timer: gr.Timer(active=not status.done)}, None,
                   [status_md, timer], show_progress="hidden", **PRIVATE)
