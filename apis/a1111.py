"""The AUTOMATIC1111 web API (`/sdapi/v1/...`), so tools built for A1111 (Open WebUI, SillyTavern, Krita plugins,
the `webuiapi` package) can use the studio as their backend.

A1111's field names map onto one `Request` (`a1111_request`); the engine's `check_request` judges it, and its
message is the 422 reply. Unknown fields are ignored, as A1111 ignores them. Images go both ways as base64 PNG;
the replies carry A1111's `info` JSON string and the `parameters` echo. `sd_model_checkpoint` (in /options or a
request's `override_settings`) picks the model: one choice for all API callers, as in A1111; the chat keeps its own.
/options keeps only what the studio reads (`KEPT_OPTIONS`); any other option is named in the answer and dropped, so
callers can't park data on the server. Lone surrogates in any field become U+FFFD before anything runs
(`plain_json`), so the `parameters` echo of a made image can always be written.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse
from PIL import ImageOps

from apis.auth import Gate
from apis.routes import JsonBody, guarded_route, owner_of, while_connected
from engine.images.infotext import scheduler_from_a1111, take_lora_tags
from engine.request import MAX_COUNT, SCHEDULERS, ControlUnit, ImagePrompt, Request, UserError, valid_schedulers
from engine.result import Cancelled
from studio.jobs import Jobs, png_base64
from studio.line import Busy
from studio.parse import base64_image, fit_canvas, plain_json, shown, whole_number
from studio.requests import make_request
from studio.service import Studio, model_names, prompt_texts
from studio.usage import RateLimited

log = logging.getLogger(__name__)

SCHEDULE_LABELS = {label.lower(): label for *_, label in SCHEDULERS.values()}  # "karras" -> "Karras"


# our Request field -> A1111's name for it, so a settings error names the field the client sent
FIELDS = {"guidance": "cfg_scale", "strength": "denoising_strength", "count": "batch_size x n_iter",
          "negative": "negative_prompt", "scheduler": "sampler_name", "hires_strength": "denoising_strength",
          "upscale": "hr_scale", "mask_blur": "mask_blur", "inpaint_padding": "inpaint_full_res_padding",
          "model": "sd_model_checkpoint"}
KEPT_OPTIONS = ("sd_model_checkpoint", "samples_format")  # what the studio reads of A1111's /options
MAX_MODEL_NAME = 300  # characters: a listed name, a Hub id or a file path is far shorter


def failure(e: BaseException) -> JSONResponse:
    """A1111's answer to a failed request, one table for every route: busy 503, the user's mistake 422 (naming
    A1111's field; the operator's own advice stays in the server log), anything else 500 without details."""
    if isinstance(e, Busy):
        return error(503, "Busy", str(e))
    if isinstance(e, RateLimited):
        return error(429, "RateLimited", str(e))
    if isinstance(e, UserError):
        if e.operator:
            log.info("operator advice for an A1111 client's error: %s", e.operator)
        field = FIELDS.get(e.field or "")
        return error(422, "UserError", f"{e}" + (f" (A1111 field: {field})" if field else ""))
    log.error("A1111 API request failed", exc_info=e)
    return error(500, type(e).__name__, f"Generation failed inside the app ({type(e).__name__}); see the server log.")


def error(status: int, kind: str, message: str) -> JSONResponse:
    """A1111's error body (its api_middleware's `handle_exception`)."""
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status)


def model_choice(value) -> str:
    """The model an sd_model_checkpoint names, or A1111's 422 naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"sd_model_checkpoint must be a model name (GET /sdapi/v1/sd-models), got {shown(value)}.",
                        field="model")
    if len(value) > MAX_MODEL_NAME:
        raise UserError(f"sd_model_checkpoint is {len(value)} characters long; a model name has at most "
                        f"{MAX_MODEL_NAME} (GET /sdapi/v1/sd-models lists them).", field="model")
    return value.strip()


