"""Image prompts (IP-Adapter): the built-in model's own adapter, a tiny SDXL's through a plugin manifest, through the
engine and every door; scale 0 and no image prompt give the plain model's pixels exactly; wrong pairs explain
themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.engine import Engine
from engine.plugins.manager import PluginManager
from engine.request import ImagePrompt, Request, SettingsError, UserError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a big one in the center, white background"


def triangle(color=(40, 160, 60), background="white") -> Image.Image:
    ref = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(ref).polygon([(32, 8), (56, 54), (8, 54)], fill=color)
    return ref


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_builtin_image_prompt_changes_the_image_and_scale_zero_or_none_is_the_base_exactly(engine):
    ask = dict(prompt=PROMPT, seed=3, steps=6)
    base = engine.generate(Request(**ask))
    looked = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle())]))
    zero = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle(), 0.0)]))
    after = engine.generate(Request(**ask))  # the adapter comes off again
    assert np.array_equal(pixels(zero), pixels(base)) and np.array_equal(pixels(after), pixels(base))
    assert np.abs(pixels(looked) - pixels(base)).mean() > 1.0
    assert "Image prompt: shapes-reference 1 " in looked.infotexts[0]
    assert "image prompt x1" in looked.settings_line()
    assert not any("ignored 'one'" in n for n in looked.notes)  # "a big one": the image says what


def test_image_prompts_are_checked(engine, tiny_model):
    with pytest.raises(SettingsError, match="scale = 3.0 is out of range"):
        engine.plan(Request(prompt="x", image_prompts=[ImagePrompt(triangle(), 3.0)]))
    with pytest.raises(SettingsError, match="share one scale"):
        engine.plan(Request(prompt="x", image_prompts=[ImagePrompt(triangle(), 0.5), ImagePrompt(triangle(), 1)]))
    with pytest.raises(SettingsError, match="at most 4"):
        engine.plan(Request(prompt="x", image_prompts=[ImagePrompt(triangle())] * 5))
    with pytest.raises(UserError, match="Qwen-Image models take no image prompt"):  # (FLUX.2: references)
        engine.generate(Request(prompt="x", model=str(tiny_model("qwenimage")), steps=1, width=64, height=64,
                                image_prompts=[ImagePrompt(triangle())]))


# ------------------------------------------------------------------------------------ a tiny SDXL's adapter

def tiny_sdxl_adapter(folder: Path, out: Path) -> Path:
    """An IP-Adapter for the tiny SDXL in the layout diffusers reads (its image projection, each cross-attention's
    image key/value, a tiny CLIP vision encoder), with random weights, and its plugin manifest."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.train.image_prompt import initial_state

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    state = initial_state(unet)
    cross = unet.config.cross_attention_dim
    state["image_proj"] = {"proj.weight": torch.randn(cross * 4, 32) * 0.5, "proj.bias": torch.zeros(cross * 4),
                           "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    flat = {f"{part}.{k}": v.contiguous() for part, d in state.items() for k, v in d.items()}
    adapter = out / "tiny-ip"
    adapter.mkdir(parents=True)
    save_file(flat, str(adapter / "ip-adapter.safetensors"))
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32,
                                                             intermediate_size=37, num_hidden_layers=1,
                                                             num_attention_heads=4, projection_dim=32))
    encoder.save_pretrained(adapter / "image_encoder")
    (out / "tiny-ip.toml").write_text('name = "tiny-ip"\nkind = "image-prompt"\nfamily = "sdxl"\n'
                                      'source = "tiny-ip"\nweight_name = "ip-adapter.safetensors"\nweight = 0.7\n')
    return out


def test_a_tiny_sdxl_adapter_loads_as_a_plugin_through_diffusers(tiny_model, tmp_path):
    folder = tiny_model("sdxl")
    engine = Engine(device="cpu", local_paths=True)
    engine.plugins = PluginManager([tiny_sdxl_adapter(folder, tmp_path)], hub=engine.hub)
    ask = dict(prompt="a cat", model=str(folder), steps=2, width=32, height=32, seed=2)
    base = engine.generate(Request(**ask))
    looked = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle())]))
    other = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle((200, 30, 30), "black"))]))
    zero = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle(), 0.0)]))
    img2img = engine.generate(Request(**ask, init_image=triangle(), strength=0.5,
                                      image_prompts=[ImagePrompt(triangle())]))
    assert np.abs(pixels(looked) - pixels(base)).mean() > 1.0
    assert np.abs(pixels(looked) - pixels(other)).mean() > 0.5  # the image's content matters
    assert np.array_equal(pixels(zero), pixels(base))
    assert "Image prompt: tiny-ip 0.7 " in looked.infotexts[0]  # the manifest's default scale
    assert img2img.images[0].size == (32, 32)  # the image-to-image pipeline reads it too
    assert np.array_equal(pixels(engine.generate(Request(**ask))), pixels(base))


