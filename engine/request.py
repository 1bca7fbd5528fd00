"""The one `Request` that carries a generation from the browser or CLI to the sampler, and its checks.

`check_request` is the single place that validates user input; every message a user can get for
bad settings is written here, naming the problem and the fix. It is pure: it returns a new, complete Request.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .families import FAMILIES, FAMILIES_BY_NAME, FamilyDefaults, family

__all__ = ["FAMILIES", "FamilyDefaults"]  # engine.families' own, named here for the doors that read them


class UserError(Exception):
    """A problem the user can fix. Its message is shown as-is in the chat, the APIs and on the CLI.

    `field`: the Request field at fault, when one is (each door names it in its own terms); `operator`: advice only
    the person who runs the app can act on (a start flag, a download on the server), which the doors show to
    the operator alone (the CLI, a chat on this machine) and log for everyone else."""

    def __init__(self, message: str = "", *, field: str | None = None, operator: str = ""):
        super().__init__(message)
        self.field, self.operator = field, operator

    def __reduce__(self):  # pickled whole (Ray replicas hand errors back)
        return (_rebuild, (type(self), str(self), self.field, self.operator))

    def for_operator(self) -> str:
        """The message with the operator's own advice."""
        return f"{self} {self.operator}".strip()


class SettingsError(UserError):
    """The request's settings can't be used (check_request): a value out of range, a wrong combination."""


class ModelError(UserError):
    """The model can't be used here: missing, not loadable, not allowed on this server, out of memory."""


def _rebuild(cls, message, field, operator):
    return cls(message, field=field, operator=operator)


class Note(str):
    """A note for the user beside a result; `kind` names it for code (no matching of its words), `operator` holds
    advice only the person who runs the app can act on (see UserError)."""

    def __new__(cls, text: str, kind: str = "", operator: str = ""):
        note = super().__new__(cls, text)
        note.kind, note.operator = kind, operator
        return note

    def __reduce__(self):
        return (Note, (str(self), self.kind, self.operator))

    def for_operator(self) -> str:
        return f"{self} {self.operator}".strip()


DEFAULTS: dict[str, FamilyDefaults] = {name: f.defaults for name, f in FAMILIES_BY_NAME.items()}
IMG2IMG_STRENGTH = 0.6  # image-to-image without a strength: keeps the picture's layout, redraws its look
EDIT_STRENGTH = 1.0  # inpaint and outpaint without one: the masked part drawn anew, as diffusers' own default

# name -> (diffusers class, extra config, AUTOMATIC1111 sampler name, A1111 schedule type)
SCHEDULERS: dict[str, tuple[str, dict, str, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler", "Automatic"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a", "Automatic"),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M", "Automatic"),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE", "Automatic"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC", "Automatic"),
    "ddim": ("DDIMScheduler", {}, "DDIM", "Automatic"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun", "Automatic"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS", "Automatic"),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}, "Euler", "Simple"),
}
FLOW_SCHEDULERS = ("flow-euler",)
MAX_STEPS = 200
MAX_COUNT = 16
MAX_PROMPT = 10_000  # characters; CLIP reads 77 tokens and T5 512, so this is far past what any model uses
MAX_NAME = 1024  # a model or LoRA name
CONTROL_KINDS = ("pose", "edge", "depth")
MAX_CONTROLS = 3
MAX_IMAGE_PROMPTS = 4
ANNOTATORS = "lllyasviel/Annotators"
# preprocessor name -> kind of map it makes, Hub weights it needs (None = works everywhere); engine/control.py runs them
PREPROCESSORS: dict[str, dict] = {
    "canny": {"kind": "edge", "weights": None},
    "lineart": {"kind": "edge", "weights": ANNOTATORS},
    "midas": {"kind": "depth", "weights": ANNOTATORS},
    "depth-anything": {"kind": "depth", "weights": "depth-anything/Depth-Anything-V2-Small-hf"},
    "openpose": {"kind": "pose", "weights": ANNOTATORS},
}
DEFAULT_PREPROCESSOR = {"edge": "canny", "depth": "depth-anything", "pose": "openpose"}