def a1111_request(payload: dict[str, Any], model: str, defaults: dict, img2img: bool,
                  known_styles: tuple = ()) -> Request:
    """The Request for an A1111 txt2img/img2img body; absent fields take the model's defaults (not A1111's), as
    through every door (`defaults`: engine.Engine.defaults of `model`)."""
    def get(name: str, default=None):
        value = payload.get(name)
        return default if value is None else value

    prompt = get("prompt", "")
    if not isinstance(prompt, str):
        raise UserError(f"prompt must be text, got {type(prompt).__name__}.")
    prompt, loras = take_lora_tags(prompt)  # A1111 writes LoRAs into the prompt: <lora:name:0.8>
    count = (whole_number("batch_size", get("batch_size", 1), 1, MAX_COUNT)
             * whole_number("n_iter", get("n_iter", 1), 1, MAX_COUNT))
    seed = get("seed", -1)
    request = make_request(prompt, model, negative=get("negative_prompt", ""), steps=get("steps"),
                           guidance=get("cfg_scale"), seed=None if seed == -1 else seed, width=get("width"),
                           height=get("height"), count=count, loras=loras,
                           scheduler=a1111_scheduler(get("sampler_name") or get("sampler_index"), get("scheduler"),
                                                     defaults))
    request.controls = controlnet_units(get("alwayson_scripts", {}))
    styles = get("styles", [])
    if not isinstance(styles, list) or not all(isinstance(x, str) for x in styles):
        raise UserError("styles must be a list of style names (plugins/styles/).")
    request.styles = [x for x in styles if x in known_styles]  # as A1111: a style it does not have is skipped
    request.image_prompts = image_prompts(get("alwayson_scripts", {}))
    if not img2img:
        if get("enable_hr", False):  # hires fix: the image resized hr_scale times, then refined
            request.upscale, request.hires_strength = get("hr_scale", 2.0), get("denoising_strength", 0.7)
        return request
    images = get("init_images", [])
    if not isinstance(images, list) or not images:
        raise UserError("img2img needs init_images: a list holding one base64 image (the first one is used; an "
                        "editing model such as Qwen-Image-Edit-2509 or FLUX.2 takes the others too).")
    request.init_image = base64_image(images[0], "init_images[0]")
    if len(images) > 1 and defaults.get("edit_images", 0) > 1:  # an editing model that combines images
        request.references = [base64_image(image, f"init_images[{i}]") for i, image in enumerate(images[1:], 1)]
    request.strength = get("denoising_strength")  # None: the engine's (1 for an inpaint: it draws what is asked)
    if get("mask") is not None:
        size = [None if get(n) is None else whole_number(n, get(n), 1, 8192) for n in ("width", "height")]
        init, mask, request.width, request.height = fit_canvas(
            request.init_image, base64_image(get("mask"), "mask"), *size, defaults["multiple"])
        request.init_image, request.mask = init, ImageOps.invert(mask) if get("inpainting_mask_invert", 0) else mask
        request.mask_blur = get("mask_blur", 4)
        if get("inpaint_full_res", get("inpainting_full_res", False)):  # "only masked", with this margin
            request.inpaint_padding = get("inpaint_full_res_padding", get("inpainting_full_res_padding", 32))
    return request


# sd-webui-controlnet's preprocessor ("module") names -> ours; the kind of map comes from the model name or these
CONTROL_MODULES = {"none": "none", "canny": "canny", "lineart": "lineart", "lineart_realistic": "lineart",
                   "depth_anything": "depth-anything", "depth_anything_v2": "depth-anything", "depth_midas": "midas",
                   "depth": "midas", "openpose": "openpose", "openpose_full": "openpose",
                   "dw_openpose_full": "openpose"}
CONTROL_WORDS = {"canny": "edge", "lineart": "edge", "softedge": "edge", "scribble": "edge", "edge": "edge",
                 "depth": "depth", "pose": "pose"}


