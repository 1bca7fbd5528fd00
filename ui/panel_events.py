"""The side panel's own events: switching models, aspect presets, seed buttons, settings kept in the browser.

None of these run the engine (the model loads on the next message), so none join the engine's queue group.
"""

from __future__ import annotations

import gradio as gr

from engine.request import UserError
from ui import runner
from ui.inline import parse_ratio, size_for_ratio
from ui.panel import Panel
from ui.runner import Studio
from ui.state import RANDOM_SEED, Settings, ensure

PRIVATE = dict(api_visibility="private")


def wire_panel(demo: gr.Blocks, panel: Panel, studio: Studio, state: gr.State, saved: gr.BrowserState,
               status_md: gr.Markdown, status=None) -> None:
    """Attach the panel's events (call inside the gr.Blocks context)."""
    plugin_out = [c for row in panel.plugins for c in (row.box, row.toggle, row.weight)]
    plugin_out += [panel.plugin_names, panel.plugin_note]
    model_out = [status_md, panel.steps, panel.guidance, panel.width, panel.height, panel.scheduler, *plugin_out]

    def on_model(values: dict):
        model = values[panel.model]
        try:
            return {**panel.show_model(studio, model),
                    status_md: f"Model **{model}**: its family's defaults are in the panel; it loads on the next "
                               "message."}
        except UserError as e:
            return {status_md: f"⚠️ {e}"}

    panel.model.input(on_model, {panel.model}, model_out, **PRIVATE)

    def on_other_model(values: dict):
        model = (values[panel.other_model] or "").strip()
        if not model:
            return {status_md: "Type a Hub id (owner/name)" + (", a folder or a .safetensors path"
                                                               if studio.local_paths else "") + " first."}
        try:
            out = panel.show_model(studio, model)
        except UserError as e:
            return {status_md: f"⚠️ {e}"}
        choices = [c for c in panel.model.choices if c[1] != model] + [(model, model)]
        return {**out, panel.model: gr.update(choices=choices, value=model),
                status_md: f"Model **{model}** selected; it loads on the next message."}

    for trigger in (panel.use_model.click, panel.other_model.submit):
        trigger(on_other_model, {panel.other_model}, model_out + [panel.model], **PRIVATE)

    def on_aspect(values: dict):
        try:
            d = runner.panel_defaults(studio, values[panel.model])
        except UserError as e:
            return {status_md: f"⚠️ {e}"}
        width, height = size_for_ratio(parse_ratio(values[panel.aspect]), d["width"], d["multiple"])
        return {panel.width: width, panel.height: height}

    panel.aspect.input(on_aspect, {panel.model, panel.aspect}, [panel.width, panel.height, status_md], **PRIVATE)
    panel.random_seed.click(lambda: RANDOM_SEED, None, panel.seed, queue=False, **PRIVATE)

    def on_last_seed(session):
        shot = ensure(session).selected_shot() if session is not None else None
        return shot.request.seed if shot else gr.update()

    panel.last_seed.click(on_last_seed, state, panel.seed, queue=False, **PRIVATE)

    # Settings survive a reload: every change is written to the browser's storage, and read back on load.
    def on_load(values: dict):
        out = {}
        remembered = Settings.from_browser(values[saved])
        try:
            out.update(panel.show_plugins(studio, studio.default_model))
            if remembered is not None:
                runner.check_model_allowed(studio, remembered.model)
                out.update(panel.show_model(studio, remembered.model, keep=remembered))
                out.update(panel.show(remembered))
        except UserError:
            pass  # a remembered model that is gone: the server's default stays
        if status is not None:
            out[status_md] = status.text
        return out

    load_out = model_out + [panel.model, panel.count, panel.negative, panel.seed, panel.vary_strength]
    demo.load(on_load, {saved}, load_out, **PRIVATE)

    def on_change(values: dict):
        return panel.read_plain(values).to_browser()

    gr.on([c.change for c in panel.persisted()], on_change, set(panel.persisted()), saved, queue=False,
          show_progress="hidden", **PRIVATE)

    if status is not None and not status.done:
        timer = gr.Timer(1.0)
        timer.tick(lambda: {status_md: status.text, timer: gr.Timer(active=not status.done)}, None,
                   [status_md, timer], show_progress="hidden", **PRIVATE)
