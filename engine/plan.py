"""`plan_generation`: what a generation will do, decided before anything loads. Pure and torch-free: the checked
request with every default filled in (the family's, a LoRA plugin's own sampling, the edit's size and strength,
the seed), the pipeline job it runs, and the notes known in advance. `Engine.generate` then loads and samples
exactly this plan; a door or a test can ask `Engine.plan(request)` for it without a GPU or a load.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable

from . import edit
from .families import Family
from .families import family as family_of
from .request import Note, Request, check_request
from .sources.resolve import Source

Sampling = Callable[[Request], tuple[Request, object]]  # a LoRA plugin's own steps/guidance/scheduler, and a note


@dataclass(frozen=True)
class GenerationPlan:
    request: Request  # checked, every default filled in, the seed chosen
    source: Source  # the model, resolved
    job: str  # the pipeline variant: txt2img, img2img, control, control_img2img, inpaint
    edit: str | None  # inpaint, outpaint, upscale or None
    notes: tuple = field(default_factory=tuple)  # known before sampling (a plugin's sampling, ignored words)
    infotext: dict = field(default_factory=dict)  # what the prompt was built from (styles, wildcard picks)

    @property
    def family(self) -> Family:
        return family_of(self.source.family)

    @property
    def seeds(self) -> list[int]:
        return [self.request.seed + i for i in range(self.request.count)]

    @property
    def active_controls(self) -> list:
        """The control units that change anything: a unit at scale 0 is skipped (Flux would otherwise draw
        different noise for it)."""
        return [u for u in self.request.controls if u.scale > 0]


def plan_generation(request: Request, source: Source, sampling: Sampling | None = None,
                    text_dirs: tuple = ()) -> GenerationPlan:
    """The plan for `request` on `source`; `sampling` fills a LoRA plugin's own sampling where the request left
    it to the model (engine.plugins.manager.PluginManager.sampling); `text_dirs`: the plugin folders whose
    styles/ and wildcards/ build the prompt (engine/prompt_texts.py). Raises the engine's UserErrors."""
    kin = family_of(source.family)
    notes = []
    if request.loras and sampling is not None:
        request, note = sampling(request)
        notes += [note] if note else []
    request, moved = image_prompts_as_references(request, kin, source.variant)
    notes += [moved] if moved else []
    req = check_request(edit_size(request, kin, source.variant), source.family, source.variant)
    if req.seed is None:
        req = dataclasses.replace(req, seed=random.SystemRandom().randrange(2**32))
    from .prompt_texts import expand

    req, infotext = expand(req, text_dirs)
    if req.upscale and req.hires_strength and kin.edit_limit(source.variant):
        req = dataclasses.replace(req, hires_strength=0.0)
        notes.append(Note(f"{kin.label} edits by instruction and has no image-to-image pass for the upscale: the "
                          "image was resized alone (an upscaler plugin resizes with more detail).", kind="upscale"))
    kind = edit.edit_kind(req)
    if kind in ("inpaint", "outpaint"):
        job = "inpaint"
    elif kind == "upscale" and req.init_image is not None:
        job = "img2img"  # the hires pass is the whole job
    elif any(u.scale > 0 for u in req.controls):
        job = "control_img2img" if req.init_image is not None else "control"
    else:
        job = "img2img" if req.init_image is not None else "txt2img"
    if req.negative and not kin.negative_prompt:
        notes.append(f"{kin.label} ignores the negative prompt.")
    low, high = kin.trained_sides or (0, 1 << 30)
    if not (low <= min(req.width, req.height) and max(req.width, req.height) <= high):
        notes.append(Note(f"The {kin.label} model learned sizes from {low} to {high} pixels a side: at "
                          f"{req.width}x{req.height} objects may split, repeat or stretch. Stay within {low}-{high} "
                          "(any aspect of the panel's presets) for its best images.", kind="size"))
    return GenerationPlan(req, source, job, kind, tuple(notes), infotext)


def image_prompts_as_references(req: Request, kin: Family, variant: str) -> tuple[Request, Note | None]:
    """A model that reads reference images natively (FLUX.2 [dev] and [klein], Qwen-Image-Edit Plus, Kontext)
    takes image prompts as its references: after the image it edits (image 2, 3, ...), or, drawing from text
    (FLUX.2), as image 1, 2, ... at the size asked for or its default: the same call as an edit of them. Others keep
    them for their IP-Adapter (or refuse them, saying what they take)."""
    if not req.image_prompts or not kin.edit_limit(variant):
        return req, None
    images = [p.image for p in req.image_prompts]
    if req.init_image is not None:
        moved = dataclasses.replace(req, image_prompts=[], references=list(req.references) + images)
        first = len(req.references) + 2
    elif "txt2img" in kin.jobs(variant):
        d = kin.defaults_for(variant)
        moved = dataclasses.replace(req, image_prompts=[], init_image=images[0],
                                    references=images[1:] + list(req.references),
                                    width=req.width or d.width, height=req.height or d.height)
        first = 1
    else:  # an editor alone, with nothing to edit: its own refusal says how to start
        return req, None
    scaled = any(p.scale is not None for p in req.image_prompts)
    return moved, Note(f"{kin.label} reads image prompts as its reference images (image {first} on: name them in "
                       f"the prompt, e.g. 'the cat of image {first}')" + (", without a scale." if scaled else "."),
                       kind="image-prompt")


def edit_size(req: Request, kin: Family, variant: str) -> Request:
    """An edit of an image (an editing model's too) works at that image's size (grown by outpaint borders) unless a
    size is given."""
    editing = edit.edit_kind(req) is not None or kin.edit_limit(variant)
    if req.init_image is None or not editing or (req.width and req.height):
        return req
    from .images.loading import open_image

    d = kin.defaults_for(variant)
    image = open_image(req.init_image, "The init image")  # the header only
    width, height = edit.size_from_init(req, image.size, d.multiple, d.max_size)
    return dataclasses.replace(req, width=req.width or width, height=req.height or height)