def controlnet_units(scripts) -> list[ControlUnit]:
    """The enabled ControlNet units of sd-webui-controlnet's `alwayson_scripts.controlnet.args` (as webuiapi and
    Krita send); its IP-Adapter units are image prompts (`image_prompts`)."""
    return [unit for unit in _units(scripts) if isinstance(unit, ControlUnit)]


def image_prompts(scripts) -> list[ImagePrompt]:
    """sd-webui-controlnet units whose module or model is an IP-Adapter ("ip-adapter_clip_sd15", "ip-adapter_sd15
    [...]"): their image is an image prompt at the unit's weight."""
    return [unit for unit in _units(scripts) if isinstance(unit, ImagePrompt)]


def _units(scripts) -> list:
    if not isinstance(scripts, dict):
        return []
    entry = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    args = entry.get("args", []) if isinstance(entry, dict) else []
    units = []
    for i, unit in enumerate(args if isinstance(args, list) else []):
        if not isinstance(unit, dict) or not unit.get("enabled", True):
            continue
        module, model = str(unit.get("module") or "none").lower(), str(unit.get("model") or "").lower()
        if "ip-adapter" in module or "ip-adapter" in model or "ip_adapter" in model:
            image = unit.get("image") or unit.get("input_image")
            image = image.get("image") if isinstance(image, dict) else image
            if not image:
                raise UserError(f"ControlNet unit {i} (IP-Adapter) has no image: send it as base64 in 'image'.")
            units.append(ImagePrompt(base64_image(image, f"ControlNet unit {i} image"), unit.get("weight")))
            continue
        kind = next((k for word, k in CONTROL_WORDS.items() if word in model), None) or next(
            (k for word, k in CONTROL_WORDS.items() if word in module), None)
        if kind is None:
            raise UserError(f"ControlNet unit {i}: can't tell edge, depth or pose from model {model!r} and module "
                            f"{module!r}; name one of them in the model (e.g. 'control_edge').")
        image = unit.get("image") or unit.get("input_image")
        image = image.get("image") if isinstance(image, dict) else image
        if not image:
            raise UserError(f"ControlNet unit {i} ({kind}) has no image: send it as base64 in 'image'.")
        control = ControlUnit(kind=kind, image=base64_image(image, f"ControlNet unit {i} image"),
                              preprocessor=CONTROL_MODULES.get(module, module), scale=unit.get("weight", 1.0),
                              start=unit.get("guidance_start", 0.0), end=unit.get("guidance_end", 1.0))
        if control.preprocessor == "canny":
            control.low, control.high = unit.get("threshold_a", 100), unit.get("threshold_b", 200)
        units.append(control)
    return units


def a1111_scheduler(sampler, schedule, defaults: dict) -> str | None:
    """Our scheduler for an A1111 sampler name and schedule type (None: the model's default); `defaults`:
    engine.Engine.defaults of the model."""
    if not sampler:
        return None
    if not isinstance(sampler, str):
        raise UserError(f"sampler_name must be text, got {type(sampler).__name__}.")
    label = SCHEDULE_LABELS.get(str(schedule or "").strip().lower(), None)
    name = scheduler_from_a1111(sampler, label)
    if defaults["flow"] and sampler.strip().lower() == "euler":
        name = "flow-euler"  # a flow-matching model (Flux): its one Euler
    if name not in defaults["schedulers"]:
        raise UserError(f"Sampler {sampler!r} is not available for this {defaults['label']} model; use one of "
                        f"{', '.join(sorted(sampler_names(defaults['family'])))} (GET /sdapi/v1/samplers).")
    return name


def sampler_names(family: str) -> dict[str, list[str]]:
    """A1111 sampler name -> our schedulers that are it, for a family."""
    out: dict[str, list[str]] = {}
    for name in valid_schedulers(family):
        out.setdefault(SCHEDULERS[name][2], []).append(name)
    return out


