"""The side panel: model picker, sampling settings, ControlNet units and plugin (LoRA) controls.

`Panel` builds the components (inside the caller's layout) and converts between their values and a
`Settings` by name, never by position: handlers get `{component: value}` dicts from gradio.
Gradio needs static components, so ControlNet has a fixed three units and plugins a fixed number of rows
whose unused ones are hidden.
"""

from __future__ import annotations

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
    LoraSpec,
)
from ui.checked_image import checked_image
from ui.state import RANDOM_SEED, Settings

MAX_PLUGIN_ROWS = 8
ASPECTS = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16"]


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
    box: gr.Row
    toggle: gr.Checkbox
    weight: gr.Slider


class Panel:
    """The side panel's components; build it inside a gr.Column."""

    def __init__(self, models: list[tuple[str, str]], settings: Settings, defaults: dict, local_paths: bool):
        """`models`: the picker's (label, value) pairs; `defaults`: ui.studio.panel_defaults of settings.model."""
        self.model = gr.Dropdown(models, value=settings.model, label="Model",
                                 info="Defaults follow the model family when you switch.")
        with gr.Row(equal_height=True):
            self.other_model = gr.Textbox(label="Other model", scale=4, max_lines=1,
                                          placeholder="Hub id" + (", folder or .safetensors path" if local_paths
                                                                  else " (owner/name)"))
            self.use_model = gr.Button("Use", scale=1, min_width=60)
        self.negative = gr.Textbox(label="Negative prompt", lines=2, value=settings.negative,
                                   placeholder="what to keep out of the image (--no in a message adds to it)")
        with gr.Row():
            self.steps = gr.Slider(1, MAX_STEPS, step=1, value=settings.steps or defaults["steps"], label="Steps",
                                   elem_id="steps")
            self.guidance = gr.Slider(0, 30, step=0.5, value=defaults["guidance"] if settings.guidance is None
                                      else settings.guidance, label="Guidance (CFG)")
        with gr.Row(equal_height=True):
            self.seed = gr.Number(value=settings.seed, precision=0, label="Seed (-1 = random)", scale=3,
                                  elem_id="seed")
            self.random_seed = gr.Button("🎲", scale=1, min_width=40)
            self.last_seed = gr.Button("♻️", scale=1, min_width=40)
        self.aspect = gr.Radio(ASPECTS, value=None, label="Aspect (at the model's native size)")
        with gr.Row():
            self.width = gr.Slider(8, 2048, step=8, value=settings.width or defaults["width"], label="Width")
            self.height = gr.Slider(8, 2048, step=8, value=settings.height or defaults["height"], label="Height")
        self.count = gr.Slider(1, MAX_COUNT, step=1, value=settings.count, label="Number of images")
        with gr.Accordion("Advanced", open=False):
            self.scheduler = gr.Dropdown(defaults["schedulers"], value=settings.scheduler
                                         if settings.scheduler in defaults["schedulers"] else "default",
                                         label="Scheduler", info=f"default = {defaults['scheduler']}")
            self.vary_strength = gr.Slider(0.05, 1.0, step=0.05, value=settings.vary_strength,
                                           label="Vary strength", info="how far 🌀 Vary moves from the image")
            self.restore_file = gr.File(label="Restore settings from a PNG", file_types=[".png", ".jpg", ".jpeg",
                                                                                         ".webp"], type="filepath",
                                        interactive=True, elem_id="restore-file", height=90)
        with gr.Accordion("ControlNet units: pose / edge / depth", open=False) as self.control_box:
            gr.Markdown("Upload a photo (it is preprocessed into a map) or a ready map with preprocessor "
                        "*none*. Images are centre-cropped to the generation size's aspect, then resized. The map the "
                        "model was given is shown with the result.")
            self.units = [self._control_unit(i) for i in range(MAX_CONTROLS)]
        with gr.Accordion("Plugins (LoRA)", open=False):
            self.plugin_note = gr.Markdown("No plugins found for this model. Add manifests to plugins/.")
            self.plugin_names = gr.State([])
            self.plugins = []
            for _ in range(MAX_PLUGIN_ROWS):
                with gr.Row(visible=False, equal_height=True) as box:
                    self.plugins.append(PluginRow(box, gr.Checkbox(label="", value=False, scale=2, min_width=120),
                                                  gr.Slider(-2, 2, step=0.05, value=1.0, label="weight", scale=3)))

    @staticmethod
    def _control_unit(i: int) -> ControlRow:
        with gr.Group():
            with gr.Row(equal_height=True):
                enabled = gr.Checkbox(label=f"Unit {i + 1} on", value=False, min_width=80)
                kind = gr.Radio(list(CONTROL_KINDS), value="edge", label="Type", min_width=160)
            image = checked_image(sources=["upload", "clipboard"], label=f"Unit {i + 1} image", height=160)
            preprocessor = gr.Dropdown(preprocessor_choices("edge"), value="auto", label="Preprocessor")
            with gr.Row():
                scale = gr.Slider(0, 2, step=0.05, value=1.0, label="Scale")
                start = gr.Slider(0, 1, step=0.05, value=0.0, label="Start")
                end = gr.Slider(0, 1, step=0.05, value=1.0, label="End")
            with gr.Row():
                low = gr.Slider(0, 255, step=1, value=100, label="Canny low (edge)")
                high = gr.Slider(0, 255, step=1, value=200, label="Canny high (edge)")
        kind.input(lambda k: gr.update(choices=preprocessor_choices(k), value="auto"), kind, preprocessor,
                   api_visibility="private", queue=False)
        return ControlRow(enabled, kind, image, preprocessor, scale, start, end, low, high)

    # ------------------------------------------------------------------------------- values <-> Settings
    def settings_inputs(self) -> set:
        """Every component `read` needs."""
        comps = {self.model, self.negative, self.steps, self.guidance, self.seed, self.width, self.height,
                 self.count, self.scheduler, self.vary_strength, self.plugin_names}
        for unit in self.units:
            comps |= {unit.enabled, unit.kind, unit.image, unit.preprocessor, unit.scale, unit.start, unit.end,
                      unit.low, unit.high}
        for row in self.plugins:
            comps |= {row.toggle, row.weight}
        return comps

    def plugin_outputs(self) -> list:
        """Every component `show_plugins` updates."""
        return [c for row in self.plugins for c in (row.box, row.toggle, row.weight)] + [self.plugin_names,
                                                                                          self.plugin_note]

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
        """Panel updates for a newly picked model: its family's defaults `d` (unless `keep`) and its plugins."""
        out = {self.scheduler: gr.update(choices=d["schedulers"], info=f"default = {d['scheduler']}",
                                         value=(keep.scheduler if keep and keep.scheduler in d["schedulers"]
                                                else "default"))}
        if keep is None:
            out.update({self.steps: d["steps"], self.guidance: d["guidance"], self.width: d["width"],
                        self.height: d["height"]})
        out.update(self.show_plugins(plugins))
        return out

    def show_plugins(self, rows: list[dict]) -> dict:
        """Updates that show one row per plugin (from ui.studio.plugin_rows) and hide the rows left over."""
        rows = rows[:MAX_PLUGIN_ROWS]
        out = {self.plugin_names: [r["name"] for r in rows],
               self.plugin_note: (f"{len(rows)} plugin(s); toggle and weight. Inline: `--lora NAME=0.8` or "
                                  "`<lora:NAME:0.8>`." if rows else
                                  "No plugins found for this model. Add manifests to plugins/.")}
        for i, row in enumerate(self.plugins):
            if i < len(rows):
                r = rows[i]
                label = r["name"] + ("" if r["compatible"] else f" — {r['why']}")
                out[row.box] = gr.update(visible=True)
                out[row.toggle] = gr.update(label=label, value=False, interactive=r["compatible"],
                                            info=r["description"] or None)
                out[row.weight] = gr.update(value=r["weight"], interactive=r["compatible"])
            else:
                out[row.box] = gr.update(visible=False)
                out[row.toggle] = gr.update(value=False)
        return out
