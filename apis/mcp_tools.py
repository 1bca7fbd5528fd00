"""The studio as MCP tools for agents (`python app.py --mcp`): generate, edit, list_models, list_plugins. Gradio's
own MCP server (streamable HTTP at /gradio_api/mcp/) turns these events into tools, their docstrings into the
descriptions a model reads.

`add_tools(demo, studio)` wires them into the page before `launch(mcp_server=True)`; `apis.mount` then keeps
the MCP server to these tools alone (the UI's own endpoints are not tools) and puts it behind --auth.
Generations wait in the studio's line like every chat message.
"""

from __future__ import annotations

import json
import logging

import gradio as gr

from apis.mcp_calls import call_of, progress_teller
from engine.request import ControlUnit, ImagePrompt, UserError
from engine.result import Cancelled
from studio.files import LinkedFiles
from studio.jobs import Jobs
from studio.line import Busy
from studio.parse import base64_image, fit_canvas, lora_list
from studio.quota import library_owner
from studio.requests import make_request
from studio.service import Studio, model_names, plugin_rows

log = logging.getLogger(__name__)

# the tools' endpoints; the tools are named after their functions (generate, list_models, list_plugins, edit)
ENDPOINTS = ("mcp_generate", "mcp_list_models", "mcp_list_plugins", "mcp_edit")