@dataclass
class ControlUnit:
    """One ControlNet unit: what it controls, its image, how strongly and over which part of the steps."""

    kind: str  # pose | edge | depth
    image: Any  # a path or a PIL image; a ready map when preprocessor == "none"
    preprocessor: str = "auto"  # auto (the kind's default) | none | a name from engine.control.PREPROCESSORS
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low: int = 100  # canny thresholds
    high: int = 200


@dataclass
class ImagePrompt:
    """A reference image the model follows beside the prompt (an IP-Adapter image prompt), and how strongly."""

    image: Any  # a path, bytes or a PIL image
    scale: float | None = None  # 0 (the prompt alone) to 2; None: the adapter's own default


@dataclass
class LoraSpec:
    name: str  # plugin name, or a local .safetensors path (CLI only)
    weight: float = 1.0


@dataclass
class Request:
    """Everything one generation needs. None means "the model family's default"."""

    prompt: str
    negative: str = ""
    model: str = "builtin"
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    count: int = 1
    init_image: Any = None  # a path or PIL image: image-to-image from it (an editing model: the image it edits)
    references: list = field(default_factory=list)  # more images an editing model takes beside init_image: image 2, 3
    image_prompts: list[ImagePrompt] = field(default_factory=list)  # reference images an image-prompt adapter reads
    styles: list[str] = field(default_factory=list)  # saved styles (plugins/styles/*.toml) applied to the prompt
    strength: float | None = None  # None: IMG2IMG_STRENGTH, or EDIT_STRENGTH for an inpaint or outpaint
    controls: list[ControlUnit] = field(default_factory=list)
    loras: list[LoraSpec] = field(default_factory=list)
    # edits of the init image (engine/edit.py)
    mask: Any = None  # inpaint: a path or PIL image, white = repaint, black = keep; the init image's size
    mask_blur: int = 4  # feather the mask's edge by this many pixels
    inpaint_padding: int | None = None  # "masked area only": repaint a crop around the mask with this margin
    outpaint: tuple[int, int, int, int] | None = None  # extend the image by (left, top, right, bottom) pixels
    upscale: float | None = None  # this many times larger: resize, then an image-to-image pass (hires fix)
    hires_strength: float = 0.35  # that pass's strength (0: the resize alone)
    upscaler: str | None = None  # an upscaler plugin to resize with (else Lanczos)

    def to_json(self) -> dict:
        """The settings as plain JSON (images are not included; the PNG itself is the result)."""
        data = dataclasses.asdict(self)
        data["init_image"] = data["mask"] = None
        data["references"] = []
        for prompt in data["image_prompts"]:
            prompt["image"] = None
        for unit in data["controls"]:
            unit["image"] = None
        return data

    @classmethod
    def from_json(cls, data: dict) -> Request:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"Unknown setting(s) {sorted(unknown)} in saved settings; known: {sorted(known)}.")
        data = dict(data)
        data["controls"] = [ControlUnit(**u) for u in data.get("controls") or []]
        data["loras"] = [LoraSpec(**x) for x in data.get("loras") or []]
        data["image_prompts"] = [ImagePrompt(**x) for x in data.get("image_prompts") or []]
        if isinstance(data.get("outpaint"), list):
            data["outpaint"] = tuple(data["outpaint"])
        return cls(**data)


def defaults_for(name: str, variant: str = "") -> FamilyDefaults:
    """The family's defaults for a `variant` read from the model (engine.sources), e.g. Flux-schnell's."""
    return family(name).defaults_for(variant)