def test_a_family_without_an_adapter_says_how_to_add_one(tiny_model, tmp_path):
    engine = Engine(device="cpu", local_paths=True)
    engine.plugins = PluginManager([tmp_path], hub=engine.hub)  # no image-prompt plugin for SD1.5 here
    with pytest.raises(UserError, match="no image-prompt adapter for Stable Diffusion 1.5 models.*image-prompt"):
        engine.generate(Request(prompt="x", model=str(tiny_model("sd15")), steps=1, width=32, height=32,
                                image_prompts=[ImagePrompt(triangle())]))


def test_manifest_fields_of_an_adapter_are_checked(tmp_path):
    from engine.plugins.manifests import load_manifests

    (tmp_path / "a.toml").write_text('name = "a"\nkind = "image-prompt"\nfamily = "sdxl"\nsource = "org/repo"\n'
                                     'weight_name = "ip.bin"\n')
    (tmp_path / "b.toml").write_text('name = "b"\nkind = "lora"\nfamily = "sdxl"\nsource = "b.safetensors"\n'
                                     'encoder = "x"\n')
    errors = {m.name: m.error for m in load_manifests([tmp_path])}
    assert "field 'weight_name' must name the adapter's .safetensors file" in errors["a"]
    assert "field 'encoder' is only for image-prompt manifests" in errors["b"]


# ------------------------------------------------------------------------------------------------- doors

def test_the_cli_takes_an_image_prompt_and_names_a_bad_one(tmp_path):
    triangle().save(tmp_path / "ref.png")
    run = subprocess.run([sys.executable, "app.py", "generate", "--prompt", PROMPT, "--image-prompt",
                          f"{tmp_path / 'ref.png'},scale=0.8", "--seed", "5", "--out", str(tmp_path / "o.png"),
                          "--outputs", "none"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-1500:]
    assert "Image prompt: shapes-reference 0.8" in Image.open(tmp_path / "o.png").text["parameters"]
    bad = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "x", "--image-prompt",
                          f"{tmp_path / 'ref.png'},scale=lots", "--outputs", "none"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2 and "the scale must be a number from 0 to 2" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_chat_uses_the_selected_image_as_an_image_prompt(engine):
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    studio, session = Studio(engine, default_model="builtin"), Session.new()
    try:
        settings = Settings(steps=6)
        list(handlers.send(studio, session, "a big green triangle in the center, white background --seed 4",
                           settings))
        path = handlers.use_as_image_prompt(session)
        assert path == session.shots[0].path and "is now the image prompt" in session.history[-1]["content"]
        settings.image_prompts = [ImagePrompt(path, 0.9)]  # what the panel's slot then sends
        list(handlers.send(studio, session, "a small one on the left, yellow background --seed 5", settings))
        assert "image prompt x0.9" in session.history[-1]["content"]
        assert session.shots[1].request.image_prompts[0].scale == 0.9
    finally:
        session.close()


def tiny_redux(out: Path) -> Path:
    """A Flux Redux prior at toy size (SigLIP vision tower, the image embedder into the tiny Flux's 32-wide T5
    space) saved as a diffusers folder, and its plugin manifest (no weight_name: the folder is the pipeline)."""
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=32, patch_size=8))
    embedder = ReduxImageEncoder(redux_dim=16, txt_in_features=32)
    with torch.no_grad():
        for p in embedder.parameters():
            p.mul_(20.0)  # a fresh embedder's tokens are faint beside the text's: make them count
    prior = FluxPriorReduxPipeline(image_encoder=vision, feature_extractor=SiglipImageProcessor(
        size={"height": 32, "width": 32}), image_embedder=embedder)
    prior.save_pretrained(out / "tiny-redux")
    (out / "tiny-redux.toml").write_text('name = "tiny-redux"\nkind = "image-prompt"\nfamily = "flux"\n'
                                         'source = "tiny-redux"\n')
    return out


def test_a_tiny_flux_redux_joins_the_image_to_the_prompt(tiny_model, tmp_path):
    folder = tiny_model("flux")
    engine = Engine(device="cpu", local_paths=True)
    engine.plugins = PluginManager([tiny_redux(tmp_path)], hub=engine.hub)
    ask = dict(prompt="a red circle", model=str(folder), steps=2, width=32, height=32, seed=2)
    base = engine.generate(Request(**ask))
    looked = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle())]))
    other = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle((200, 30, 30), "black"))]))
    zero = engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle(), 0.0)]))
    # a one-block random Flux barely reads extra tokens: the image shows, but faintly
    assert np.abs(pixels(looked) - pixels(base)).mean() > 0.1
    assert np.abs(pixels(looked) - pixels(other)).mean() > 0.02
    assert np.array_equal(pixels(zero), pixels(base))
    assert "Image prompt: tiny-redux 1 " in looked.infotexts[0]
    with pytest.raises(UserError, match="Flux Redux reads one image prompt"):
        engine.generate(Request(**ask, image_prompts=[ImagePrompt(triangle())] * 2))


