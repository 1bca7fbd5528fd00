"""The one Request builder every door calls: the chat's panel, gradio's /generate, A1111, OpenAI, MCP and the CLI
hand it their values, and what they leave untouched stays None, so the engine fills in the same defaults (the
model family's, a LoRA plugin's own sampling, the edit's strength) whichever door a request came through.

`form=True` reads a form's sentinels (steps/width/height 0, guidance -1, seed -1, scheduler "default"; the page,
/generate and MCP send numbers that way) as "the default"; other doors pass None for absent fields and have any
other value judged by the engine's `check_request`. No gradio, no torch.
"""

from __future__ import annotations

import math

from engine.request import ControlUnit, LoraSpec, Request, SettingsError
from studio.parse import form_value

DEFAULT_MARKS = {"steps": 0, "guidance": -1, "seed": -1, "width": 0, "height": 0, "count": 0, "strength": 0}
DEFAULT_SCHEDULER = (None, "", "default")


def make_request(prompt: str, model: str, *, form: bool = False, negative: str | None = "", steps=None,
                 guidance=None, seed=None, width=None, height=None, scheduler: str | None = None, count=1,
                 loras: list[LoraSpec] | tuple = (), controls: list[ControlUnit] | tuple = (), strength=None,
                 **edits) -> Request:
    """The engine Request for one door's values (`edits`: Request's edit fields, init_image, mask, outpaint...)."""
    numbers = dict(steps=steps, guidance=guidance, seed=seed, width=width, height=height, count=count,
                   strength=strength)
    if form:
        numbers = {name: form_value(value, DEFAULT_MARKS[name]) for name, value in numbers.items()}
    numbers["count"] = 1 if numbers["count"] is None else numbers["count"]
    for name, value in numbers.items():  # NaN, Infinity (JSON bodies may hold them): no range or count holds them
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{name} = {value} is not a number a setting can have. Send a number, or leave "
                                f"{name} out for the model's default.", field=name)
    return Request(prompt=prompt if prompt is not None else "", negative=negative or "", model=model,
                   scheduler=None if scheduler in DEFAULT_SCHEDULER else scheduler, loras=list(loras),
                   controls=list(controls), **numbers, **edits)


SAMPLING = ("steps", "guidance", "scheduler")


def leave_to_engine(request: Request, shown: dict, typed=()) -> Request:
    """A form that shows the model's defaults (the page's panel) sends them back as values; those still as shown,
    and not typed into the message (`typed`), are untouched: None, so the engine decides them as for every other
    door (a LoRA plugin's own few-step sampling, else the model family's). `shown`: engine.Engine.defaults."""
    for key in SAMPLING:
        if key not in typed and getattr(request, key) is not None and getattr(request, key) == shown.get(key):
            setattr(request, key, None)
    return request