def _number(name: str, value, kind, low, high, fix: str, field: str | None = None):
    """`value` as `kind` in [low, high], or a SettingsError naming it (`field`: the Request field, if another)."""
    field = field or name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{name} must be a number, got {value!r}. {fix}", field=field)
    if not math.isfinite(value):  # nan, inf: no range holds them (and int() of them fails)
        raise SettingsError(f"{name} = {value} is out of range. {fix}", field=field)
    if kind is int and int(value) != value:
        raise SettingsError(f"{name} must be a whole number, got {value}. {fix}", field=field)
    if not (low <= value <= high):
        raise SettingsError(f"{name} = {value} is out of range. {fix}", field=field)
    return kind(value)


def clean_text(text: str) -> str:
    """Text as the tokenizers and the browser can take it: lone surrogates (half an emoji) become U+FFFD and
    control characters other than newline and tab are dropped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" if "\ud800" <= c <= "\udfff" else ""
                   for c in text)


def _text(name: str, value, limit: int, empty_ok: bool = True) -> str:
    if value is None and empty_ok:
        return ""
    if not isinstance(value, str):
        raise SettingsError(f"The {name} must be text, got {type(value).__name__}.")
    if len(value) > limit:
        raise SettingsError(f"The {name} is {len(value):,} characters long; use at most {limit:,} (the model reads "
                            "only "
                        "the first few hundred words).")
    return clean_text(value).strip()


def check_request(req: Request, family: str, variant: str = "") -> Request:  # noqa: C901 (one list of checks)
    """Validate `req` for a model of `family` (and `variant`) and return a new Request with every default filled
    in; `req` itself, its control units and LoRA specs are never changed. Every settings message lives here."""
    d = defaults_for(family, variant)
    prompt = _text("prompt", req.prompt, MAX_PROMPT, empty_ok=False)
    negative = _text("negative prompt", req.negative, MAX_PROMPT)
    if not prompt:
        raise SettingsError("The prompt is empty. Describe the image you want, e.g. "
                        "'a big red circle on the left, blue background'.")
    steps = d.steps if req.steps is None else _number(
        "steps", req.steps, int, 1, MAX_STEPS, f"Use 1 to {MAX_STEPS} steps (this model's default is {d.steps}).")
    guidance = d.guidance if req.guidance is None else _number(
        "guidance", req.guidance, float, 0.0, 30.0,
        f"Use a guidance scale from 0 to 30 (this model's default is {d.guidance}).")
    size = {}
    for name in ("width", "height"):
        value = getattr(req, name)
        value = d.size if value is None else _number(name, value, int, d.multiple, d.max_size,
                                                     f"Use {d.multiple} to {d.max_size} pixels for this model "
                                                     f"(native {d.size}).")
        if value % d.multiple:
            raise SettingsError(f"{name} = {value} is not a multiple of {d.multiple}, which this model needs. "
                            f"Try {max(d.multiple, value // d.multiple * d.multiple)}.")
        size[name] = value
    count = _number("count", req.count, int, 1, MAX_COUNT, f"Ask for 1 to {MAX_COUNT} images at a time.")
    seed = None if req.seed is None else _number(
        "seed", req.seed, int, 0, 2**32 - 1, "Use a seed from 0 to 4294967295, or leave it empty for a random one.")
    scheduler = req.scheduler if req.scheduler not in (None, "", "default") else d.scheduler
    if scheduler not in SCHEDULERS:
        raise SettingsError(f"Unknown scheduler {scheduler!r}. Choose one of: {', '.join(valid_schedulers(family))}.")
    if scheduler not in valid_schedulers(family):  # flow matching or not, and unfit for this family's schedule
        raise SettingsError(f"Scheduler {scheduler!r} does not work with {FAMILIES_BY_NAME[family].label} models. "
                            f"Choose one of: {', '.join(valid_schedulers(family))}.", field="scheduler")
    strength = req.strength
    kin = FAMILIES_BY_NAME[family]
    editor = req.init_image is not None and kin.edit_limit(variant) and req.mask is None and not req.outpaint
    _check_references(req, kin, variant)
    if editor:  # an instruction edit takes the image as it is: no strength
        strength = None
    elif req.init_image is not None:
        if strength is None:
            strength = EDIT_STRENGTH if req.mask is not None or req.outpaint else IMG2IMG_STRENGTH
        strength = _number("strength", strength, float, 0.01, 1.0,
                           "Image-to-image strength goes from 0.01 (keep the image) to 1 (ignore it).")
        if int(steps * strength) < 1:
            need = int(1 / strength) + 1
            raise SettingsError(f"At strength {strength:g}, {steps} steps leave no denoising step to run (image-to-"
                                "image "
                            f"runs steps x strength of them). Use at least {need} steps, or a higher strength.")
    edits = _check_edits(req, d)
    if len(req.controls) > MAX_CONTROLS:
        raise SettingsError(f"{len(req.controls)} control units given; use at most {MAX_CONTROLS}.")
    controls = [check_control(unit, i) for i, unit in enumerate(req.controls, 1)]
    names = [lora.name for lora in req.loras]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingsError(f"LoRA {twice[0]!r} is asked for twice; give each LoRA once with its weight.")
    loras = [_lora(lora) for lora in req.loras]
    image_prompts = _image_prompts(req.image_prompts)
    if not isinstance(req.styles, (list, tuple)) or not all(isinstance(x, str) and x for x in req.styles):
        raise SettingsError("styles must be a list of style names.", field="styles")
    if req.controls and (req.mask is not None or req.outpaint):
        raise SettingsError("ControlNet units do not combine with inpainting or outpainting here yet. Turn the units "
                        "off for this edit, or use them on a plain image-to-image refine.")
    return dataclasses.replace(req, **edits, prompt=prompt, negative=negative, steps=steps,
                               guidance=guidance, count=count, seed=seed, scheduler=scheduler, strength=strength,
                               controls=controls, loras=loras, image_prompts=image_prompts, **size)


def _image_prompts(prompts) -> list[ImagePrompt]:
    """Image prompts checked: at most MAX_IMAGE_PROMPTS, each with an image, one scale for all (an adapter has one)."""
    if not isinstance(prompts, (list, tuple)):
        raise SettingsError("image prompts must be a list.", field="image_prompts")
    if len(prompts) > MAX_IMAGE_PROMPTS:
        raise SettingsError(f"{len(prompts)} image prompts given; use at most {MAX_IMAGE_PROMPTS}.",
                            field="image_prompts")
    out = []
    for i, p in enumerate(prompts, 1):
        if not isinstance(p, ImagePrompt) or p.image is None:
            raise SettingsError(f"Image prompt {i} has no image.", field="image_prompts")
        scale = None if p.scale is None else _number(f"image prompt {i} scale", p.scale, float, 0.0, 2.0,
                                                     "Use 0 (the text alone) to 2; 1 follows the image fully.",
                                                     field="image_prompts")
        out.append(ImagePrompt(p.image, scale))
    scales = {p.scale for p in out if p.scale is not None}
    if len(scales) > 1:
        raise SettingsError(f"The image prompts ask for different scales ({', '.join(f'{x:g}' for x in sorted(scales))}"
                            "); one generation's image prompts share one scale. Give them all the same.",
                            field="image_prompts")
    return out


def _check_references(req: Request, kin, variant: str) -> None:
    """More images beside the init image are for an editing model that takes them, as many as it takes."""
    refs = req.references or []
    if not isinstance(refs, (list, tuple)):
        raise SettingsError("references must be a list of images.", field="references")
    if not refs:
        return
    most = kin.edit_limit(variant)
    if most < 2:
        raise SettingsError(f"{len(refs) + 1} images were given, but a {kin.label} model edits one image at a time. "
                            "Send one image, or pick a model that combines several (Qwen-Image-Edit-2509, FLUX.2).",
                            field="references")
    if req.init_image is None:
        raise SettingsError("Reference images go with the image to edit: give that first (--init IMG, or select it "
                            "in the chat).", field="references")
    if len(refs) + 1 > most:
        raise SettingsError(f"{len(refs) + 1} images were given; this {kin.label} model takes at most {most} in one "
                            "edit.", field="references")
    if req.mask is not None or req.outpaint or req.upscale:
        raise SettingsError("Several images go to an instruction edit only, not an inpaint, outpaint or upscale.",
                            field="references")


def _check_edits(req: Request, d: FamilyDefaults) -> dict:
    """The edit fields of `req` checked: a mask or borders need the image they edit, one edit at a time."""
    out: dict = {}
    if req.mask is not None and req.init_image is None:
        raise SettingsError("A mask needs the image it masks: give the image with --init IMG (or select one in the "
                        "chat) and the mask with --mask MASK.png (white = repaint).")
    if req.outpaint:
        if req.init_image is None:
            raise SettingsError("Outpainting extends an image: give it with --init IMG (or select one in the chat).")
        if req.mask is not None:
            raise SettingsError("Give either a mask (inpaint) or borders to add (outpaint), not both in one edit.")
        if not isinstance(req.outpaint, (tuple, list)) or len(req.outpaint) != 4:
            raise SettingsError("Outpaint borders are four numbers: left, top, right, bottom pixels.")
        borders = tuple(_number(f"outpaint {side}", v, int, 0, d.max_size, f"Use 0 to {d.max_size} pixels.")
                        for side, v in zip(("left", "top", "right", "bottom"), req.outpaint))
        if not any(borders):
            raise SettingsError("Outpaint adds nothing: give at least one border, e.g. --outpaint left=64.")
        out["outpaint"] = borders
    out["mask_blur"] = _number("mask blur", req.mask_blur, int, 0, 64, "Use 0 to 64 pixels.")
    if req.inpaint_padding is not None:
        out["inpaint_padding"] = _number("inpaint padding", req.inpaint_padding, int, 0, 512, "Use 0 to 512 pixels.")
    if req.upscale is not None:
        out["upscale"] = _number("upscale", req.upscale, float, 1.0, 4.0, "Use a factor from 1 to 4, e.g. 2.")
        if out["upscale"] <= 1.0:
            raise SettingsError("upscale = 1 changes nothing: use a factor above 1, e.g. --upscale 2.")
        if req.mask is not None or req.outpaint:
            raise SettingsError("Upscale the image after the inpaint or outpaint, in its own step (one edit at a "
                                "time).")
    if req.upscaler is not None:
        if not req.upscale:
            raise SettingsError(f"--upscaler {req.upscaler} needs a factor: add --upscale 2 (or 4).")
        out["upscaler"] = _text("upscaler name", req.upscaler, MAX_NAME) or None
    out["hires_strength"] = _number("hires strength", req.hires_strength, float, 0.0, 1.0,
                                    "Use 0 (resize only) to 1; 0.3-0.5 adds detail and keeps the picture.")
    return out


def _lora(lora: LoraSpec) -> LoraSpec:
    if not isinstance(lora.name, str) or not lora.name.strip() or len(lora.name) > MAX_NAME:
        raise SettingsError(f"A LoRA name must be text of 1 to {MAX_NAME} characters, got {str(lora.name)[:40]!r}.")
    return LoraSpec(lora.name, _number(f"LoRA {lora.name!r} weight", lora.weight, float, -4.0, 4.0,
                                       "Use a LoRA weight from -4 to 4 (1 is full strength, 0 is off)."))


def check_saved(req: Request) -> Request:
    """Settings read from a file (PNG, prompt file) checked like typed-in ones before they reach the panel: types,
    ranges, finite numbers, whole numbers of sane size. Family-specific limits wait for check_request."""
    def maybe(name, kind, low, high, fix):
        value = getattr(req, name)
        return None if value is None else _number(f"The saved {name}", value, kind, low, high, fix)

    model = req.model if req.model is None else _text("model name", req.model, MAX_NAME)
    scheduler = req.scheduler
    if scheduler is not None and scheduler not in SCHEDULERS:
        scheduler = None  # a sampler we do not have: the model's default, as for A1111 names we cannot map
    units = []
    for i, unit in enumerate(req.controls or [], 1):  # saved units have no image: check the numbers only
        if not isinstance(unit, ControlUnit):
            raise SettingsError(f"The saved control unit {i} is not a control unit.")
        units.append(check_control(dataclasses.replace(unit, image=unit.image or "(not saved)"), i))
        units[-1] = dataclasses.replace(units[-1], image=None)
    return dataclasses.replace(
        req, prompt=_text("saved prompt", req.prompt, MAX_PROMPT), negative=_text("saved negative prompt",
                                                                                  req.negative, MAX_PROMPT),
        model=model or "builtin",
        steps=maybe("steps", int, 1, MAX_STEPS, f"Use 1 to {MAX_STEPS}."),
        guidance=maybe("guidance", float, 0.0, 30.0, "Use 0 to 30."),
        seed=maybe("seed", int, 0, 2**32 - 1, "Use 0 to 4294967295."),
        width=maybe("width", int, 8, 4096, "Use 8 to 4096 pixels."),
        height=maybe("height", int, 8, 4096, "Use 8 to 4096 pixels."),
        count=_number("The saved count", req.count, int, 1, MAX_COUNT, f"Use 1 to {MAX_COUNT}."),
        strength=maybe("strength", float, 0.0, 1.0, "Use 0 to 1."),
        scheduler=scheduler, controls=units, loras=[_lora(x) for x in req.loras or []])


def check_control(unit: ControlUnit, i: int = 1) -> ControlUnit:
    """A checked copy of one control unit (numbers as their types, the preprocessor's name known and fitting)."""
    where = f"Control unit {i} ({unit.kind})"
    if unit.kind not in CONTROL_KINDS:
        raise SettingsError(f"Control unit {i}: unknown type {unit.kind!r}; use one of {', '.join(CONTROL_KINDS)}.")
    if unit.image is None:
        raise SettingsError(f"{where} has no image. Upload a photo or a ready {unit.kind} map.")
    pre = unit.preprocessor or "auto"
    if pre not in ("auto", "none") and pre not in PREPROCESSORS:
        raise SettingsError(f"Unknown preprocessor {pre!r} for {unit.kind}; use auto, none or one of "
                        f"{', '.join(n for n, p in PREPROCESSORS.items() if p['kind'] == unit.kind)}.")
    if pre in PREPROCESSORS and PREPROCESSORS[pre]["kind"] != unit.kind:
        raise SettingsError(f"Preprocessor {pre!r} makes {PREPROCESSORS[pre]['kind']} maps, not {unit.kind}. Use "
                        f"{DEFAULT_PREPROCESSOR[unit.kind]} or none.")
    scale = _number(f"{where} scale", unit.scale, float, 0.0, 2.0, "Use a conditioning scale from 0 to 2.")
    start = _number(f"{where} start", unit.start, float, 0.0, 1.0, "Start is a fraction of the steps, 0 to 1.")
    end = _number(f"{where} end", unit.end, float, 0.0, 1.0, "End is a fraction of the steps, 0 to 1.")
    if start >= end:
        raise SettingsError(f"{where}: start ({start}) must be before end ({end}), e.g. start=0 end=0.6.")
    low, high = (_number(f"{where} {name} threshold", getattr(unit, name), int, 0, 255,
                         "Canny thresholds go from 0 to 255.") for name in ("low", "high"))
    if low >= high:
        raise SettingsError(f"{where}: the low threshold ({low}) must be below the high one ({high}).")
    return dataclasses.replace(unit, preprocessor=pre, scale=scale, start=start, end=end, low=low, high=high)


def valid_schedulers(name: str) -> list[str]:
    """The schedulers offered for a family: its kind (flow matching or not), less those unfit for it."""
    kin = family(name)
    return [n for n in SCHEDULERS if (n in FLOW_SCHEDULERS) == kin.flow and n not in kin.unfit_schedulers]
