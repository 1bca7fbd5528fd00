"""The APIs other apps speak (apis/), each driven by its own real client against a started server: the server
`app.py --auth --mcp --api-token` opens (serving.open_server), the real built-in model on the CPU.

webuiapi -> /sdapi/v1 (AUTOMATIC1111), openai -> /v1/images (OpenAI). Generations share the chat's line.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time

import mcp  # noqa: E402,F401  (the server side of --mcp too; a missing client fails the run, never skips it)
import numpy as np
import openai  # noqa: E402
import pytest
import webuiapi  # noqa: E402
from PIL import Image

USER, PASSWORD, TOKEN = "alice", "correct-horse", "tok-123"
PROMPT = "a big red circle on the left, blue background"
FAST = dict(width=64, height=64, steps=4, cfg_scale=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine):
    """The server `app.py --auth --mcp --api-token` opens (serving.open_server: the page, the APIs and their
    front), on the built-in model; at most 2 generations may wait."""
    from serving import ServeConfig, open_server

    port = free_port()
    demo = open_server(ServeConfig(port=port, auth=(USER, PASSWORD), max_queue=2, mcp=True, api_token=TOKEN),
                       engine)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "studio": demo.studio}
    demo.close()


@pytest.fixture
def sd(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], username=USER, password=PASSWORD)


@pytest.fixture
def oa(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=TOKEN, max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def left_half_mask(size=(64, 64)) -> Image.Image:
    mask = Image.new("RGB", size, "black")
    mask.paste((255, 255, 255), (0, 0, size[0] // 2, size[1]))
    return mask


# ------------------------------------------------------------------------------------------- AUTOMATIC1111


def test_a1111_sampler_and_schedule_names_map_to_ours():
    from apis.a1111 import a1111_scheduler
    from engine.families import family
    from engine.request import UserError, valid_schedulers

    def of(name):  # what engine.Engine.defaults says of a model of this family
        kin = family(name)
        return {"family": name, "label": kin.label, "flow": kin.flow, "schedulers": valid_schedulers(name)}

    assert a1111_scheduler("DPM++ 2M", "karras", of("sdxl")) == "dpm++2m-karras"
    assert a1111_scheduler("DPM++ 2M Karras", None, of("sd15")) == "dpm++2m-karras"  # the old one-name spelling
    assert a1111_scheduler("Euler a", "automatic", of("builtin")) == "euler-a"
    assert a1111_scheduler("Euler", "simple", of("flux")) == a1111_scheduler("Euler", None, of("flux")) == "flow-euler"
    assert a1111_scheduler(None, None, of("sdxl")) is None  # the model's default
    with pytest.raises(UserError, match=r"'DPM\+\+ 2M' is not available for this FLUX.1 model"):
        a1111_scheduler("DPM++ 2M", None, of("flux"))


def test_a1111_txt2img_with_webuiapi(sd):
    result = sd.txt2img(prompt=PROMPT, seed=42, sampler_name="Euler a", scheduler="automatic", batch_size=2, **FAST)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [42, 43] and result.info["sampler_name"] == "Euler a"
    assert result.info["scheduler"] == "Automatic" and result.info["sd_model_name"] == "builtin"
    assert result.parameters["prompt"] == PROMPT  # the request echoed, as A1111 does
    assert "Seed: 42" in result.images[0].info["parameters"]  # our PNG metadata travels in the base64
    assert json.loads(result.images[1].info["studio"])["request"]["seed"] == 43
    again = sd.txt2img(prompt=PROMPT, seed=42, sampler_name="Euler a", batch_size=2, **FAST)
    assert again.images[1].tobytes() == result.images[1].tobytes()  # same seed and settings, same pixels


def test_a1111_img2img_and_inpaint(sd):
    from engine.edit import unmasked_change

    init = sd.txt2img(prompt=PROMPT, seed=7, **FAST).image
    plain = sd.img2img(images=[init], prompt="a big green square in the center, white background",
                       denoising_strength=0.8, seed=1, **FAST)
    assert plain.image.size == (64, 64) and plain.info["denoising_strength"] == 0.8
    mask = left_half_mask()
    painted = sd.img2img(images=[init], mask_image=mask, mask_blur=0, inpaint_full_res=False, prompt=PROMPT,
                         denoising_strength=1.0, seed=3, **FAST)
    assert painted.image.size == (64, 64) and painted.info["is_using_inpainting_conditioning"]
    assert unmasked_change(init, painted.image, mask) == 0  # the black (kept) half is the original, exactly
    assert unmasked_change(init, painted.image, Image.eval(mask, lambda v: 255 - v)) > 0  # the white half changed
    inverted = sd.img2img(images=[init], mask_image=mask, mask_blur=0, inpainting_mask_invert=1,
                          inpaint_full_res=False, prompt=PROMPT, denoising_strength=1.0, seed=3, **FAST)
    assert unmasked_change(init, inverted.image, Image.eval(mask, lambda v: 255 - v)) == 0
    only = sd.img2img(images=[init], mask_image=mask, prompt=PROMPT, seed=3, **FAST)  # webuiapi's defaults:
    assert only.image.size == (64, 64) and unmasked_change(init, only.image, mask, margin=8) == 0  # only masked


def test_a1111_controlnet_units_as_webuiapi_sends_them(sd):
    edge_map = Image.new("RGB", (64, 64))
    edge_map.paste((255, 255, 255), (16, 16, 48, 18))
    unit = webuiapi.ControlNetUnit(image=edge_map, module="none", model="control_edge [builtin]", weight=0.8,
                                   guidance_end=0.6)
    # a fresh alwayson_scripts each call: webuiapi writes the units into it (its default {} is shared)
    made = sd.txt2img(prompt=PROMPT, seed=5, controlnet_units=[unit], alwayson_scripts={}, **FAST)
    assert made.image.size == (64, 64) and "ControlNet 0" in made.info["infotexts"][0]
    with pytest.raises(RuntimeError, match="tell edge, depth or pose from model"):
        sd.txt2img(prompt=PROMPT, controlnet_units=[webuiapi.ControlNetUnit(image=edge_map, model="x")],
                   alwayson_scripts={}, **FAST)


def test_a1111_models_loras_samplers_options(sd, server):
    assert "builtin" in sd.util_get_model_names()
    assert sd.util_get_current_model() == "builtin"
    assert {"outline", "pastel"} <= {lora["name"] for lora in sd.get_loras()}
    # the built-in model's own lists: what works on it (Karras sigmas fail on its noise schedule: not offered)
    assert "DPM++ 2M" in sd.util_get_sampler_names() and "karras" not in sd.util_get_scheduler_names()
    bad = sd.session.post(f"{sd.baseurl}/options", json={"sd_model_checkpoint": "no-such/model-here"})
    assert bad.status_code == 422 and bad.json()["error"] == "UserError"
    assert "no-such/model-here" in bad.json()["detail"]
    assert sd.util_get_current_model() == "builtin"  # a refused switch changes nothing
    sd.util_set_model("builtin")
    assert sd.get_options()["sd_model_checkpoint"] == "builtin"
    lora = sd.txt2img(prompt=PROMPT + " <lora:outline:1>", seed=5, **FAST)
    assert "<lora:outline:1>" in lora.images[0].info["parameters"]


def test_a1111_bad_value_gets_the_engines_message_unknown_field_is_ignored(sd):
    with pytest.raises(RuntimeError) as caught:
        sd.txt2img(prompt=PROMPT, width=64, height=64, steps=500)
    status, text = caught.value.args
    assert status == 422 and json.loads(text)["detail"].startswith("steps = 500 is out of range")
    with pytest.raises(RuntimeError, match="is not available") as caught:
        sd.txt2img(prompt=PROMPT, sampler_name="Restart", **FAST)
    ok = sd.custom_post("txt2img", {"prompt": PROMPT, "frobnicate": {"x": 1}, "width": 64, "height": 64,
                                    "steps": 2}, baseurl=True)
    assert ok.image.size == (64, 64)
    with pytest.raises(RuntimeError, match="mask must be a base64"):
        sd.custom_post("img2img", {"prompt": PROMPT, "init_images": [webuiapi.b64_img(ok.image)], "mask": 5},
                       baseurl=True)


def test_a1111_progress_and_interrupt(sd):
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", sd.txt2img(prompt=PROMPT, width=64, height=64,
                                                                              steps=200, seed=1)))
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        state = sd.get_progress()
        if state["state"]["sampling_step"] > 0:
            break
        time.sleep(0.05)
    assert state["state"]["sampling_steps"] == 200 and 0 < state["progress"] < 1 and state["state"]["job_count"] == 1
    started = time.time()
    sd.interrupt()
    worker.join(30)
    assert out["r"].images == [] and out["r"].info["interrupted"]
    assert time.time() - started < 10
    assert sd.get_progress()["state"]["job_count"] == 0


def test_a1111_a_client_gone_stops_its_generation(sd, server):
    import httpx

    started = time.time()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and closes the connection
        httpx.post(server["url"] + "/sdapi/v1/txt2img", auth=(USER, PASSWORD), timeout=1.0,
                   json={"prompt": PROMPT, "steps": 200, "width": 64, "height": 64})
    while sd.get_progress()["state"]["job_count"] and time.time() - started < 30:
        time.sleep(0.1)
    assert sd.get_progress()["state"]["job_count"] == 0
    assert time.time() - started < 4  # 200 steps take ~10 s here: it stopped when the client went


# -------------------------------------------------------------------------------------------------- OpenAI


def test_openai_generations_with_the_openai_client(oa, server):
    import httpx

    made = oa.images.generate(model="builtin", prompt=PROMPT, n=2, size="64x64", response_format="b64_json",
                              extra_body={"seed": 11})
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in made.data]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert "Seed: 12" in images[1].info["parameters"]
    linked = oa.images.generate(model="dall-e-3", prompt=PROMPT, size="64x64", extra_body={"seed": 11})
    fetched = httpx.get(linked.data[0].url)  # the link needs no credentials: it is the key
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).tobytes() == images[0].tobytes()  # dall-e-3: the server's model
    assert "builtin" in [m.id for m in oa.models.list()]


def test_openai_edit_inpaints_the_transparent_part(oa):
    from engine.edit import unmasked_change

    made = oa.images.generate(prompt=PROMPT, size="64x64", response_format="b64_json", extra_body={"seed": 2})
    init = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json))).convert("RGB")
    mask = init.convert("RGBA")
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # OpenAI's convention: transparent = edit
    edited = oa.images.edit(image=("init.png", png(init), "image/png"), mask=("mask.png", png(mask), "image/png"),
                            prompt="a big green square in the center, white background", response_format="b64_json",
                            extra_body={"seed": 4})
    out = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json)))
    assert out.size == (64, 64)
    # the kept half is the original, exactly, past the feathered edge (blur 4 reaches 8 pixels)
    assert unmasked_change(init, out, left_half_mask(), margin=8) == 0
    assert unmasked_change(init, out, Image.new("L", (64, 64))) > 0  # and the transparent half was repainted


def test_openai_errors_in_openais_shape(oa, server):
    with pytest.raises(openai.BadRequestError) as caught:
        oa.images.generate(prompt=PROMPT, size="big")
    assert caught.value.body["param"] == "size" and "WIDTHxHEIGHT" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="out of range"):
        oa.images.generate(prompt=PROMPT, size="64x64", extra_body={"steps": 0})
    with pytest.raises(openai.BadRequestError, match="transparent"):
        oa.images.edit(image=("a.png", png(Image.new("RGBA", (64, 64), (0, 0, 0, 255))), "image/png"), prompt=PROMPT)
    wrong = openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt=PROMPT)


# ---------------------------------------------------------------------------------------------- auth, queue


def test_auth_basic_bearer_or_nothing(server):
    import httpx

    url = server["url"] + "/sdapi/v1/sd-models"
    refused = httpx.get(url)
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    assert "--auth" in refused.json()["detail"]
    assert httpx.get(url, auth=(USER, "wrong")).status_code == 401
    assert httpx.get(url, auth=(USER, PASSWORD)).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {USER}:{PASSWORD}"}).status_code == 200
    assert httpx.post(server["url"] + "/v1/images/generations", json={"prompt": PROMPT}).json()["error"]["message"]


def test_unreadable_bodies_get_each_apis_error_shape(server):
    import httpx

    a1111 = httpx.post(server["url"] + "/sdapi/v1/txt2img", content=b"{not json", auth=(USER, PASSWORD),
                       headers={"content-type": "application/json"})
    assert a1111.status_code == 422 and "could not be read" in a1111.json()["detail"]
    oa = httpx.post(server["url"] + "/v1/images/generations", json=["a list"], auth=(USER, PASSWORD))
    assert oa.status_code == 400 and "could not be read" in oa.json()["error"]["message"]


def test_wrong_credentials_wait_longer_each_time_and_parallel_guesses_queue():
    from apis.auth import Gate

    gate = Gate((USER, PASSWORD))
    waits = [gate.throttle.reserve("10.0.0.1 user:alice") for _ in range(8)]  # eight guesses sent at once
    # free, free, free, then 0.5, 1, 2, 4, 8 s each after the one before it: 0.5, 1.5, 3.5, 7.5, 15.5 s from now
    assert waits[:3] == [0, 0, 0] and [round(w, 1) for w in waits[3:]] == [0.5, 1.5, 3.5, 7.5, 15.5]
    assert gate.throttle.reserve("10.0.0.2 user:alice") == 0 and gate.throttle.reserve("10.0.0.1 user:bob") == 0
    # the 9th would start 15.5 + 16 s from now, past the 30 s cap: refused at once, not counted (each queued
    # guess holds a connection; hundreds of them locked the account for hours)
    assert gate.throttle.reserve("10.0.0.1 user:alice") == math.inf
    assert gate.throttle.failures("10.0.0.1 user:alice") == 8
    gate.throttle.succeeded("10.0.0.1 user:alice")
    assert gate.throttle.reserve("10.0.0.1 user:alice") == 0
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert gate.allows(basic) and not gate.allows("Basic !!notbase64") and not gate.allows(f"Bearer {TOKEN}")
    assert Gate().allows(None)  # no --auth, no --api-token: open, like the page


def test_a_full_line_is_503_busy_for_both_apis(sd, oa, server):
    line = server["studio"].line
    tickets = [line.join() for _ in range(1 + line.max_waiting)]  # one on the engine, the line full behind it
    try:
        with pytest.raises(RuntimeError) as caught:
            sd.txt2img(prompt=PROMPT, **FAST)
        assert caught.value.args[0] == 503 and "busy" in json.loads(caught.value.args[1])["detail"]
        with pytest.raises(openai.InternalServerError) as caught:
            oa.images.generate(prompt=PROMPT, size="64x64")
        assert caught.value.status_code == 503 and caught.value.body["code"] == "server_busy"
    finally:
        for ticket in tickets:
            line.leave(ticket)
    assert sd.txt2img(prompt=PROMPT, **FAST).image.size == (64, 64)  # and served again once it moves


# ----------------------------------------------------------------------------------------------------- MCP


def mcp_session(server, work, token=TOKEN):
    """Run `work(session)` in an MCP client session (the official SDK, streamable HTTP) with the server."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main():
        headers = {"Authorization": f"Bearer {token}"}
        async with streamablehttp_client(server["url"] + "/gradio_api/mcp/", headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(main())


def test_mcp_tools_listed_with_descriptions_and_only_ours(server):
    async def work(session):
        return (await session.list_tools()).tools

    tools = {tool.name: tool for tool in mcp_session(server, work)}
    assert set(tools) == {"generate", "list_models", "list_plugins", "edit"}  # the UI's own endpoints are not tools
    generate = tools["generate"]
    properties = generate.inputSchema["properties"]
    assert list(properties) == ["prompt", "negative", "model", "steps", "guidance", "seed", "width", "height",
                                "scheduler", "loras", "control", "control_image", "control_scale", "image_prompt",
                                "image_prompt_scale", "style_ref"]
    assert properties["prompt"]["description"].startswith("Required.")
    assert "1 to 200" in properties["steps"]["description"] and properties["seed"]["default"] == -1
    assert "shapes" in generate.description


def test_mcp_generate_gives_a_png_of_the_right_size(server):
    import httpx

    async def work(session):
        made = await session.call_tool("generate", {"prompt": PROMPT, "seed": 9, "steps": 4, "loras": "outline:0.5"})
        bad = await session.call_tool("generate", {"prompt": PROMPT, "steps": 500})
        models = await session.call_tool("list_models", {})
        plugins = await session.call_tool("list_plugins", {})
        return made, bad, models, plugins

    made, bad, models, plugins = mcp_session(server, work)
    assert not made.isError
    image = next(c for c in made.content if c.type == "image")
    assert image.mimeType == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (64, 64)
    texts = [c.text for c in made.content if c.type == "text"]
    url = next(t for t in texts if t.startswith("Image URL: ")).removeprefix("Image URL: ")
    with httpx.Client() as browser:  # with --auth, gradio serves its files to a logged-in client
        assert browser.post(server["url"] + "/login", data={"username": USER, "password": PASSWORD}).is_success
        file = browser.get(url)
    assert "Seed: 9" in Image.open(io.BytesIO(file.content)).info["parameters"]  # the file keeps its metadata
    assert any("seed 9" in t and "<lora:outline:0.5>" in t for t in texts)
    assert bad.isError and "steps = 500 is out of range" in bad.content[0].text
    listed = json.loads(models.content[0].text)
    assert listed["default"] == "builtin" and any(m["id"] == "builtin" for m in listed["models"])
    assert {"outline", "pastel"} <= {p["name"] for p in json.loads(plugins.content[0].text)}


def test_mcp_edit_refines_inpaints_and_upscales_a_generated_image(server):
    from engine.edit import unmasked_change

    mask = webuiapi.raw_b64_img(left_half_mask())

    async def work(session):
        made = await session.call_tool("generate", {"prompt": PROMPT, "seed": 9, "steps": 4})
        url = next(c.text for c in made.content if c.type == "text" and c.text.startswith("Image URL: "))[11:]
        new = "a big green square in the center, white background"
        return [made] + [await session.call_tool("edit", {"image": url, "prompt": new, **extra}) for extra in (
            {"strength": 0.8, "seed": 1}, {"mask": mask, "strength": 1.0, "seed": 2}, {"upscale": 2, "seed": 3},
            {"image": "http://elsewhere.example/cat.png"})] + [await session.call_tool("generate", {
                "prompt": new, "seed": 4, "steps": 4, "control": "edge", "control_image": url})]

    results = mcp_session(server, work)
    made, refined, inpainted, upscaled, foreign, controlled = results
    assert not controlled.isError and any("edge x1" in c.text for c in controlled.content if c.type == "text")
    images = [Image.open(io.BytesIO(base64.b64decode(next(c.data for c in r.content if c.type == "image"))))
              for r in (made, refined, inpainted, upscaled)]
    assert [im.size for im in images] == [(64, 64), (64, 64), (64, 64), (128, 128)]
    assert unmasked_change(images[0], images[2], left_half_mask(), margin=8) == 0  # the kept half is the original
    assert unmasked_change(images[0], images[1], Image.new("L", (64, 64))) > 0
    assert foreign.isError and "not an image these tools made" in foreign.content[0].text


def test_mcp_needs_the_credentials_too(server):
    import httpx

    refused = httpx.post(server["url"] + "/gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert refused.status_code == 401


# --------------------------------------------------------------------------------------------- Ray Serve


@pytest.fixture(scope="module")
def ray_studio():
    """2 CPU replicas of the built-in model on a local Ray, one torch thread each, behind a Studio."""
    import ray

    from engine.config import EngineConfig
    from studio import ray_serve
    from studio.service import Studio

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield Studio(ray_serve.remote_engine(EngineConfig(device="cpu"), "builtin", replicas=2), "builtin")
    finally:
        ray_serve.stop()
        ray.shutdown()


def test_ray_replicas_give_the_single_engines_pixels_and_share_the_work(ray_studio, engine, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from engine.request import Request
    from ui import api

    request = Request(prompt=PROMPT, seed=21, steps=4)
    alone = engine.generate(request).images[0]
    paths = api.generate(ray_studio, tmp_path, PROMPT, "", "", 4, -1, 21)  # the chat's API endpoint, via the line
    assert Image.open(paths[0]).convert("RGB").tobytes() == alone.tobytes()
    remote = ray_studio.engine
    before = dict(remote.served)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda seed: remote.generate(Request(prompt=PROMPT, seed=seed, steps=4)), range(4)))
    assert [r.seeds[0] for r in results] == [0, 1, 2, 3]
    assert len([pid for pid in remote.served if remote.served[pid] > before.get(pid, 0)]) == 2  # both replicas


def test_ray_two_replicas_run_two_api_generations_at_once_through_the_line(ray_studio):
    """The studio's line has a slot per replica: two API jobs sample at the same time, a third waits its turn."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.request import Request
    from studio.jobs import Jobs

    assert ray_studio.line.slots == 2
    jobs, seen = Jobs(ray_studio), 0
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(jobs.run, Request(prompt=PROMPT, seed=s, steps=60)) for s in range(3)]
        while not all(f.done() for f in futures):
            with jobs._lock:
                seen = max(seen, len([j for j in jobs._jobs if j.started_at is not None]))
            time.sleep(0.01)
    assert seen == 2 and [f.result().images[0].size for f in futures] == [(64, 64)] * 3


def test_ray_a_killed_replica_is_answered_and_replaced(ray_studio):
    import os
    import signal

    from engine.request import Request, UserError

    remote = ray_studio.engine
    before = dict(remote.served)
    victim = {}

    def on_step(step, total, _):
        if not victim:
            victim["pid"] = next(p for p in remote.served if remote.served[p] > before.get(p, 0))
            os.kill(victim["pid"], signal.SIGKILL)

    with pytest.raises(UserError, match="send the message again"):
        remote.generate(Request(prompt=PROMPT, seed=1, steps=200), progress=on_step)
    served, deadline = 0, time.time() + 60
    while served < 3 and time.time() < deadline:  # the other replica serves meanwhile, and Ray starts a new one
        try:
            assert remote.generate(Request(prompt=PROMPT, seed=served, steps=2)).images[0].size == (64, 64)
            served += 1
        except UserError as e:  # a request routed to the dead replica before Ray saw it die: told to retry
            assert "send the message again" in str(e)
    assert served == 3


def test_ray_cancel_stops_the_replica_within_a_step(ray_studio):
    from concurrent.futures import ThreadPoolExecutor

    from engine.request import MAX_STEPS, Request
    from engine.result import Cancelled

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        ray_studio.engine.generate(Request(prompt=PROMPT, seed=1, steps=MAX_STEPS), progress=lambda *_: cancel.set(),
                                   cancel=cancel)
    started = time.perf_counter()  # both replicas free at once: the cancelled one did not run its ~10 s of steps
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda s: ray_studio.engine.generate(Request(prompt=PROMPT, seed=s, steps=2)), (1, 2)))
    assert [r.images[0].size for r in made] == [(64, 64)] * 2 and time.perf_counter() - started < 4


# ------------------------------------------------------------------------------------- one request, every door


def test_a_prompt_and_seed_alone_give_the_same_pixels_through_every_door(server, oa, tmp_path):
    """The CLI, gradio's /generate, A1111, OpenAI and MCP, each sent only a prompt and a seed (what a client leaves
    unset, it sends as null), build one Request through studio.requests and get the model's defaults: one image."""
    import subprocess
    import sys

    from gradio_client import Client

    from engine.config import ROOT

    seed = 7
    cli = subprocess.run([sys.executable, str(ROOT / "app.py"), "generate", "--prompt", PROMPT, "--seed", str(seed),
                          "--out", str(tmp_path / "cli.png"), "--outputs", "none"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr
    images = {"cli": Image.open(tmp_path / "cli.png")}
    client = Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    images["/generate"] = Image.open(client.predict(PROMPT, "", "", 0, -1, seed, 0, 0, 1, "default",
                                                    api_name="/generate")[0])
    # webuiapi sends its own steps and sampler unless told to leave them to the server, as here
    bare = webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], username=USER, password=PASSWORD,
                             sampler=None, scheduler=None, steps=None)
    images["a1111"] = bare.txt2img(prompt=PROMPT, seed=seed, width=None, height=None, cfg_scale=None).image
    made = oa.images.generate(prompt=PROMPT, response_format="b64_json", extra_body={"seed": seed})
    images["openai"] = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))

    async def work(session):
        return await session.call_tool("generate", {"prompt": PROMPT, "seed": seed})

    answer = mcp_session(server, work)
    shown = [part for part in answer.content if part.type == "image"]
    images["mcp"] = Image.open(io.BytesIO(base64.b64decode(shown[0].data)))
    pixels = {door: image.convert("RGB").tobytes() for door, image in images.items()}
    assert {door: image.size for door, image in images.items()} == dict.fromkeys(images, (64, 64))
    assert len(set(pixels.values())) == 1, [door for door in pixels if pixels[door] != pixels["cli"]]
    assert "Steps: 10," in images["cli"].text["parameters"]  # the built-in model's own default, not a door's


