"""PNG settings out and back in: golden infotext, real-world A1111/SD.Next/Fooocus texts, bad files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.images import infotext as infotext_module
from engine.images import metadata
from engine.images.infotext import infotext, parse_infotext, request_from_infotext
from engine.images.metadata import NO_SETTINGS, model_hash, png_bytes, read_png_settings, save_png
from engine.request import ControlUnit, LoraSpec, Request, UserError

REQUEST = Request(prompt="a red circle\non the left", negative="blurry, dark\nlow quality", steps=20,
                  guidance=7.0, width=512, height=768, scheduler="dpm++2m-karras",
                  loras=[LoraSpec("stripes", 0.8)])
GOLDEN = (
    "a red circle\n"
    "on the left <lora:stripes:0.8>\n"
    "Negative prompt: blurry, dark\n"
    "low quality\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    'Model hash: 0123456789, Model: builtin, Lora hashes: "stripes: abcdef012345", Version: studio'
)

A1111 = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.6>, red dress,\n"
    "standing in a field of flowers\n"
    "Negative prompt: (worst quality:1.4), lowres,\n"
    "bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3551235482, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
    'Hires upscale: 2, Hires upscaler: "R-ESRGAN 4x+", Lora hashes: "add_detail: 7c6bad76eb54", '
    'TI hashes: "easynegative: c74b4e810b03", Template: "a, \\"quoted\\" b", Version: v1.10.1'
)
SDNEXT = (
    "a lighthouse at dusk, <lora:outline_xl:1.5>, line art\n"
    "Negative prompt: low quality\n"
    "Steps: 20, Size: 1024x1024, Seed: 1561296656, Sampler: Euler a, CFG scale: 6, CFG rescale: 0.7, "
    "Model: hassakuXL, Model hash: 847403d47a, App: SD.Next, Version: 8b73cb6, "
    "Pipeline: StableDiffusionXLPipeline, Operations: txt2img"
)
FOOOCUS_A1111 = (
    "a cat wearing a hat, highly detailed, sharp focus, cinematic\n"
    "Negative prompt: unrealistic, saturated\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, Seed: 12345, Size: 1152x896, CFG scale: 4, Sharpness: 2, "
    "ADM Guidance: \"(1.5, 0.8, 0.3)\", Model: juggernautXL_v8Rundiffusion, Model hash: aeb7e9e689, "
    "Performance: Speed, Scheduler: karras, VAE: Default (model), Raw prompt: a cat wearing a hat, "
    'Raw negative prompt: , Lora hashes: "sd_xl_offset: 4852686128", Lora weights: "sd_xl_offset: 0.1", '
    "Version: Fooocus v2.5.5"
)
FOOOCUS_JSON = json.dumps({
    "prompt": "a cat wearing a hat", "negative_prompt": "blurry", "steps": 30, "guidance_scale": 4,
    "seed": "12345", "resolution": "(1152, 896)", "sampler": "dpmpp_2m", "scheduler": "karras",
    "base_model": "juggernautXL_v8Rundiffusion", "base_model_hash": "aeb7e9e689",
    "loras": [["sd_xl_offset", 0.1, "4852686128"]], "version": "Fooocus v2.5.5",
})


def _png_with_text(**chunks: str) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "navy").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_infotext_golden():
    text = infotext(REQUEST, 1234, "builtin", "0123456789", {"Lora hashes": {"stripes": "abcdef012345"}})
    assert text == GOLDEN


def test_save_png_round_trip_through_file(tmp_path):
    path = tmp_path / "out.png"
    save_png(Image.new("RGB", (16, 16), "red"), path, REQUEST, 1234, "builtin", "0123456789",
             {"Lora hashes": {"stripes": "abcdef012345"}})
    with Image.open(path) as image:
        assert image.info["parameters"] == GOLDEN
        studio = json.loads(image.info["studio"])
    assert studio == {"version": 1, "request": dataclasses.replace(REQUEST, seed=1234).to_json(), "model": "builtin"}
    request, source = read_png_settings(path)
    assert request == dataclasses.replace(REQUEST, seed=1234)
    assert source == "this app's own settings (model builtin)"


def test_infotext_round_trip_every_field():
    request = Request(prompt="two squares\n  indented line", negative="noise", model="builtin", steps=9,
                      guidance=3.5, seed=None, width=64, height=128, scheduler="euler-a", count=1,
                      init_image=Image.new("RGB", (4, 4)), strength=0.35,
                      loras=[LoraSpec("a", 1.0), LoraSpec("b", -0.5)])
    params = parse_infotext(infotext(request, 42, "builtin", None))
    assert params["Denoising strength"] == "0.35" and "Model hash" not in params
    back = request_from_infotext(params)
    expected = dataclasses.replace(request, seed=42, init_image=None)
    for field in dataclasses.fields(Request):
        assert getattr(back, field.name) == getattr(expected, field.name), field.name


def test_infotext_falls_back_to_parameters_when_studio_missing():
    text = infotext(REQUEST, 7, "builtin", None)
    request, source = read_png_settings(_png_with_text(parameters=text))
    assert request == dataclasses.replace(REQUEST, seed=7)
    assert source == "our parameters text (model builtin)"


def test_extra_overrides_controls_and_order():
    request = Request(prompt="x", steps=4, scheduler="euler", init_image="init.png", strength=0.5,
                      controls=[ControlUnit("edge", "e.png", scale=0.8, end=0.6)])
    text = infotext(request, 1, "my model", "abc", {"Model hash": None, "Precision": "bf16", "Steps": 5})
    assert text.splitlines()[-1] == (
        'Steps: 5, Sampler: Euler, Schedule type: Automatic, Seed: 1, Model: my model, Denoising strength: 0.5, '
        'ControlNet 0: "Module: auto, Model: edge, Weight: 0.8, Guidance Start: 0.0, Guidance End: 0.6, '
        'Threshold A: 100, Threshold B: 200", Precision: bf16, Version: studio')
    assert parse_infotext(text)["ControlNet 0"].startswith("Module: auto, Model: edge")
    with pytest.raises(ValueError, match="must be letters"):
        infotext(request, 1, "m", None, {"Bad: key": 1})


def test_studio_chunk_keeps_controls_without_images():
    request = Request(prompt="x", controls=[ControlUnit("pose", Image.new("RGB", (4, 4)), start=0.1)])
    back, _ = read_png_settings(png_bytes(Image.new("RGB", (8, 8)), request, 5, "builtin"))
    assert back.controls == [ControlUnit("pose", None, start=0.1)] and back.seed == 5
    assert request.controls[0].image is not None  # the caller's request is not modified


def test_parse_real_world_a1111():
    params = parse_infotext(A1111)
    assert params["prompt"] == ("masterpiece, best quality, 1girl, <lora:add_detail:0.6>, red dress,\n"
                                "standing in a field of flowers")
    assert params["negative"] == "(worst quality:1.4), lowres,\nbad hands"
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert params["Hires upscaler"] == "R-ESRGAN 4x+"
    assert params["Template"] == 'a, "quoted" b'
    assert params["Version"] == "v1.10.1"
    request = request_from_infotext(params)
    assert request.prompt == "masterpiece, best quality, 1girl, red dress,\nstanding in a field of flowers"
    assert request.loras == [LoraSpec("add_detail", 0.6)]
    assert (request.steps, request.guidance, request.seed) == (28, 6.5, 3551235482)
    assert (request.width, request.height, request.strength) == (512, 768, 0.45)
    assert (request.scheduler, request.model) == ("dpm++2m-karras", "v1-5-pruned-emaonly")
    assert infotext_module.describe_source(params) == "AUTOMATIC1111 parameters (model v1-5-pruned-emaonly)"


def test_parse_sdnext_and_fooocus():
    sdnext = parse_infotext(SDNEXT)
    request = request_from_infotext(sdnext)
    assert (request.scheduler, request.width, request.loras) == ("euler-a", 1024, [LoraSpec("outline_xl", 1.5)])
    assert request.prompt == "a lighthouse at dusk, line art"
    assert infotext_module.describe_source(sdnext) == "SD.Next parameters (model hassakuXL)"

    fooocus = parse_infotext(FOOOCUS_A1111)
    request = request_from_infotext(fooocus)
    assert request.prompt == "a cat wearing a hat" and request.negative == "unrealistic, saturated"
    assert request.scheduler == "dpm++2m-karras"  # old-style "DPM++ 2M Karras" sampler name
    assert request.loras == [LoraSpec("sd_xl_offset", 0.1)] and (request.width, request.height) == (1152, 896)
    assert infotext_module.describe_source(fooocus) == "Fooocus parameters (model juggernautXL_v8Rundiffusion)"

    request, source = read_png_settings(_png_with_text(parameters=FOOOCUS_JSON))
    assert (request.prompt, request.negative, request.steps, request.guidance) == ("a cat wearing a hat", "blurry",
                                                                                   30, 4.0)
    assert (request.seed, request.scheduler) == (12345, "dpm++2m-karras")
    assert request.loras == [LoraSpec("sd_xl_offset", 0.1)]
    assert source == "Fooocus parameters (model juggernautXL_v8Rundiffusion)"


def test_unknown_sampler_means_default_and_prompt_only_text():
    request = request_from_infotext(parse_infotext("a dog\nSteps: 10, Sampler: DPM2 a, Seed: 3, Size: 64x64"))
    assert request.scheduler is None and request.steps == 10
    only = parse_infotext("just a prompt: with a colon")
    assert only == {"prompt": "just a prompt: with a colon", "negative": ""}


def test_unreadable_values_are_user_errors():
    with pytest.raises(UserError, match="unreadable Steps value 'many'"):
        request_from_infotext(parse_infotext("a\nSteps: many, Seed: 1, Size: 64x64"))
    with pytest.raises(UserError, match="unreadable Size"):
        request_from_infotext(parse_infotext("a\nSteps: 2, Seed: 1, Size: big"))


def test_png_without_settings():
    with pytest.raises(UserError, match=re.escape(NO_SETTINGS)):
        read_png_settings(_png_with_text(Software="paint"))


def test_garbled_chunks_are_user_errors():
    with pytest.raises(UserError, match="'studio' settings are damaged"):
        read_png_settings(_png_with_text(studio="{not json"))
    with pytest.raises(UserError, match="Unknown setting"):
        read_png_settings(_png_with_text(studio=json.dumps({"version": 1, "request": {"prompt": "a", "zzz": 1}})))
    with pytest.raises(UserError, match="newer version"):
        read_png_settings(_png_with_text(studio=json.dumps({"version": 9, "request": {}})))
    # a damaged studio chunk next to good parameters: the parameters are used
    request, source = read_png_settings(_png_with_text(studio="{", parameters="a fox\nSteps: 3, Seed: 1, Size: 64x64"))
    assert request.prompt == "a fox" and source.endswith("(our own settings were damaged)")
    # iTXt that is not UTF-8 is skipped by Pillow: reported as no settings, not a traceback
    info = PngInfo()
    info.add(b"iTXt", b"parameters\0\0\0\0\0\xff\xfe\xfa")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    with pytest.raises(UserError, match="no generation settings"):
        read_png_settings(buffer.getvalue())
    with pytest.raises(UserError, match="web page"):
        read_png_settings(b"<!DOCTYPE html><html></html>")


def test_utf8_written_into_text_chunk_is_repaired():
    info = PngInfo()
    info.add(b"tEXt", "parameters\0café ☕\nSteps: 3, Seed: 1, Size: 64x64".encode())
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    request, _ = read_png_settings(buffer)
    assert request.prompt == "café ☕"


def test_jpeg_user_comment():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "an owl\nSteps: 12, Seed: 9, Size: 64x96".encode("utf-16-be")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    request, source = read_png_settings(buffer.getvalue())
    assert (request.prompt, request.steps, request.height) == ("an owl", 12, 96)
    assert source == "AUTOMATIC1111 parameters"


def test_model_hash_is_sha256_prefix_and_cached(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_hash(path) == expected[:10]
    assert model_hash(str(path), length=12) == expected[:12]
    assert sum(key[0] == str(path.resolve()) for key in metadata._HASHES) == 1
    path.write_bytes(b"other" * 10)
    assert model_hash(path) == hashlib.sha256(b"other" * 10).hexdigest()[:10]