def add_tools(demo: gr.Blocks, studio: Studio, jobs: Jobs | None = None) -> Jobs:
    """Add the tools' events to `demo` (before launch). Returns the jobs they run in."""
    jobs = jobs or studio.jobs
    files = LinkedFiles("studio-mcp-")

    def generate(prompt: str, negative: str = "", model: str = "", steps: float = 0, guidance: float = -1,
                 seed: float = -1, width: float = 0, height: float = 0, scheduler: str = "default",
                 loras: str = "", control: str = "", control_image: str = "", control_scale: float = 1.0,
                 image_prompt: str = "", image_prompt_scale: float = -1, style_ref: str = "",
                 http: gr.Request = None):
        """Paint one image from a text prompt with the studio's diffusion model and return it as a PNG (its
        settings are stored inside the file). Every argument but the prompt is optional; leave it at its default
        to use the model's own default. The built-in model knows a small world of shapes: prompts like 'a {small|big}
        {colour} {circle|square|triangle|person} {on the left|on the right|at the top|at the bottom|in the center},
        {colour} background'; it paints 64x64 images best. Call list_models for other models.

        Args:
            prompt: Required. What the image should show, e.g. 'a big red circle on the left, blue background'.
            negative: What the image should not show (negative prompt), e.g. 'blurry'. Empty: nothing.
            model: Which model paints: 'builtin', a Hugging Face id or an id from list_models. Empty: the server's.
            steps: Sampling steps, 1 to 200; more is slower and usually cleaner. 0: the model's default (built-in: 10).
            guidance: How strictly to follow the prompt, 0 to 30. -1: the model's default (built-in: 2).
            seed: Random seed, 0 to 4294967295; the same seed and settings give the same image. -1: a random seed.
            width: Image width in pixels, a multiple of 8 (16 for Flux). 0: the model's native size (built-in: 64).
            height: Image height in pixels, a multiple of 8 (16 for Flux). 0: the model's native size (built-in: 64).
            scheduler: euler, euler-a, dpm++2m, unipc, ddim, heun or lms (Flux: flow-euler). 'default': the model's.
            loras: LoRA plugins with weights, e.g. 'outline:0.8, pastel:1'; see list_plugins. Empty: none.
            control: ControlNet: 'edge', 'depth' or 'pose' to follow the layout of control_image. Empty: none.
            control_image: The picture the layout comes from: an 'Image URL' a tool returned, or base64 PNG/JPEG.
            control_scale: How strongly to follow control_image, 0 to 2. Default 1.
            image_prompt: A reference image the result follows beside the prompt (its colours, shapes, look): an
                'Image URL' a tool returned, or base64 PNG/JPEG. With the built-in model the prompt may then leave
                colour and shape out: 'a big one on the left, white background'. Empty: none.
            image_prompt_scale: How strongly to follow image_prompt, 0 (not at all) to 2. -1: the adapter's default.
            style_ref: The name of a style reference saved in the chat (/save-style NAME) to use as an image prompt
                too: the caller's own when signed in; any on a server of this machine only. Empty: none.

        Returns:
            The PNG and its URL, then the settings used: model, size, steps, guidance, seed, scheduler, time.
        """
        def request():
            units = []
            if (control or "").strip():  # a photo, preprocessed by the kind's default (Canny for edges)
                units.append(ControlUnit(kind=control.strip(), image=_image(control_image, "control image", files),
                                         scale=control_scale))
            looks = [ImagePrompt(_image(image_prompt, "image prompt", files),
                                 None if image_prompt_scale == -1 else image_prompt_scale)] if (
                image_prompt or "").strip() else []
            if (style_ref or "").strip():
                looks.append(ImagePrompt(saved_style(style_ref.strip(), call_of(http))))
            return make_request(prompt or "", (model or "").strip() or studio.default_model, form=True,
                                negative=negative, steps=steps, guidance=guidance, seed=seed, width=width,
                                height=height, scheduler=scheduler, loras=lora_list(loras, "'outline:0.8, pastel'"),
                                controls=units, image_prompts=looks)

        return paint(request, http)

    def edit(image: str, prompt: str, mask: str = "", strength: float = 0, upscale: float = 0,
             negative: str = "", model: str = "", steps: float = 0, guidance: float = -1, seed: float = -1,
             image2: str = "", image3: str = "", http: gr.Request = None):
        """Change an image that generate or edit returned (or any PNG/JPEG sent as base64) and return the new PNG:
        redraw it following a prompt (refine), repaint only a masked part (inpaint), or make it larger with added
        detail (upscale). The result keeps the image's size unless upscaled.

        Args:
            image: Required. The 'Image URL' that generate or edit returned, or the image itself as base64 PNG/JPEG.
            prompt: Required. What the result should show, e.g. 'a big green square in the center, white background'.
            mask: Inpaint mask as base64 PNG (or an Image URL), the image's size: white = repaint, black = keep.
            strength: How much to change, 0.01 (almost nothing) to 1 (repaint fully). 0: the default, 0.6 for a
                refine and 1 for an inpaint (the masked part drawn anew).
            upscale: Make the image this many times larger, above 1 up to 4 (e.g. 2), refined at strength 0.35. 0: no.
            negative: What the result should not show. Empty: nothing.
            model: Which model paints, as in generate. Empty: the server's model.
            steps: Sampling steps, 1 to 200 (the edit runs steps x strength of them). 0: the model's default.
            guidance: How strictly to follow the prompt, 0 to 30. -1: the model's default.
            seed: Random seed, 0 to 4294967295. -1: a random seed.
            image2: A second image for an editing model that combines images (Qwen-Image-Edit-2509, FLUX.2), as
                'image 2' of the prompt, e.g. 'put the cat of image 2 on the sofa of image 1'. Empty: none.
            image3: A third image, as image2. Empty: none.

        With an editing model (list_models says which: edit_images above 0) the prompt is an instruction, e.g.
        'make the sky purple', and strength is not used.

        Returns:
            The new PNG and its URL, then the settings used.
        """
        def request():
            model_name = (model or "").strip() or studio.default_model
            more = [_image(x, f"image{i}", files) for i, x in ((2, image2), (3, image3)) if (x or "").strip()]
            req = make_request(prompt or "", model_name, form=True, negative=negative, steps=steps,
                               guidance=guidance, seed=seed, strength=strength,
                               init_image=_image(image, "image", files), references=more)
            if upscale:
                req.upscale, req.hires_strength = upscale, 0.35
            if mask:
                multiple = studio.engine.defaults(model_name)["multiple"]
                req.init_image, req.mask, req.width, req.height = fit_canvas(
                    req.init_image, _image(mask, "mask", files), None, None, multiple)
            return req

        return paint(request, http)

    def saved_style(name: str, call) -> str:
        """The image of style reference `name`: a signed-in caller's own; on a loopback server (the operator's own
        machine, where the CLI reads them all) anyone's."""
        library = studio.library
        user = call.user if call is not None else ""
        owner = library_owner(user) if user.startswith("user:") else (None if studio.local_paths else user)
        path = library.style_ref(owner, name) if library is not None and library.enabled and owner != "" else None
        if path is None:
            have = ", ".join(library.style_refs(owner)) if library is not None and library.enabled else ""
            raise UserError(f"There is no style reference {name!r} for you here. Save one in the chat with "
                            f"/save-style {name} on a selected image. Yours: {have or 'none yet'}.")
        return path

    def paint(make_request, http: gr.Request | None):
        """Run the request `make_request()` builds in the studio's line; its first image saved for the client.
        `http` (gradio fills it in, it is no tool argument) carries the call's stop switch (`apis.mcp_calls`).
        A client that asked for progress (an MCP progressToken) hears the call's own place in the line while it
        waits, then its steps (`apis.mcp_calls.progress_teller`)."""
        call = call_of(http)
        told = progress_teller(getattr(studio, "usage", None))

        try:
            result = jobs.run(make_request(), call and call.cancel, call.owner if call else "mcp",
                              user=call.user if call else None, told=told)
        except (Busy, UserError) as e:
            raise gr.Error(str(e)) from None
        except Cancelled:
            raise gr.Error("The generation was stopped on the server; call the tool again.") from None
        return str(files.save(result, 0)), result.settings_line()

    def list_models() -> str:
        """List the models this studio can paint with, as JSON: each with its id (pass it as generate's model),
        family (builtin, sd15, sdxl, flux, sd3, chroma, zimage, qwenimage, flux2, flux2klein), default steps,
        guidance and size, and edit_images: how many images one edit takes (0: not an editing model; above 0, edit's
        prompt is an instruction and image2, image3 may join). Hugging Face ids not listed work too when the server
        can download them.

        Returns:
            JSON: {"default": the server's model, "models": [{"id", "family", "label", "steps", "guidance", "width",
            "height", "edit_images", "text_to_image"}]}.
        """
        models = []
        for name in model_names(studio, studio.default_model):
            try:
                d = studio.engine.defaults(name)
            except UserError:
                continue  # not usable here (offline and not cached): not offered
            models.append({"id": name, "family": d["family"], "label": d["label"], "steps": d["steps"],
                           "guidance": d["guidance"], "width": d["width"], "height": d["height"],
                           "edit_images": d["edit_images"], "text_to_image": d["text_to_image"]})
        return json.dumps({"default": studio.default_model, "models": models})

    def list_plugins(model: str = "") -> str:
        """List the LoRA plugins (styles and concepts) as JSON, judged against a model: name (pass it in
        generate's loras as 'name:weight'), default weight, trigger word, description, and whether it fits.

        Args:
            model: The model to judge them against, as in generate. Empty: the server's model.

        Returns:
            JSON: [{"name", "weight", "compatible", "why", "description"}].
        """
        rows = plugin_rows(studio.engine, (model or "").strip() or studio.default_model)
        return json.dumps([{k: row[k] for k in ("name", "weight", "compatible", "why", "description")}
                           for row in rows])

    with demo:
        with gr.Column(visible=False):
            text = lambda label, value="": gr.Textbox(value, label=label)  # noqa: E731
            number = lambda label, value: gr.Number(value, label=label)  # noqa: E731
            inputs = [text("prompt"), text("negative"), text("model"), number("steps", 0), number("guidance", -1),
                      number("seed", -1), number("width", 0), number("height", 0), text("scheduler", "default"),
                      text("loras"), text("control"), text("control_image"), number("control_scale", 1.0),
                      text("image_prompt"), number("image_prompt_scale", -1), text("style_ref")]
            plugins_model = text("model")
            image, line = gr.Image(type="filepath", format="png", label="image"), gr.Textbox(label="settings")
            listing = gr.Textbox(label="json")
            # queue=False: gradio's MCP server calls these directly; their generations wait in the studio's line
            tool = dict(queue=False, api_visibility="public")
            gr.Button(visible=False).click(generate, inputs, [image, line], api_name=ENDPOINTS[0], **tool)
            gr.Button(visible=False).click(list_models, [], listing, api_name=ENDPOINTS[1], **tool)
            gr.Button(visible=False).click(list_plugins, plugins_model, listing, api_name=ENDPOINTS[2], **tool)
            edit_inputs = [text("image"), text("prompt"), text("mask"), number("strength", 0),
                           number("upscale", 0), text("negative"), text("model"), number("steps", 0),
                           number("guidance", -1), number("seed", -1), text("image2"), text("image3")]
            gr.Button(visible=False).click(edit, edit_inputs, [image, line], api_name=ENDPOINTS[3], **tool)
    return jobs


def keep_only_tools(server) -> None:
    """Let gradio's MCP server (`demo.mcp_server_obj`) offer these tools alone, not the UI's own endpoints."""
    server.tool_to_endpoint = {name: endpoint for name, endpoint in server.tool_to_endpoint.items()
                               if endpoint.lstrip("/") in ENDPOINTS}


def _image(text: str, what: str, files: LinkedFiles) -> bytes:
    """An image argument: the URL (or file name) of an image these tools made, or base64 data."""
    text = (text or "").strip()
    name = text.rsplit("/", 1)[-1]
    path = files.find(name)
    if path is not None:
        return path.read_bytes()
    if name.startswith("studio-") or text.startswith(("http://", "https://", "/")):
        raise UserError(f"The {what} {text[:80]!r} is not an image these tools made (or it is older than an hour). "
                        "Pass the 'Image URL' that generate or edit returned, or the image as base64.")
    return base64_image(text, f"The {what}")
