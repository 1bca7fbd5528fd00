"""OpenAI's Images API (`POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models`), so the
official `openai` client and apps made for DALL-E can use the studio:
`OpenAI(base_url="http://127.0.0.1:7860/v1", api_key=...)`.

`model` is `builtin` or any model the studio accepts; OpenAI's own names (dall-e-2, dall-e-3, gpt-image-*) and
no model mean the server's model. `size` is "WIDTHxHEIGHT" ("auto": the model's native size); `n` 1-16;
`response_format` "url" (the default, a link to the PNG here, kept an hour) or "b64_json". Extra fields the
studio understands: negative_prompt, steps, guidance_scale, seed; on edits, strength (default 1). Unknown fields
are ignored. Errors come in OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from typing import Any

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import FileResponse, JSONResponse

from apis.auth import Gate
from apis.routes import JsonBody, guarded_route, owner_of, while_connected
from engine.images.loading import MAX_BYTES
from engine.request import MAX_COUNT, ImagePrompt, Request, UserError
from engine.result import Cancelled
from studio.files import LinkedFiles
from studio.jobs import Jobs, png_bytes
from studio.line import Busy
from studio.parse import fit_canvas, shown, whole_number
from studio.requests import make_request
from studio.service import Studio, model_names
from studio.usage import RateLimited

log = logging.getLogger(__name__)

OPENAI_MODELS = re.compile(r"(dall-e-\d|gpt-image-.*|chatgpt-image.*)")
SIZE = re.compile(r"\s*(\d{1,6})\s*x\s*(\d{1,6})\s*")  # more digits: no size, and no int() of 5000 digits


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


# our Request field -> the body's own name for it (OpenAI's `param`)
FIELDS = {"guidance": "guidance_scale", "count": "n", "negative": "negative_prompt", "width": "size",
          "height": "size", "prompt": "prompt", "steps": "steps", "seed": "seed", "strength": "strength",
          "model": "model"}


def failure(e: BaseException) -> JSONResponse:
    """OpenAI's answer to a failed request, one table for every route: our own ApiError as it is, busy 503, an
    interrupt 409, the user's mistake 400 with its `param` (the operator's own advice stays in the server log),
    anything else 500 without details."""
    if isinstance(e, ApiError):
        return error(e.status, e.kind, str(e), e.param, e.code)
    if isinstance(e, Busy):
        return error(503, "server_error", str(e), code="server_busy")
    if isinstance(e, RateLimited):
        return error(429, "requests", str(e), code="rate_limit_exceeded")
    if isinstance(e, Cancelled):
        return error(409, "server_error", "The generation was interrupted on the server; send it again.",
                     code="interrupted")
    if isinstance(e, UserError):
        if e.operator:
            log.info("operator advice for an OpenAI client's error: %s", e.operator)
        return error(400, "invalid_request_error", str(e), param=FIELDS.get(e.field or ""))
    log.error("OpenAI API request failed", exc_info=e)
    return error(500, "server_error", f"Generation failed inside the app ({type(e).__name__}); see the server log.")


def error(status: int, kind: str, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error body."""
    kind = kind if kind in ("invalid_request_error", "server_error") else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=400 if status == 422 else status)


def parse_size(size) -> tuple[int | None, int | None]:
    if size in (None, "", "auto"):
        return None, None
    match = SIZE.fullmatch(size) if isinstance(size, str) else None
    if not match:
        raise ApiError(400, f"size must be 'WIDTHxHEIGHT' (e.g. '512x512') or 'auto', got {shown(size)}.",
                       param="size")
    return int(match[1]), int(match[2])


def number(fields: dict, name: str, kind=float):
    """A numeric field; multipart forms send numbers as text (at most 20 characters of it: no int() of 5000 digits)."""
    value = fields.get(name)
    if isinstance(value, str):
        try:
            value = kind(value) if len(value) <= 20 else None
        except ValueError:
            value = None
        if value is None:
            raise ApiError(400, f"{name} must be a number, got {shown(fields[name])}.", param=name) from None
    return value


