"""The side panel: model picker, sampling settings, ControlNet units and plugin (LoRA) controls.

`Panel` builds the components (inside the caller's layout) and converts between their values and a
`Settings` by name, never by position: handlers get `{component: value}` dicts from gradio.
Gradio needs static components, so ControlNet has a fixed three units (one tab each) and plugins a fixed number
of rows whose unused ones are hidden.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from engine.request import (
    CONTROL_KINDS,
    DEFAULT_PREPROCESSOR,
    MAX_CONTROLS,
    MAX_COUNT,
    MAX_STEPS,
    PREPROCESSORS,
    ControlUnit,
    ImagePrompt,
    LoraSpec,
)
from ui.checked_image import checked_image
from ui.inline import ASPECTS, CUSTOM
from ui.panel_handlers import aspect_label
from ui.state import RANDOM_SEED, Settings

MAX_PLUGIN_ROWS = 8
ASPECT_LABEL = "Aspect"  # at the model's native size
LORA_WEIGHT = (-4.0, 4.0)  # the weights plugins/README.md documents


def preprocessor_choices(kind: str) -> list[tuple[str, str]]:
    """(label, value): "auto" = the type's default preprocessor, "none" = the upload is already a control map."""
    names = [name for name, p in PREPROCESSORS.items() if p["kind"] == kind]
    return ([(f"auto ({DEFAULT_PREPROCESSOR[kind]})", "auto")] + [(n, n) for n in names]
            + [("none: my image is a ready map", "none")])


@dataclass
class ControlRow:
    enabled: gr.Checkbox
    kind: gr.Radio
    image: gr.Image  # ui.checked_image: its size checked from the header before anything decodes it
    preprocessor: gr.Dropdown
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider
    low: gr.Slider
    high: gr.Slider


@dataclass
class PluginRow:
    box: gr.Column
    toggle: gr.Checkbox  # labelled with the plugin's name
    weight: gr.Slider
    about: gr.HTML  # trigger and status; the description on hover


