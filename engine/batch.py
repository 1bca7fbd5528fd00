"""Several users' text-to-image requests sampled in one pipeline call (a shared server's batching).

Requests batch when one call can make them all: the same model, job, size, steps, guidance and scheduler, and
nothing of their own the call cannot hold per image (an init image, a mask, ControlNets, image prompts, LoRAs,
prompt weights). Each request keeps its own prompt, negative prompt and seeds: one CPU generator per image, as a
request alone has, so its pixels are its own (equal up to float rounding: a batch may pick other kernels). Each gets
its own Result, metadata and notes.
"""

from __future__ import annotations

import dataclasses
import time

from .prompt_syntax import has_syntax
from .request import Request


def batch_key(engine, request: Request) -> tuple | None:
    """What requests must share to be sampled in one call; None when `request` can't be batched."""
    if (request.init_image is not None or request.mask is not None or request.controls or request.image_prompts
            or request.loras or request.upscale or request.references or request.outpaint or request.styles
            or has_syntax(request.prompt) or has_syntax(request.negative or "") or "__" in request.prompt):
        return None
    try:
        plan = engine.plan(request)
    except Exception:  # a bad request runs alone and says what is wrong
        return None
    r = plan.request
    if plan.job != "txt2img":
        return None
    return (plan.source.location, plan.source.variant, r.width, r.height, r.steps, r.guidance, r.scheduler)


def generate_batch(engine, requests: list[Request], progress=None, cancel=None) -> list:
    """One pipeline call for `requests` (all with one `batch_key`): a Result each, in order."""
    import torch

    from . import edit
    from .images import infotext
    from .result import Result

    t0 = time.perf_counter()
    plans = [engine.plan(r) for r in requests]
    first = plans[0]
    kin, source = first.family, first.source
    with engine._lock:
        loaded = engine.load(source)
        pipe = loaded.variant("txt2img")
        pipe.scheduler = loaded.scheduler(first.request.scheduler)
        if engine.plugins is not None:  # no LoRA of an earlier request stays on
            engine._plugin_manager().apply(loaded, dataclasses.replace(first.request, loras=[]))
        if engine.image_prompts is not None:  # nor an image-prompt adapter
            engine.image_prompts.prepare(loaded, pipe, first.request, [])
        prompts, negatives, generators, notes = [], [], [], []
        for plan in plans:
            text = plan.request.prompt
            if kin.caption_words:
                from .vocabulary import caption_words, vocabulary_note

                text = caption_words(text)
                note = vocabulary_note(plan.request.prompt, source.location)
                notes.append(list(plan.notes) + ([note] if note else []))
            else:
                notes.append(list(plan.notes))
            prompts += [text] * plan.request.count
            negatives += [plan.request.negative or kin.empty_negative or ""] * plan.request.count
            generators += [torch.Generator("cpu").manual_seed(s) for s in plan.seeds]
        r = first.request
        kwargs = dict(prompt=prompts, num_inference_steps=r.steps, **{kin.guidance_arg: r.guidance}, width=r.width,
                      height=r.height, num_images_per_prompt=1, generator=generators, output_type="np",
                      callback_on_step_end=engine._callback(r, progress, cancel))
        if kin.negative_prompt:
            kwargs["negative_prompt"] = negatives
        if "height" not in edit.parameters(pipe):
            kwargs.pop("width"), kwargs.pop("height")
        images, broken = engine._sample(pipe, kwargs, cancel)
    seconds = time.perf_counter() - t0
    results, at = [], 0
    for plan, said in zip(plans, notes):
        req, n = plan.request, plan.request.count
        texts = [infotext.infotext(dataclasses.replace(req, seed=s), s, source.name, None, dict(plan.infotext))
                 for s in plan.seeds]
        results.append(Result(images[at:at + n], plan.seeds, req, source.name, source.family, texts, [], seconds,
                              said, extra=dict(plan.infotext), batch=len(requests)))
        at += n
    return results

