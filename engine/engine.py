"""`Engine.generate(request)`: the one place that calls a diffusers pipeline.

Steps: 1. resolve and (re)use the cached model  2. check the request against its family  3. pick the
pipeline variant (text-to-image, image-to-image, inpaint, ControlNet; engine/edit.py prepares edits) and
scheduler  4. LoRAs and control maps  5. sample, with progress and cancel through `callback_on_step_end`, then
the hires pass of an upscale  6. images + their metadata (engine/result.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from . import edit
from .config import EngineConfig
from .families import family as family_of
from .plan import GenerationPlan, plan_generation
from .prompt_texts import has_wildcards
from .request import ModelError, Note, Request, UserError, defaults_for, valid_schedulers
from .result import Cancelled, Result, broken_note, to_pil
from .sources import loading, pinned
from .sources.hub import Hub
from .sources.resolve import Resolver, Source

log = logging.getLogger(__name__)

Progress = Callable[[int, int, object], None]  # (step, total, latents) -> None


class Engine:
    """Loads models on demand, keeps them cached, and runs generations one at a time."""

    def __init__(self, config: EngineConfig | None = None, **settings):
        """`Engine(config)`, or `Engine(device="cpu", ...)` with EngineConfig's fields (an unknown one fails)."""
        if config is not None and settings:
            raise TypeError("Give an EngineConfig or its fields as keywords, not both.")
        self.config = config or EngineConfig(**settings)
        cfg = self.config
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.device = loading.pick_device(cfg.device)
        self.dtype = loading.pick_dtype(self.device, cfg.dtype)
        self.offload = cfg.offload  # auto | on | off
        # speed settings, defaults by device (benchmarks/RESULTS.md): compile's warm-up (~2 min on this CPU, 10 s
        # to 3 min on an H200) pays only for long sessions, so it is opt-in; channels_last helped the CPU UNet
        self.compile = cfg.compile == "on"
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.device == "cpu")
        self.cache = loading.ModelCache(int((cfg.memory_budget_gb or _default_budget_gb(self.device)) * 2**30))
        self.hub = Hub(cfg.offline, cfg.offline_reason)
        self.sources = Resolver(self.hub, local_paths=cfg.local_paths)
        self._lock = threading.Lock()
        self.plugins = None  # engine.plugins.manager.PluginManager, made on first LoRA use
        self.controls = None  # engine.control.ControlManager, made on first control use
        self.upscalers = None  # engine.upscalers.Upscalers, made on first upscaler use
        self.image_prompts = None  # engine.image_prompts.ImagePrompts, made at the first generation

    # ------------------------------------------------------------------------------------ models
    def resolve(self, model: str | None) -> Source:
        """Which model a `--model` string names (cached; local paths only where the config allows them)."""
        return self.sources.resolve(model)

    def allow_path(self, model: str) -> None:
        """Let this one local model be used even where users may not name paths (the server's own --model)."""
        self.sources.allow_path(model)

    def load(self, model: str | Source) -> loading.LoadedModel:
        """The loaded model for a `--model` string; a failed load leaves the cache as it was."""
        source = model if isinstance(model, Source) else self.resolve(model)
        key = source.location
        loaded = self.cache.get(key)
        if loaded is not None:
            return loaded
        pipe = loading.load_pipeline(source, self.device, self.dtype, self.hub)
        loaded = loading.LoadedModel(source, pipe, loading.pipeline_bytes(pipe), dict(pipe.scheduler.config))
        self._place(loaded)
        self.cache.put(key, loaded)
        return loaded

    def warm(self, model: str) -> loading.LoadedModel:
        """Load a model ahead of its first use (e.g. in a background thread), never alongside a generation."""
        with self._lock:
            return self.load(model)

    def plugin_listing(self, model: str) -> list[dict]:
        """Plugins with `compatible`/`why` judged against the model's family, for the UI panel."""
        return self._plugin_manager().listing(self.resolve(model).family)

    def _place(self, loaded: loading.LoadedModel) -> None:
        """Move to the device; on a GPU too small for the model, model CPU offload instead (and say so)."""
        import torch

        pipe = loaded.pipe
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            if self.offload == "sequential":  # layer by layer: the least GPU memory, the slowest
                pipe.enable_sequential_cpu_offload()
                loaded.offload = True
                return
            if self.offload == "on" or (self.offload == "auto" and loaded.nbytes > 0.85 * free):
                pipe.enable_model_cpu_offload()
                loaded.offload = True
                log.warning("%s needs %.1f GB but the GPU has %.1f GB free: model CPU offload is on (slower).",
                            loaded.source.name, loaded.nbytes / 2**30, free / 2**30)
                return
        pipe.to(self.device)
        self._optimize(loaded)
        pinned.pin(pipe)  # every part is on self.device: no module walk at each call (engine/sources/pinned.py)

    def _memory_advice(self, model: str) -> str:
        """What the operator can do when a model does not fit: its family's own advice (Qwen-Image, FLUX.2: how
        much memory, which offload), else model CPU offload."""
        try:
            big = family_of(self.resolve(model).family).big
        except UserError:
            big = ""
        return big or "Or start the app with --offload on (or --offload sequential: least memory, slowest)."

    def _optimize(self, loaded: loading.LoadedModel) -> None:
        """Speed settings that keep outputs (channels_last) or change them only within float rounding (compile)."""
        import torch

        denoiser = getattr(loaded.pipe, "unet", None) or getattr(loaded.pipe, "transformer", None)
        if self.channels_last and hasattr(loaded.pipe, "unet"):
            loaded.pipe.unet.to(memory_format=torch.channels_last)
        vae = getattr(loaded.pipe, "vae", None)
        if self.channels_last and self.device == "cpu" and vae is not None and \
                all(p.dim() != 5 for p in vae.parameters()):  # a 3D-conv VAE (Qwen-Image's) has no channels_last
            # the built-in VAE decodes 47 -> 39 ms at 64x64 on one CPU thread; on a GPU it was slower (RESULTS.md)
            vae.to(memory_format=torch.channels_last)
        if self.compile and denoiser is not None:
            if hasattr(denoiser, "compile_repeated_blocks") and getattr(denoiser, "_repeated_blocks", None):
                denoiser.compile_repeated_blocks(fullgraph=True)  # regional: compiles one block, reuses it
            else:
                setattr(loaded.pipe, "unet" if hasattr(loaded.pipe, "unet") else "transformer",
                        torch.compile(denoiser))
            log.info("%s: torch.compile on (the first generation pays the warm-up)", loaded.source.name)

    # ---------------------------------------------------------------------------------- generate
    def generate(self, request: Request, progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> Result:
        if request.count > 1 and has_wildcards(request):
            return self._each_its_own_pick(request, progress, cancel)
        with self._lock:
            try:
                return self._generate(request, progress, cancel)
            except Exception as e:
                if _is_oom(e):
                    loading.free_memory()
                    raise ModelError(f"Out of {self.device.upper()} memory at {request.width}x{request.height}, "
                                     f"{request.count} image(s). Try a smaller size or fewer images.",
                                     operator="Or start the app with --offload on.") from None
                raise

    def _each_its_own_pick(self, request: Request, progress: Progress | None,
                           cancel: threading.Event | None) -> Result:
        """Several images of a prompt with wildcards: each image picks its own lines, by its own seed (seed, seed+1,
        ...), as A1111's dynamic prompts do; so image i restores alone to what it drew. One run per image."""
        import random

        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**32 - request.count)
        parts = [self.generate(dataclasses.replace(request, count=1, seed=(seed + i) % 2**32), progress, cancel)
                 for i in range(request.count)]
        return Result.joined(parts, dataclasses.replace(parts[0].request, count=request.count))

    def _generate(self, request: Request, progress: Progress | None, cancel: threading.Event | None) -> Result:
        import torch

        t0 = time.perf_counter()
        # 1. the plan: which model, every check and default of the request (before any slow load)
        plan = self.plan(request)
        req, source, kin, kind = plan.request, plan.source, plan.family, plan.edit
        family, name = source.family, source.name
        # 2. the model itself, from the cache when it was used before
        loaded = self.load(source)
        notes = list(plan.notes)
        if loaded.offload and self.offload == "auto":
            notes.append(Note(f"{name} is larger than the free GPU memory: model CPU offload is on (slower).",
                              kind="offload", operator=kin.big or "Start with --offload off to force it onto the "
                                                                  "GPU."))
        # 3. the pipeline variant the plan names, its inputs, the scheduler
        init = inpainting = control = None
        if req.init_image is not None:
            from .images.loading import fit_to, load_image

            init = load_image(req.init_image, "The init image")
            if kind != "outpaint":
                init = fit_to(init, req.width, req.height)
        if plan.job == "inpaint":
            inpainting = edit.inpaint_plan(loaded, req, init)
            pipe = inpainting.pipe
        elif plan.job.startswith("control"):
            active = dataclasses.replace(req, controls=plan.active_controls)
            control = self._control_manager().prepare(loaded, active, self._plugin_manager().manifests())
            pipe = loaded.variant(plan.job, controlnet=control.model)
        else:
            pipe = loaded.variant(plan.job)
        pipe.scheduler = loaded.scheduler(req.scheduler)
        _check_schedule(pipe.scheduler, req, name, defaults_for(family, source.variant).scheduler)
        # 4. LoRAs
        loras = (self._plugin_manager().apply(loaded, req, allow_paths=self.config.local_paths)
                 if (req.loras or self.plugins) else None)
        prompt = loras.prompt if loras else req.prompt
        if kin.caption_words:  # 'centre', 'middle', 'large': the captions' own words ('center', 'big')
            from .vocabulary import caption_words

            prompt = caption_words(prompt)
        notes += loras.notes if loras else []  # e.g. "fused for speed"
        # 4b. image prompts: the family's adapter on for this request, or off when it has none
        if self.image_prompts is None:
            from .image_prompts import ImagePrompts

            self.image_prompts = ImagePrompts(self.hub)
        looks = self.image_prompts.prepare(loaded, pipe, req, self._plugin_manager().manifests()
                                           if req.image_prompts else [], prompt)
        if getattr(pipe, "vae", None) is not None:  # tiled VAE decode only where the size needs it
            big = req.width * req.height > 1536 * 1536
            (pipe.vae.enable_tiling if big else pipe.vae.disable_tiling)()
        # 5. sample
        from .prompt_weights import conditioning

        # the prompt language: weights on CLIP encoders, editing and alternation swapped in between steps
        cond = conditioning(pipe, kin, prompt, (req.negative or kin.empty_negative) if kin.negative_prompt else None,
                            req.steps)
        notes += cond.notes
        kwargs = dict(**cond.kwargs, num_inference_steps=req.steps, **{kin.guidance_arg: req.guidance},
                      width=req.width, height=req.height, num_images_per_prompt=req.count,
                      generator=[torch.Generator("cpu").manual_seed(seed) for seed in plan.seeds],
                      callback_on_step_end=self._callback(req, progress, cancel, cond.at_step))
        if cond.at_step:  # the callback swaps the conditioning: the pipeline hands it over
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"] + (
                ["add_text_embeds"] if "pooled_prompt_embeds" in cond.kwargs else [])
        if kin.caption_words:
            from .vocabulary import vocabulary_note

            known = (tuple(loras.triggers) if loras else ()) + (("one",) if req.image_prompts else ())
            from .prompt_syntax import has_syntax, plain

            said = plain(req.prompt) if has_syntax(req.prompt) else req.prompt  # the user's words, not the marks
            note = vocabulary_note(said, source.location, known)  # "a big one": the image says what
            notes += [note] if note else []
        if inpainting is not None:
            kwargs.update(inpainting.kwargs)
        elif init is not None and kin.edit_limit(source.variant):  # an instruction edit: the images as they are
            kwargs.update(edit.editor_inputs(pipe, req, init))
        elif init is not None:
            kwargs["image"] = init
            kwargs["strength"] = req.strength
            if "height" not in edit.parameters(pipe):  # SD's image-to-image takes the image's size
                kwargs.pop("width"), kwargs.pop("height")
        elif plan.job == "txt2img" and "mask_image" in edit.parameters(pipe):  # Flux Fill: under a full mask
            from PIL import Image

            kwargs.update(image=Image.new("RGB", (req.width, req.height), (127, 127, 127)),
                          mask_image=Image.new("L", (req.width, req.height), 255))
        if control is not None:
            kwargs.update(control.kwargs(pipe))
        kwargs.update(looks.kwargs)
        if looks.replaces_prompt:
            kwargs.pop("prompt", None)
        kwargs.setdefault("output_type", "np")  # floats: non-finite pixels are seen before they turn black
        broken = 0
        if kind == "upscale" and init is not None:
            images = [init] * req.count
        else:
            images, broken = self._sample(pipe, kwargs, cancel)
        if inpainting is not None:
            images = inpainting.finish(images)
        if req.upscale:
            images, more = self._hires(loaded, req, images, kwargs, cancel)
            broken = max(broken, more)
        if broken:
            notes.append(broken_note(broken, len(images), req, self.dtype))
        # 6. metadata
        from .images import infotext

        seeds = plan.seeds
        extra = dict(loras.infotext) if loras else {}
        extra.update(inpainting.infotext if inpainting is not None else {})
        extra.update(looks.infotext)
        extra.update(plan.infotext)
        if isinstance(kwargs.get("image"), list) and inpainting is None:  # an edit of several images
            extra["Edit images"] = ", ".join(edit.digest(im) for im in kwargs["image"])
        elif init is not None and kin.edit_limit(source.variant):
            extra["Init image hash"] = edit.digest(init)
        if req.upscale:
            extra.update({"Hires upscale": f"{req.upscale:g}", "Hires upscaler": req.upscaler or "Lanczos",
                          "Hires denoising strength": req.hires_strength})
            if init is not None:
                extra["Init image hash"] = edit.digest(init)
        if control is not None:
            extra.update(control.infotext())
        if str(self.dtype) != "torch.float32":  # half precision changes pixels a little: say so
            extra["Precision"] = str(self.dtype).replace("torch.", "")
        infotexts = []
        for s in seeds:
            infotexts.append(infotext.infotext(dataclasses.replace(req, seed=s), s, name, None, extra))
        seconds = time.perf_counter() - t0
        log.info("generated %d image(s) %dx%d, %d steps with %s in %.2f s", req.count, req.width, req.height,
                 req.steps, name, seconds)
        return Result(images, seeds, req, name, family, infotexts,
                      control.maps if control is not None else [], seconds, notes,
                      triggers=loras.triggers if loras else [], extra=extra, broken=broken)

    def batch_key(self, request: Request):
        """What `request` must share with others to be sampled in one call (engine/batch.py); None: alone."""
        from .batch import batch_key

        return batch_key(self, request)

    def generate_batch(self, requests: list[Request], progress: Progress | None = None,
                       cancel: threading.Event | None = None) -> list[Result]:
        """One pipeline call for requests of one `batch_key`: a Result each (engine/batch.py)."""
        from .batch import generate_batch

        try:
            return generate_batch(self, requests, progress, cancel)
        except Exception as e:
            if _is_oom(e):
                loading.free_memory()
                raise ModelError(f"Out of {self.device.upper()} memory sampling {len(requests)} requests at once.",
                                 operator="Start with a smaller --batch.") from None
            raise

    def plan(self, request: Request) -> GenerationPlan:
        """What `request` will do (engine/plan.py): resolved, checked, every default filled in; nothing loaded."""
        source = self.resolve(request.model)
        return plan_generation(request, source, self._plugin_manager().sampling if request.loras else None,
                               tuple(self.config.plugin_dirs))

    def _sample(self, pipe, kwargs: dict, cancel: threading.Event | None) -> tuple[list, int]:
        """The pipeline's images as PIL, and how many held NaN/inf; Cancelled if the user stopped it."""
        out = pipe(**kwargs)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if kwargs.get("output_type") == "pil":  # diffusers' masked-area-only crop pastes back in PIL only
            return list(out.images), 0
        return to_pil(pipe, out.images)

    def _hires(self, loaded, req: Request, images: list, kwargs: dict,
               cancel: threading.Event | None) -> tuple[list, int]:
        """A1111's hires fix: each image resized `req.upscale` times (Lanczos), then refined by image-to-image."""
        d = defaults_for(loaded.source.family, loaded.source.variant)
        width, height = edit.upscaled_size(req, d.multiple, d.max_size)
        if req.upscaler:
            from .upscalers import Upscalers

            self.upscalers = self.upscalers or Upscalers(self.device)
            plugin = self.upscalers.find(req.upscaler, self._plugin_manager().manifests())
            file = self._plugin_manager().file_of(plugin)
            big = [self.upscalers.run(plugin, file, image, width, height) for image in images]
        else:
            big = [edit.hires_input(image, width, height) for image in images]
        if req.hires_strength == 0:
            return big, 0
        pipe = loaded.variant("img2img")
        pipe.scheduler = loaded.scheduler(req.scheduler)
        steps = max(req.steps, int(1 / req.hires_strength) + 1)  # at least one denoising step
        if getattr(pipe, "vae", None) is not None:
            (pipe.vae.enable_tiling if width * height > 1536 * 1536 else pipe.vae.disable_tiling)()
        args = {k: v for k, v in kwargs.items() if k in ("guidance_scale", "true_cfg_scale", "generator",
                                                       "callback_on_step_end", "output_type", "ip_adapter_image")}
        for key in ("prompt", "negative_prompt"):  # one prompt per image: the batch is the images
            if kwargs.get(key) is not None:
                args[key] = [kwargs[key]] * len(big)
        for key in ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
            if kwargs.get(key) is not None:  # a weighted prompt (its first conditioning)
                args[key] = kwargs[key].repeat(len(big), *[1] * (kwargs[key].dim() - 1))
        if "height" in edit.parameters(pipe):  # Flux's image-to-image resizes to these (its default: 1024)
            args.update(width=width, height=height)
        return self._sample(pipe, {**args, "image": big, "strength": req.hires_strength, "num_inference_steps": steps,
                                   "num_images_per_prompt": 1}, cancel)

    def _callback(self, req: Request, progress: Progress | None, cancel: threading.Event | None,
                  swaps: dict | None = None):
        """Progress, the stop switch, and (`swaps`: step -> conditioning) prompt editing's changes of prompt."""
        def on_step_end(pipe, step, timestep, callback_kwargs):
            if progress is not None and not (cancel is not None and cancel.is_set()):
                progress(step + 1, pipe.num_timesteps if hasattr(pipe, "num_timesteps") else req.steps,
                         callback_kwargs.get("latents"))
            if cancel is not None and cancel.is_set():
                pipe._interrupt = True  # diffusers skips every remaining step
            if swaps and step + 1 in swaps:
                callback_kwargs.update(_swapped(pipe, swaps[step + 1], req.count))
            return callback_kwargs

        return on_step_end

    def preview(self, model: str, latents):
        """A quick RGB preview of in-progress latents (full VAE decode for small models)."""
        import torch

        loaded = self.cache.get(self.resolve(model).location)
        if loaded is None or latents is None or not family_of(loaded.source.family).previews:
            return None
        vae = loaded.pipe.vae
        with torch.no_grad():
            img = vae.decode(latents[:1].to(vae.dtype) / vae.config.scaling_factor).sample
        return loaded.pipe.image_processor.postprocess(img, output_type="pil")[0]

    def _plugin_manager(self):
        if self.plugins is None:
            from .plugins.manager import PluginManager

            # compiled models swap LoRA weights in place (hot-swap) so the compiled graph survives a change
            self.plugins = PluginManager(list(self.config.plugin_dirs), hotswap=self.compile, hub=self.hub)
        return self.plugins

    def _control_manager(self):
        if self.controls is None:
            from .control import ControlManager

            self.controls = ControlManager(self.device, self.dtype, self.hub)
        return self.controls

    def defaults(self, model: str) -> dict:
        """A model's defaults and limits as plain values, for any door: family (and its label), steps, guidance,
        width, height, scheduler, the schedulers that fit, the size multiple and maximum, negative prompt or not, how
        many images one instruction edit takes (0: not an editing model) and whether it draws from text alone."""
        source = self.resolve(model)
        kin = family_of(source.family)
        d = kin.defaults_for(source.variant)
        return {"family": source.family, "label": kin.label, "steps": d.steps, "guidance": d.guidance,
                "width": d.size, "height": d.size, "scheduler": d.scheduler, "schedulers": valid_schedulers(kin.name),
                "multiple": d.multiple, "max_size": d.max_size, "negative_prompt": kin.negative_prompt,
                "flow": kin.flow, "trained_sides": kin.trained_sides, "edit_images": kin.edit_limit(source.variant),
                "text_to_image": "txt2img" in kin.jobs(source.variant)}