def info_json(result) -> str:
    """A1111's `info`: a JSON string describing the batch (what its clients read back)."""
    r = result.request
    n = len(result.images)
    sampler, schedule = SCHEDULERS[r.scheduler][2:]
    width, height = result.images[0].size if n else (r.width, r.height)
    return json.dumps({
        "prompt": r.prompt, "all_prompts": [r.prompt] * n, "negative_prompt": r.negative,
        "all_negative_prompts": [r.negative] * n, "seed": result.seeds[0], "all_seeds": result.seeds,
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0, "width": width, "height": height,
        "sampler_name": sampler, "scheduler": schedule, "cfg_scale": r.guidance, "steps": r.steps, "batch_size": n,
        "restore_faces": False, "sd_model_name": result.model_name, "sd_model_hash": None,
        "denoising_strength": r.strength if r.init_image is not None else None,
        "extra_generation_params": result.extra, "index_of_first_image": 0, "infotexts": result.infotexts,
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": r.mask is not None, "version": "studio", "notes": result.notes,
    }, default=str)


def build_router(studio: Studio, jobs: Jobs, gate: Gate) -> APIRouter:
    """The `/sdapi/v1` routes for `studio`, each behind `gate`."""
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"], route_class=guarded_route(gate, error))
    options: dict[str, Any] = {"sd_model_checkpoint": studio.default_model, "samples_format": "png"}

    def generate(payload: dict[str, Any], img2img: bool, owner: str, cancel):
        payload = plain_json(payload)  # before the image is made: its echo below can always be written
        echo = {**payload, "init_images": None, "mask": None} if img2img else dict(payload)
        try:
            override = payload.get("override_settings") or {}
            model = override.get("sd_model_checkpoint") if isinstance(override, dict) else None
            model = model_choice(model) if model else options["sd_model_checkpoint"]
            request = a1111_request(payload, model, studio.engine.defaults(model), img2img,
                                    tuple(prompt_texts(studio)[0]))
            result = jobs.run(request, cancel, owner)
        except Cancelled:  # /interrupt: A1111 answers with what it has; we have no half-made image
            return {"images": [], "parameters": echo, "info": json.dumps({"interrupted": True, "infotexts": []})}
        except Exception as e:
            return failure(e)
        return {"images": [png_base64(result, i) for i in range(len(result.images))], "parameters": echo,
                "info": info_json(result)}

    @router.post("/txt2img")
    async def txt2img(http: HttpRequest, payload: JsonBody):
        """Text to image with A1111's fields (prompt, negative_prompt, steps, cfg_scale, seed, width, height,
        sampler_name, scheduler, batch_size, n_iter, enable_hr, hr_scale, denoising_strength, override_settings,
        alwayson_scripts.controlnet)."""
        return await while_connected(http, lambda cancel: generate(payload, False, owner_of(http, gate), cancel))

    @router.post("/img2img")
    async def img2img(http: HttpRequest, payload: JsonBody):
        """Image to image from init_images[0] at denoising_strength; with `mask` (white = repaint) an inpaint,
        mask_blur, inpainting_mask_invert, inpaint_full_res + inpaint_full_res_padding ("only masked")."""
        return await while_connected(http, lambda cancel: generate(payload, True, owner_of(http, gate), cancel))

    @router.get("/sd-models")
    def sd_models():
        return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
                for name in model_names(studio, options["sd_model_checkpoint"])]

    @router.get("/loras")
    def loras():
        try:
            listing = studio.engine.plugin_listing(options["sd_model_checkpoint"])
        except UserError as e:
            return failure(e)
        return [{"name": row["name"], "alias": row["name"], "path": row.get("path"),
                 "metadata": {k: row.get(k) for k in ("family", "trigger", "description", "compatible", "why")}}
                for row in listing if row.get("kind", "lora") == "lora"]

    def current(answer):
        """`answer(defaults)` for the API's current model, or A1111's error when that model can't be used."""
        try:
            return answer(studio.engine.defaults(options["sd_model_checkpoint"]))
        except UserError as e:
            return failure(e)

    @router.get("/samplers")
    def samplers():
        return current(lambda d: [{"name": name, "aliases": ours, "options": {}}
                                  for name, ours in sampler_names(d["family"]).items()])

    @router.get("/schedulers")
    def schedulers():
        return current(schedule_types)

    def schedule_types(defaults: dict):
        labels = dict.fromkeys(SCHEDULERS[name][3] for name in defaults["schedulers"])
        return [{"name": label.lower(), "label": label, "aliases": None, "default_rho": -1,
                 "need_inner_model": False} for label in labels]

    @router.get("/options")
    def get_options():
        return options

    @router.post("/options")
    def set_options(payload: JsonBody):
        """Settings for every API caller: `sd_model_checkpoint` switches the model (loaded on first use),
        `samples_format` may only be "png" (the one format made). Other options are not kept: the answer names
        them ({"ignored": [...], "detail"}); with none, A1111's null."""
        payload = plain_json(payload)
        try:
            model = payload.get("sd_model_checkpoint")
            if model is not None:
                model = model_choice(model)
                try:
                    studio.engine.defaults(model)  # the engine's words when it can't be used here
                except UserError as e:
                    raise UserError(str(e), field="model", operator=e.operator) from None
            fmt = payload.get("samples_format")
            if fmt is not None and (not isinstance(fmt, str) or fmt.lower() != "png"):
                raise UserError(f"samples_format {shown(fmt)}: this server makes PNG images only; send 'png' or "
                                "leave samples_format out.")
        except UserError as e:
            return failure(e)
        if model is not None:
            options["sd_model_checkpoint"] = model
        ignored = [key[:60] for key in payload if key not in KEPT_OPTIONS][:50]
        if not ignored:
            return None
        log.info("A1111 options not kept (the studio does not read them): %s", ", ".join(ignored))
        return {"ignored": ignored, "detail": f"Not kept: {', '.join(ignored)}. This server reads only "
                f"{' and '.join(KEPT_OPTIONS)} of A1111's options."}

    @router.get("/progress")
    def progress(http: HttpRequest):
        """The caller's own API generation (`Gate.owner`, as /interrupt): running, the fraction of its steps done
        and the ETA in seconds; waiting, its place in the line and about how long until it starts (in textinfo,
        and as job_no of job_count). Nobody else's work shows."""
        mine = jobs.mine(owner_of(http, gate))
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                 "job_count": len(mine), "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                 "sampling_steps": 0}
        if not mine:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        job = next((j for j in mine if j.started_at is not None), mine[0])
        state.update(interrupted=job.cancel.is_set(), job=f"task({job.number})",
                     job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(job.queued_at)))
        if job.started_at is None:  # waiting: its place, and the line's estimate
            usage = getattr(studio, "usage", None)
            soon = usage.estimate(job.place) if usage is not None and job.place else None
            about = f", about {soon:.0f} s" if soon is not None else ""
            where = f"{job.place} in line" if job.place else "joining the line"
            return {"progress": 0.0, "eta_relative": soon or 0.0, "state": state, "current_image": None,
                    "textinfo": f"Waiting: {where}{about}"}
        fraction = job.step / job.total if job.total else 0.0
        elapsed = time.time() - job.started_at
        state.update(sampling_step=job.step, sampling_steps=job.total, job_no=mine.index(job))
        return {"progress": fraction, "eta_relative": elapsed / fraction - elapsed if fraction else 0.0,
                "state": state, "current_image": None, "textinfo": f"Step {job.step}/{job.total}"}

    @router.post("/interrupt")
    def interrupt(http: HttpRequest):
        """Stop the caller's own API generation running now (within a step): the same signed-in user, else the
        same address and account (`Gate.owner`); another client's jobs, the MCP tools' and the chat's are not
        touched. An admin (--admin)
        stops every generation, waiting or running, through every door. A1111's null."""
        if gate.who(http.headers.get("authorization")) in studio.admins:
            studio.stop_all()
            return None
        jobs.interrupt(owner_of(http, gate))
        return None

    @router.get("/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    return router