class Panel:
    """The side panel's components; build it inside a gr.Column. Closed, it fits one screen beside the chat."""

    def __init__(self, models: list[tuple[str, str]], settings: Settings, defaults: dict, local_paths: bool):
        """`models`: the picker's (label, value) pairs; `defaults`: studio.service.panel_defaults of settings.model."""
        self.model = gr.Dropdown(models, value=settings.model, label="Model", elem_id="model")
        self.negative = gr.Textbox(label="Negative prompt", lines=1, max_lines=4, value=settings.negative,
                                   placeholder="what to keep out (--no in a message adds to it)")
        with gr.Row():
            self.steps = gr.Slider(1, MAX_STEPS, step=1, value=settings.steps or defaults["steps"], label="Steps",
                                   elem_id="steps", min_width=140)
            self.guidance = gr.Slider(0, 30, step=0.5, value=defaults["guidance"] if settings.guidance is None
                                      else settings.guidance, label="Guidance (CFG)", min_width=140)
        with gr.Row():  # the limits follow the model's family (show_model): the built-in model stops at 512
            size = dict(minimum=defaults["multiple"], maximum=defaults["max_size"], step=defaults["multiple"],
                        min_width=140)
            self.width = gr.Slider(**size, value=settings.width or defaults["width"], label="Width",
                                   elem_id="width")
            self.height = gr.Slider(**size, value=settings.height or defaults["height"], label="Height",
                                    elem_id="height")
        with gr.Row():
            shown = aspect_label(settings.width or defaults["width"], settings.height or defaults["height"])
            self.aspect = gr.Dropdown(ASPECTS + [CUSTOM], value=shown, label=ASPECT_LABEL, min_width=110, scale=1,
                                      elem_id="aspect")
            self.count = gr.Slider(1, MAX_COUNT, step=1, value=settings.count, label="Images", min_width=140,
                                   scale=2, elem_id="count")
        with gr.Row(elem_id="seed-row"):
            self.seed = gr.Number(value=settings.seed, precision=0, label="Seed (-1 = random)", scale=2,
                                  min_width=110, elem_id="seed")
            self.random_seed = gr.Button("Random", size="sm", scale=1, min_width=70, elem_id="seed-random")
            self.last_seed = gr.Button("Last image's", size="sm", scale=1, min_width=90, elem_id="seed-last")
        with gr.Accordion("Advanced: other model, scheduler, restore", open=False, elem_id="advanced"):
            with gr.Row(equal_height=True):
                self.other_model = gr.Textbox(label="Other model", scale=4, max_lines=1, elem_id="other-model",
                                              placeholder="Hub id" + (", folder or file" if local_paths
                                                                      else " (owner/name)"))
                self.use_model = gr.Button("Use", scale=1, min_width=60, size="sm")
            self.scheduler = gr.Dropdown(defaults["schedulers"], value=settings.scheduler
                                         if settings.scheduler in defaults["schedulers"] else "default",
                                         label="Scheduler", info=f"default = {defaults['scheduler']}")
            self.vary_strength = gr.Slider(0.05, 1.0, step=0.05, value=settings.vary_strength,
                                           label="Vary strength", info="how far Vary moves from the image")
            self.restore_file = gr.File(label="Restore settings from a PNG", file_types=[".png", ".jpg", ".jpeg",
                                                                                         ".webp"], type="filepath",
                                        interactive=True, elem_id="restore-file", height=140)
        with gr.Accordion("ControlNet and image prompt", open=False,
                          elem_id="control-box") as self.control_box:
            # one on screen at a time, not stacked; on a phone the tab names wrap to a second line (gradio's "⋯"
            # menu hid the image prompt)
            with gr.Tabs(elem_id="control-units", overflow_behavior="wrap") as self.control_tabs:
                self.units = []
                for i in range(MAX_CONTROLS):
                    with gr.Tab(f"Unit {i + 1}", id=f"unit-{i + 1}"):
                        if i == 0:
                            gr.Markdown("A photo is preprocessed into a map; a ready map needs preprocessor *none*. "
                                        "Images are centre-cropped to the image's aspect. The reply shows the map "
                                        "beside the image.", elem_classes=["panel-note"])
                        self.units.append(self._control_unit(i))
                with gr.Tab("Image prompt", id="image-prompt-tab"):
                    gr.Markdown("The picture follows this image beside the prompt: its look (with the built-in "
                                "model, its colour and shape: *a big one on the left, white background* takes "
                                "both from the image). **Use as image prompt** under the chat puts the selected "
                                "image here.",
                                elem_classes=["panel-note"])
                    self.look_image = checked_image(sources=["upload", "clipboard"], label="Image prompt",
                                                    height=120, elem_id="image-prompt")
                    self.look_scale = gr.Slider(0.0, 2.0, step=0.05, value=1.0, label="Image prompt scale",
                                                info="0: the text alone; 1: follow the image",
                                                elem_id="image-prompt-scale")
        with gr.Accordion("Plugins (LoRA)", open=False, elem_id="plugins-box"):
            self.plugin_note = gr.Markdown("No plugins found for this model. Add manifests to plugins/.",
                                           elem_classes=["panel-note"])
            self.plugin_names = gr.State([])
            self.plugins = [self._plugin_row(i) for i in range(MAX_PLUGIN_ROWS)]

    @staticmethod
    def _control_unit(i: int) -> ControlRow:
        with gr.Row(equal_height=True, elem_classes=["unit-head"]):
            enabled = gr.Checkbox(label=f"Unit {i + 1} on", value=False, min_width=100, scale=0, container=False,
                                  elem_classes=["unit-on"])
            kind = gr.Radio(list(CONTROL_KINDS), value="edge", label="Type", show_label=False, min_width=120,
                            scale=1, container=False)
        image = checked_image(sources=["upload", "clipboard"], label=f"Unit {i + 1} image", height=120)
        with gr.Row():  # side by side under the image: beside it, the dropdown's arrow covered its text
            preprocessor = gr.Dropdown(preprocessor_choices("edge"), value="auto", label="Preprocessor",
                                       min_width=160)
            scale = gr.Slider(0, 2, step=0.05, value=1.0, label="Scale", min_width=160)
        with gr.Row():
            start = gr.Slider(0, 1, step=0.05, value=0.0, label="Start", min_width=100)
            end = gr.Slider(0, 1, step=0.05, value=1.0, label="End", min_width=100)
        with gr.Row(elem_classes=["canny"]):  # Canny's thresholds: for edge units only (pose and depth have none)
            low = gr.Slider(0, 255, step=1, value=100, label="Canny low", min_width=100)
            high = gr.Slider(0, 255, step=1, value=200, label="Canny high", min_width=100)

        def on_kind(k):
            return (gr.update(choices=preprocessor_choices(k), value="auto"), gr.update(visible=k == "edge"),
                    gr.update(visible=k == "edge"))

        kind.input(on_kind, kind, [preprocessor, low, high], api_visibility="private", queue=False)
        return ControlRow(enabled, kind, image, preprocessor, scale, start, end, low, high)

    @staticmethod
    def _plugin_row(i: int) -> PluginRow:
        """One plugin on one line (its name, a weight slider), its trigger and status under it; the description
        shows on hover."""
        with gr.Column(visible=False, elem_classes=["plugin-row"], variant="compact") as box:
            with gr.Row(equal_height=True):
                toggle = gr.Checkbox(label="", value=False, scale=1, min_width=150, container=False,
                                     elem_classes=["plugin-toggle"])
                weight = gr.Slider(LORA_WEIGHT[0], LORA_WEIGHT[1], step=0.05, value=1.0, label="weight", scale=1,
                                   min_width=130, show_label=False, container=False)
            about = gr.HTML("", elem_classes=["plugin-about"], padding=False)
        return PluginRow(box, toggle, weight, about)

    # ------------------------------------------------------------------------------- values <-> Settings
    def settings_inputs(self) -> set:
        """Every component `read` needs."""
        comps = {self.model, self.negative, self.steps, self.guidance, self.seed, self.width, self.height,
                 self.count, self.scheduler, self.vary_strength, self.plugin_names, self.look_image, self.look_scale}
        for unit in self.units:
            comps |= {unit.enabled, unit.kind, unit.image, unit.preprocessor, unit.scale, unit.start, unit.end,
                      unit.low, unit.high}
        for row in self.plugins:
            comps |= {row.toggle, row.weight}
        return comps

    def plugin_outputs(self) -> list:
        """Every component `show_plugins` updates."""
        return [c for row in self.plugins for c in (row.box, row.toggle, row.weight, row.about)] + [
            self.plugin_names, self.plugin_note]

    def persisted(self) -> list:
        """Components whose changes are saved in the browser."""
        return [self.model, self.negative, self.steps, self.guidance, self.seed, self.width, self.height,
                self.count, self.scheduler, self.vary_strength]

    def read_plain(self, values: dict) -> Settings:
        """The panel's plain values (what the browser keeps): no control images, no plugins."""
        seed = values[self.seed]
        return Settings(model=values[self.model] or "builtin", negative=values[self.negative] or "",
                        steps=int(values[self.steps]), guidance=float(values[self.guidance]),
                        seed=RANDOM_SEED if seed is None else int(seed), width=int(values[self.width]),
                        height=int(values[self.height]), scheduler=values[self.scheduler] or "default",
                        count=int(values[self.count]), vary_strength=float(values[self.vary_strength]))

    def read(self, values: dict) -> Settings:
        """Everything a generation needs from the panel: plain values, enabled ControlNet units, LoRAs on."""
        settings = self.read_plain(values)
        for unit in self.units:
            if values[unit.enabled]:
                settings.controls.append(ControlUnit(
                    kind=values[unit.kind], image=values[unit.image], preprocessor=values[unit.preprocessor] or "auto",
                    scale=float(values[unit.scale]), start=float(values[unit.start]), end=float(values[unit.end]),
                    low=int(values[unit.low]), high=int(values[unit.high])))
        names = values[self.plugin_names] or []
        for name, row in zip(names, self.plugins):
            if values[row.toggle]:
                settings.loras.append(LoraSpec(name, float(values[row.weight])))
        if values[self.look_image]:
            settings.image_prompts.append(ImagePrompt(values[self.look_image], float(values[self.look_scale])))
        return settings

    def show(self, settings: Settings, plugin_names: list[str] | None = None) -> dict:
        """Updates that put `settings` into the panel (LoRA toggles too when the plugin names are given)."""
        out = {self.model: settings.model, self.negative: settings.negative, self.seed: settings.seed,
               self.count: settings.count, self.vary_strength: settings.vary_strength,
               self.scheduler: settings.scheduler or "default"}
        for comp, value in ((self.steps, settings.steps), (self.guidance, settings.guidance),
                            (self.width, settings.width), (self.height, settings.height)):
            if value is not None:
                out[comp] = value
        if plugin_names is not None:
            weights = {x.name: x.weight for x in settings.loras}
            for name, row in zip(plugin_names, self.plugins):
                out[row.toggle] = name in weights
                if name in weights:
                    out[row.weight] = weights[name]
        return out

    def show_model(self, d: dict, plugins: list[dict], keep: Settings | None = None) -> dict:
        """Panel updates for a newly picked model: its family's defaults `d` (unless `keep`), its size limits and
        its plugins."""
        out = {self.scheduler: gr.update(choices=d["schedulers"], info=f"default = {d['scheduler']}",
                                         value=(keep.scheduler if keep and keep.scheduler in d["schedulers"]
                                                else "default"))}
        for comp, side in ((self.width, "width"), (self.height, "height")):  # the family's limits: 8..512 by 8 for
            value = getattr(keep, side) if keep is not None else d[side]  # the built-in model, 16..2048 by 16 Flux
            out[comp] = gr.update(minimum=d["multiple"], maximum=d["max_size"], step=d["multiple"],
                                  **({} if value is None else {"value": value}))
        if keep is None:
            out.update({self.steps: d["steps"], self.guidance: d["guidance"]})
        out.update(self.show_plugins(plugins))
        return out

    def show_plugins(self, rows: list[dict]) -> dict:
        """Updates that show one row per plugin (from studio.service.plugin_rows) and hide the rows left over."""
        rows = rows[:MAX_PLUGIN_ROWS]
        out = {self.plugin_names: [r["name"] for r in rows],
               self.plugin_note: (f"{len(rows)} plugin(s); toggle and weight. Inline: `--lora NAME=0.8` or "
                                  "`<lora:NAME:0.8>`." if rows else
                                  "No plugins found for this model. Add manifests to plugins/.")}
        for i, row in enumerate(self.plugins):
            if i < len(rows):
                r = rows[i]
                out[row.box] = gr.update(visible=True)
                out[row.toggle] = gr.update(label=r["name"], value=False, interactive=r["compatible"])
                out[row.weight] = gr.update(value=r["weight"], interactive=r["compatible"])
                out[row.about] = plugin_about(r)
            else:
                out[row.box] = gr.update(visible=False)
                out[row.toggle] = gr.update(value=False)
        return out


def plugin_about(row: dict) -> str:
    """The line under a plugin's name: its trigger word and status (why it can't be used, if so); the
    description is its hover text."""
    status = "ready" if row["compatible"] else row["why"] or row["status"]
    parts = ([f"trigger <code>{html.escape(row['trigger'])}</code>"] if row.get("trigger") else []) + [
        html.escape(status)]
    title = html.escape(" ".join(x for x in (row["description"], f"Status: {row['status']}.") if x), quote=True)
    return f'<div class="plugin-line" title="{title}">{" · ".join(parts)}</div>'