def studio_request(fields: dict[str, Any], studio: Studio) -> Request:
    """The Request for an OpenAI images body (the shared part of generations and edits)."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt is required: describe the image, e.g. 'a big red circle on the left, blue "
                       "background'.", param="prompt")
    model = fields.get("model")
    if not model or (isinstance(model, str) and OPENAI_MODELS.fullmatch(model)):
        model = studio.default_model
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a model name, got {type(model).__name__}.", param="model")
    width, height = parse_size(fields.get("size"))
    n = number(fields, "n", int)
    try:
        count = 1 if n is None else whole_number("n", n, 1, MAX_COUNT)  # n=0 is refused, not taken for 1
    except UserError as e:
        raise ApiError(400, str(e), param="n") from None
    seed = number(fields, "seed", int)
    return make_request(prompt, model, negative=fields.get("negative_prompt") or "",
                        steps=number(fields, "steps", int), guidance=number(fields, "guidance_scale"), seed=seed,
                        width=width, height=height, count=count)


def has_alpha(image_file: bytes) -> bool:
    """Whether an image can mark a part to edit (OpenAI's transparent pixels): it has an alpha channel."""
    from engine.images.loading import open_image

    source = open_image(image_file, "The image")
    return "A" in source.getbands() or "transparency" in source.info


def openai_mask(mask_file: bytes | None, image_file: bytes):
    """OpenAI's mask (transparent = edit) as ours (white = repaint): the mask's alpha, else the image's own."""
    from engine.images.loading import open_image

    source = open_image(mask_file if mask_file is not None else image_file, "The mask" if mask_file else "The image")
    if "A" not in source.getbands() and "transparency" not in source.info:
        which = "The mask" if mask_file is not None else "Without a mask, the image"
        raise ApiError(400, f"{which} must be a PNG with transparent pixels where the image should change "
                       "(OpenAI's convention: fully transparent = edit).", param="mask")
    alpha = source.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    if mask.getextrema()[1] == 0:
        raise ApiError(400, "The mask has no fully transparent pixels, so nothing would change. Make the part to "
                       "edit fully transparent.", param="mask")
    return mask


def build_router(studio: Studio, jobs: Jobs, gate: Gate) -> APIRouter:
    """The `/v1/images/*` and `/v1/models` routes for `studio`, behind `gate`."""
    router = APIRouter(prefix="/v1", tags=["OpenAI"], route_class=guarded_route(gate, error))
    files = LinkedFiles("studio-openai-")

    def answer(request: Request, fields: dict, base_url: str, owner: str, cancel):
        fmt = fields.get("response_format") or "url"
        try:
            if fmt not in ("url", "b64_json"):
                raise ApiError(400, f"response_format must be 'url' or 'b64_json', got {fmt!r}.",
                               param="response_format")
            result = jobs.run(request, cancel, owner)
        except Exception as e:
            return failure(e)
        data = []
        for i in range(len(result.images)):
            if fmt == "b64_json":
                data.append({"b64_json": base64.b64encode(png_bytes(result, i)).decode("ascii"),
                             "revised_prompt": None})
            else:  # the link is the key, as OpenAI's signed URLs
                name = files.save(result, i).name
                data.append({"url": f"{base_url.rstrip('/')}/v1/images/files/{name}", "revised_prompt": None})
        width, height = result.images[0].size if result.images else (result.request.width, result.request.height)
        return {"created": int(time.time()), "data": data, "size": f"{width}x{height}", "output_format": "png"}

    @router.get("/models")
    def models():
        """The models `model` may name (OpenAI's list shape), as the A1111 API's sd-models."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "studio"}
                                           for name in model_names(studio, studio.default_model)]}

    @router.post("/images/generations")
    async def generations(http: HttpRequest, payload: JsonBody):
        """Text to image: prompt, model, n, size, response_format (and negative_prompt, steps, guidance_scale,
        seed)."""
        try:
            request = studio_request(payload, studio)
        except (ApiError, UserError) as e:
            return failure(e)
        return await while_connected(http, lambda cancel: answer(request, payload, str(http.base_url),
                                                                  owner_of(http, gate), cancel))

    @router.post("/images/edits")
    async def edits(http: HttpRequest):
        """Inpaint (multipart): image, mask (transparent = repaint; without one, the image's transparent part),
        prompt, n, size, response_format, model (and strength, negative_prompt, steps, guidance_scale, seed). With
        an editing model (Qwen-Image-Edit, FLUX.2, Kontext) and no mask, the prompt is an instruction for the image
        (and the further `image[]` files, as image 2, 3, ...), as OpenAI's own edits take several images. With
        another model, no mask and no alpha channel, the images are references (image prompts) for a new one."""
        try:
            form = await http.form(max_part_size=MAX_BYTES)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            images = form.getlist("image") or form.getlist("image[]")
            if not images or isinstance(images[0], str):
                raise ApiError(400, "image is required: the picture to edit, as a file in the form.", param="image")
            image = await images[0].read()
            mask_part = form.get("mask")
            mask_file = await mask_part.read() if mask_part is not None and not isinstance(mask_part, str) else None
            request = studio_request(fields, studio)
            defaults = studio.engine.defaults(request.model)
            if mask_file is None and defaults["edit_images"]:  # an editing model: the prompt is the instruction
                request.init_image = image
                request.references = [await part.read() for part in images[1:] if not isinstance(part, str)]
                return await while_connected(http, lambda cancel: answer(request, fields, str(http.base_url),
                                                                          owner_of(http, gate), cancel))
            if mask_file is None and not has_alpha(image):  # nothing can mark a part to change: references
                request.image_prompts = [ImagePrompt(await part.read() if part is not images[0] else image)
                                         for part in images if not isinstance(part, str)]
                return await while_connected(http, lambda cancel: answer(request, fields, str(http.base_url),
                                                                          owner_of(http, gate), cancel))
            request.init_image, request.mask, request.width, request.height = fit_canvas(
                image, openai_mask(mask_file, image), request.width, request.height, defaults["multiple"])
            request.strength = number(fields, "strength")  # None: the engine's inpaint default (1)
        except (ApiError, UserError) as e:
            return failure(e)
        return await while_connected(http, lambda cancel: answer(request, fields, str(http.base_url),
                                                                  owner_of(http, gate), cancel))

    links = APIRouter()  # no credentials: the link itself is the key (a browser showing it has no header to send)

    @links.get("/images/files/{name}")
    def linked(name: str):
        path = files.find(name)
        if path is None:
            return error(404, "invalid_request_error", "No such image (links last an hour).")
        return FileResponse(path, media_type="image/png")

    router.include_router(links)  # included routes keep their own (unguarded) route class
    return router