def yellow(image: Image.Image) -> int:
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 160) & (rgb[..., 1] > 160) & (rgb[..., 2] < 110)).sum())


def test_an_inpaint_without_a_strength_draws_what_is_asked_on_the_cli_and_a1111(server, sd, tmp_path):
    """No strength given: the masked part is drawn anew (the engine's inpaint default, 1), not kept as it was."""
    import subprocess
    import sys

    from engine.config import ROOT

    Image.new("RGB", (64, 64), (30, 60, 200)).save(tmp_path / "blue.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    mask.save(tmp_path / "mask.png")
    asked = "a big yellow square on the right, blue background"
    cli = subprocess.run([sys.executable, str(ROOT / "app.py"), "generate", "--prompt", asked, "--seed", "3",
                          "--init", str(tmp_path / "blue.png"), "--mask", str(tmp_path / "mask.png"),
                          "--out", str(tmp_path / "cli.png"), "--outputs", "none"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr
    drawn = Image.open(tmp_path / "cli.png")
    assert "Denoising strength: 1" in drawn.text["parameters"]
    a1111 = sd.img2img(images=[Image.open(tmp_path / "blue.png")], mask_image=mask.convert("RGB"), prompt=asked,
                       seed=3, denoising_strength=None, width=None, height=None, cfg_scale=None,
                       inpaint_full_res=False).image
    for door, image in {"cli": drawn, "a1111": a1111}.items():
        assert yellow(image) > 200, f"{door}: {yellow(image)} yellow pixels"