def test_a_saved_style_reference_lasts_into_later_chats_and_the_cli(engine, tmp_path):
    from store.library import Library
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    library = Library(tmp_path / "outputs")
    studio = Studio(engine, default_model="builtin", library=library)
    first, later, stranger = Session.new(), Session.new(), Session.new()
    first.browser = later.browser = "browser-a"
    stranger.browser = "browser-b"
    try:
        list(handlers.send(studio, first, "a big green triangle in the center, white background --seed 4",
                           Settings(steps=4)))
        list(handlers.send(studio, first, "/save-style leafy", Settings()))
        assert "Saved #1 as the style reference **leafy**" in first.history[-1]["content"]
        list(handlers.send(studio, later, "a small one on the left, yellow background --sref leafy --seed 5",
                           Settings(steps=4)))
        assert "image prompt x1" in later.history[-1]["content"]
        list(handlers.send(studio, stranger, "a small one --sref leafy", Settings(steps=4)))
        assert "There is no style reference 'leafy'" in stranger.history[-1]["content"]  # another browser's
        list(handlers.send(studio, later, "/save-style two words", Settings()))
        assert "one word" in later.history[-1]["content"]
    finally:
        for s in (first, later, stranger):
            s.close()
    library.close()
    out = tmp_path / "o.png"
    run = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "a small one at the top, blue "
                          "background", "--sref", "leafy", "--seed", "5", "--steps", "4", "--out", str(out),
                          "--outputs", str(tmp_path / "outputs")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-1500:]
    assert "Image prompt: shapes-reference" in Image.open(out).text["parameters"]
    missing = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "x", "--sref", "nope", "--outputs",
                              str(tmp_path / "outputs")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "no style reference of that name" in missing.stderr and "leafy" in \
        missing.stderr


def test_the_adapter_training_runs_resumes_and_writes_what_diffusers_loads(tmp_path):
    """A few steps of each stage (the encoder naming shapes and colours, then the adapter with the full-caption
    teacher): the files load with diffusers' own load_ip_adapter; a second call finds the run finished."""
    import json

    from diffusers import StableDiffusionPipeline

    from engine.config import ROOT
    from engine.train.image_prompt import train_image_prompt

    builtin, out = ROOT / "assets" / "builtin", tmp_path / "out"
    train_image_prompt(builtin, tmp_path / "work", out, steps=2, batch=2, naming_steps=2)
    info = json.loads((out / "training.json").read_text())[0]
    assert info["steps"] == 2 and info["teach"] == 1.0 and 0 <= info["naming"]["shape_named"] <= 1
    stamp = (out / "ip-adapter.safetensors").stat().st_mtime_ns
    train_image_prompt(builtin, tmp_path / "work", out, steps=2, batch=2, naming_steps=2)  # finished: no training
    assert json.loads((out / "training.json").read_text())[0]["steps"] == 2
    assert (out / "ip-adapter.safetensors").stat().st_mtime_ns >= stamp
    pipe = StableDiffusionPipeline.from_pretrained(builtin)
    pipe.load_ip_adapter(str(out), subfolder="", weight_name="ip-adapter.safetensors",
                         image_encoder_folder="image_encoder")
    image = pipe("a big one on the left, white background", ip_adapter_image=triangle(), num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_an_mcp_client_uses_a_style_reference_saved_in_the_chat(engine, tmp_path):
    """On a server of this machine, MCP `generate(style_ref=NAME)` takes the style reference a chat saved (the same
    pixels as that image as the image prompt); an unknown name is refused, naming how to save one."""
    import threading

    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from store.library import Library, new_id
    from tests.test_threats import start

    library = Library(tmp_path / "outputs")
    reference = tmp_path / "ref.png"
    triangle((200, 40, 40), "white").save(reference)
    library.save_style_ref(new_id(), "reds", str(reference))
    demo, url = start(engine, mcp=True, library=library)
    answers = {}

    async def main():
        async with streamable_http_client(url + "/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for name in ("reds", "nope"):
                    answers[name] = await session.call_tool("generate", {
                        "prompt": PROMPT, "steps": 4, "seed": 5, "style_ref": name})

    try:
        client = threading.Thread(target=anyio.run, args=(main,))  # its own thread: a browser test's loop may run
        client.start()
        client.join(300)
    finally:
        demo.close()
    assert not answers["reds"].isError, answers["reds"]
    import base64
    import io

    [drawn] = [c for c in answers["reds"].content if getattr(c, "type", "") == "image"]
    got = Image.open(io.BytesIO(base64.b64decode(drawn.data))).convert("RGB")
    looked = engine.generate(Request(prompt=PROMPT, steps=4, seed=5, image_prompts=[ImagePrompt(str(reference))]))
    base = engine.generate(Request(prompt=PROMPT, steps=4, seed=5))
    assert np.array_equal(np.asarray(got, dtype=np.int16), pixels(looked))
    assert not np.array_equal(pixels(looked), pixels(base))
    assert answers["nope"].isError and "There is no style reference 'nope'" in answers["nope"].content[0].text