def _swapped(pipe, cond: dict, count: int) -> dict:
    """The next conditioning of a prompt that changes over the steps, as the pipeline's loop holds it: the
    negative and positive halves joined under classifier-free guidance, one copy per image."""
    import torch

    cfg = getattr(pipe, "do_classifier_free_guidance", False)

    def both(pos, neg):
        pos, neg = pos.repeat(count, *[1] * (pos.dim() - 1)), neg.repeat(count, *[1] * (neg.dim() - 1))
        return torch.cat([neg, pos]) if cfg else pos

    out = {"prompt_embeds": both(cond["prompt_embeds"], cond["negative_prompt_embeds"])}
    if "pooled_prompt_embeds" in cond:
        out["add_text_embeds"] = both(cond["pooled_prompt_embeds"], cond["negative_pooled_prompt_embeds"])
    return out


def _check_schedule(scheduler, req: Request, model: str, default: str) -> None:
    """Refuse a scheduler whose timesteps collapse on this model's noise schedule (Karras sigmas on the built-in
    model's near-zero terminal SNR repeat timesteps, and diffusers' solver then fails mid-run)."""
    if not hasattr(scheduler, "set_timesteps") or req.scheduler == default:
        return
    try:
        scheduler.set_timesteps(req.steps)
        steps = [int(t) for t in scheduler.timesteps]
    except Exception as e:  # a schedule diffusers cannot make at all
        raise UserError(f"Scheduler {req.scheduler!r} cannot run {req.steps} steps on {model} "
                        f"({type(e).__name__}). Use {default}, this model's default.") from None
    if len(set(steps)) < req.steps:  # fewer distinct timesteps than steps (Heun visits each twice, by design)
        raise UserError(f"Scheduler {req.scheduler!r} does not fit {model}'s noise schedule: at {req.steps} steps it "
                        f"repeats timesteps ({steps[:5]}...). Use {default}, this model's default, or another one.")


def _is_oom(e: Exception) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _default_budget_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(0).total_memory / 2**30 * 1.5  # offloaded models live in RAM too
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 * 0.5
    except (ValueError, OSError):
        return 8.0
