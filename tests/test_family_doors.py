"""Every door reaches every new family (and the image prompts): the CLI, gradio's /generate, A1111 (webuiapi),
OpenAI (openai) and MCP (the official SDK), each driven by its real client against a started server, on tiny SD3.5,
Chroma, Z-Image, Qwen-Image, FLUX.2 [dev] and [klein] folders. One prompt and seed give the same pixels through
all five; the editors take several images, and the built-in model an image prompt, through each door alike.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import subprocess
import sys

import mcp  # noqa: F401  (a missing client fails the run, never skips it)
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from engine.config import ROOT
from tests.test_apis import free_port

USER, PASSWORD, TOKEN = "bob", "staple-battery", "tok-doors"
PROMPT = "a big red circle on the left, blue background"
NEW = ["sd3", "chroma", "zimage", "qwenimage", "flux2", "flux2klein"]


@pytest.fixture(scope="module")
def server(engine):
    """The server `app.py --auth --mcp --api-token` opens on this machine (models may be folders here)."""
    from serving import ServeConfig, open_server

    port = free_port()
    demo = open_server(ServeConfig(port=port, auth=(USER, PASSWORD), mcp=True, api_token=TOKEN), engine)
    yield {"url": f"http://127.0.0.1:{port}", "port": port}
    demo.close()


def mcp_call(server, tool: str, arguments: dict):
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main():
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with streamablehttp_client(server["url"] + "/gradio_api/mcp/", headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool(tool, arguments)

    answer = asyncio.run(main())
    assert not answer.isError, answer.content[0].text
    return Image.open(io.BytesIO(base64.b64decode(next(c.data for c in answer.content if c.type == "image"))))


def cli(tmp_path, *args) -> Image.Image:
    out = tmp_path / "cli.png"
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "generate", *args, "--out", str(out), "--outputs",
                          "none"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return Image.open(out)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def same(images: dict) -> None:
    first = next(iter(images.values())).convert("RGB")
    for door, image in images.items():
        assert image.size == first.size, door
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(first)), f"{door} differs"


@pytest.mark.parametrize("family", NEW)
def test_one_prompt_and_seed_give_the_same_pixels_through_every_door(server, tiny_model, tmp_path, family):
    from gradio_client import Client

    model, seed = str(tiny_model(family)), 5
    images = {"cli": cli(tmp_path, "--model", model, "--prompt", PROMPT, "--seed", str(seed), "--steps", "2",
                         "--width", "64", "--height", "64")}
    assert f"Seed: {seed}" in images["cli"].text["parameters"]  # the PNG keeps its parameters
    client = Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    images["/generate"] = Image.open(client.predict(PROMPT, "", model, 2, -1, seed, 64, 64, 1, "default",
                                                    api_name="/generate")[0])
    sd = webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], username=USER, password=PASSWORD, sampler=None,
                           scheduler=None, steps=None)
    images["a1111"] = sd.txt2img(prompt=PROMPT, seed=seed, steps=2, width=64, height=64, cfg_scale=None,
                                 override_settings={"sd_model_checkpoint": model}).image
    oa = openai.OpenAI(base_url=server["url"] + "/v1", api_key=TOKEN, max_retries=0)
    made = oa.images.generate(prompt=PROMPT, model=model, size="64x64", response_format="b64_json",
                              extra_body={"seed": seed, "steps": 2})
    images["openai"] = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))
    images["mcp"] = mcp_call(server, "generate", {"prompt": PROMPT, "model": model, "seed": seed, "steps": 2,
                                                  "width": 64, "height": 64})
    same(images)


def test_an_edit_of_two_images_is_the_same_through_every_door(server, tiny_model, tmp_path):
    model, seed = str(tiny_model("qwenimage-edit-plus")), 6
    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))
    red.save(tmp_path / "red.png")
    blue.save(tmp_path / "blue.png")
    instruction = "paint the circle of image 1 in the colour of image 2"
    images = {"cli": cli(tmp_path, "--model", model, "--init", str(tmp_path / "red.png"), "--ref",
                         str(tmp_path / "blue.png"), "--prompt", instruction, "--seed", str(seed), "--steps", "2")}
    assert "Edit images:" in images["cli"].text["parameters"]
    sd = webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], username=USER, password=PASSWORD, sampler=None,
                           scheduler=None, steps=None)
    images["a1111"] = sd.img2img(images=[red, blue], prompt=instruction, seed=seed, steps=2, width=64, height=64,
                                 cfg_scale=None, denoising_strength=None,
                                 override_settings={"sd_model_checkpoint": model}).image
    oa = openai.OpenAI(base_url=server["url"] + "/v1", api_key=TOKEN, max_retries=0)
    made = oa.images.edit(image=[("red.png", (tmp_path / "red.png").read_bytes(), "image/png"),
                                 ("blue.png", (tmp_path / "blue.png").read_bytes(), "image/png")],
                          prompt=instruction, model=model, response_format="b64_json",
                          extra_body={"seed": seed, "steps": 2})
    images["openai"] = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))
    images["mcp"] = mcp_call(server, "edit", {"image": b64(red), "image2": b64(blue), "prompt": instruction,
                                              "model": model, "seed": seed, "steps": 2})
    same(images)
    alone = mcp_call(server, "edit", {"image": b64(red), "prompt": instruction, "model": model, "seed": seed,
                                      "steps": 2})
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(images["mcp"].convert("RGB"), np.int16)).mean() > 0.05


def test_an_image_prompt_is_the_same_through_every_door(server, tmp_path):
    """The CLI (--image-prompt), A1111 (an sd-webui-controlnet IP-Adapter unit), OpenAI (edits with an image, no
    mask and nothing transparent: a reference) and MCP (generate's image_prompt) on the built-in model."""
    from PIL import ImageDraw

    ref = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(ref).polygon([(32, 8), (56, 54), (8, 54)], fill=(40, 160, 60))
    ref.save(tmp_path / "ref.png")
    prompt, seed = "a big one on the left, yellow background", 8
    images = {"cli": cli(tmp_path, "--prompt", prompt, "--image-prompt", str(tmp_path / "ref.png"), "--seed",
                         str(seed))}
    assert "Image prompt: shapes-reference" in images["cli"].text["parameters"]
    sd = webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], username=USER, password=PASSWORD, sampler=None,
                           scheduler=None, steps=None)
    unit = webuiapi.ControlNetUnit(image=ref, module="ip-adapter_clip_sd15", model="ip-adapter_sd15", weight=1.0)
    # a fresh alwayson_scripts: webuiapi's default dict would keep the unit for every later call in this process
    images["a1111"] = sd.txt2img(prompt=prompt, seed=seed, width=None, height=None, cfg_scale=None,
                                 controlnet_units=[unit], alwayson_scripts={}).image
    oa = openai.OpenAI(base_url=server["url"] + "/v1", api_key=TOKEN, max_retries=0)
    made = oa.images.edit(image=("ref.png", (tmp_path / "ref.png").read_bytes(), "image/png"), prompt=prompt,
                          model="builtin", response_format="b64_json", extra_body={"seed": seed})
    images["openai"] = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))
    images["mcp"] = mcp_call(server, "generate", {"prompt": prompt, "seed": seed, "image_prompt": b64(ref)})
    same(images)
    plain = mcp_call(server, "generate", {"prompt": prompt, "seed": seed})
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(images["mcp"].convert("RGB"), np.int16)).mean() > 1


@pytest.mark.parametrize("family", NEW)
def test_the_chat_reaches_each_new_family_and_its_png_restores(engine, tiny_model, family):
    """A chat message on each new family (the page's own handler, no browser): the reply's image and settings
    line, and the PNG's settings read back as the request that made it."""
    from engine.images.metadata import read_png_settings
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    model = str(tiny_model(family))
    studio, session = Studio(engine, default_model=model), Session.new()
    try:
        settings = Settings(model=model, width=64, height=64, steps=2)
        list(handlers.send(studio, session, f"{PROMPT} --seed 12", settings))
        reply = session.history[-1]["content"]
        assert reply.startswith("#1") and "seed 12" in reply, reply
        shot = session.shots[0]
        request, _ = read_png_settings(shot.path)
        assert (request.model, request.seed, request.steps, request.width) == (model, 12, 2, 64)
        again = engine.generate(dataclasses.replace(request, model=model))
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(shot.path).convert("RGB")))
    finally:
        session.close()
