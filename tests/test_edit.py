"""Edits (issue #17): inpaint keeps every pixel outside the mask, outpaint grows the canvas and keeps the old image,
hires upscale makes it larger, on tiny SD1.5/SDXL/Flux pipelines and the built-in model; bad edit inputs explain
themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.edit import outpaint_canvas, unmasked_change
from engine.request import Request, UserError

FAMILIES = ["sd15", "sdxl", "flux", "sd3", "chroma", "zimage", "qwenimage", "flux2klein"]


def picture(size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def left_half(size=(32, 32)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([0, 0, size[0] // 2 - 1, size[1] - 1], fill=255)
    return mask


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "chroma"])
def test_inpaint_repaints_the_mask_and_keeps_the_rest_exactly(engine, tiny_model, family, tmp_path):
    init, mask = picture(), left_half()
    init.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    result = engine.generate(Request(prompt="a red circle", model=str(tiny_model(family)), steps=2, seed=1,
                                     init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"),
                                     strength=1.0, mask_blur=0))
    out = result.images[0]
    assert out.size == (32, 32)  # the init image's size when none is given
    assert unmasked_change(init, out, mask) == 0  # outside the mask: the original pixels
    left = np.abs(np.asarray(out, np.int16) - np.asarray(init, np.int16))[:, :16]
    assert left.mean() > 10  # inside: repainted
    assert "Mask hash" in result.infotexts[0] and "Init image hash" in result.infotexts[0]


def test_a_family_without_an_inpaint_pipeline_says_what_it_can_do(engine, tiny_model):
    """Chroma has no working inpaint pipeline in diffusers 0.42.1: one line naming what it can do, not a crash."""
    with pytest.raises(UserError, match=r"Chroma model; diffusers has no pipeline for inpaint.*text to image, image"):
        engine.generate(Request(prompt="x", model=str(tiny_model("chroma")), steps=2, seed=1, init_image=picture(),
                                mask=left_half(), strength=1.0))


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_masked_area_only_crops_repaints_and_pastes_back(engine, tiny_model, family):
    init = picture((64, 64))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([40, 40, 55, 55], fill=255)
    result = engine.generate(Request(prompt="x", model=str(tiny_model(family)), steps=2, seed=1, init_image=init,
                                     mask=mask, strength=1.0, mask_blur=0, inpaint_padding=8))
    assert unmasked_change(init, result.images[0], mask) == 0
    assert "Only masked, padding 8" in result.infotexts[0]


def test_outpaint_grows_the_canvas_and_keeps_the_old_image(engine, tiny_model):
    init = picture()
    result = engine.generate(Request(prompt="x", model=str(tiny_model("sd15")), steps=2, seed=1, init_image=init,
                                     outpaint=(16, 0, 0, 8), mask_blur=0))
    out = result.images[0]
    assert out.size == (48, 40)
    _, mask = outpaint_canvas(init, (16, 0, 0, 8))
    assert unmasked_change(outpaint_canvas(init, (16, 0, 0, 8))[0], out, mask) == 0
    assert "Outpaint: " in result.infotexts[0] and "left 16" in result.infotexts[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_upscale_makes_the_image_larger_with_or_without_an_init_image(engine, tiny_model, family):
    model = str(tiny_model(family))
    up = engine.generate(Request(prompt="x", model=model, steps=2, seed=1, init_image=picture(), upscale=2))
    assert up.images[0].size == (64, 64) and "Hires upscale: 2" in up.infotexts[0]
    fix = engine.generate(Request(prompt="x", model=model, steps=2, seed=1, width=32, height=32, upscale=1.5,
                                  hires_strength=0.5))
    assert fix.images[0].size == (48, 48)
    resize = engine.generate(Request(prompt="x", model=model, steps=2, seed=1, init_image=picture(), upscale=2,
                                     hires_strength=0))
    expected = picture().resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(resize.images[0]), np.asarray(expected))  # strength 0: the resize alone


def test_the_built_in_model_paints_the_asked_object_inside_the_mask(engine):
    from engine.train import evaluate

    base = engine.generate(Request(prompt="a big blue circle in the center, white background", seed=3)).images[0]
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 31, 63], fill=255)
    out = engine.generate(Request(prompt="a big red square on the left, white background", seed=4, init_image=base,
                                  mask=mask, strength=1.0)).images[0]
    assert unmasked_change(base, out, mask, margin=8) == 0  # the default 4-pixel feather reaches ~8 pixels
    red = evaluate.colour_mask(np.asarray(out), "red") if hasattr(evaluate, "colour_mask") else (
        (np.asarray(out)[..., 0] > 150) & (np.asarray(out)[..., 1] < 100) & (np.asarray(out)[..., 2] < 100))
    assert red[:, :32].sum() > 50 and red[:, 32:].sum() < red[:, :32].sum() / 5


@pytest.mark.parametrize("kw, message", [
    (dict(mask="m.png"), "A mask needs the image it masks"),
    (dict(outpaint=(8, 0, 0, 0)), "Outpainting extends an image"),
    (dict(init_image="x.png", outpaint=(0, 0, 0, 0)), "Outpaint adds nothing"),
    (dict(init_image="x.png", mask="m.png", outpaint=(8, 0, 0, 0)), "either a mask .* or borders"),
    (dict(upscale=9), "upscale = 9 is out of range"),
    (dict(upscale=1), "upscale = 1 changes nothing"),
    (dict(init_image="x.png", mask="m.png", upscale=2), "Upscale the image after the inpaint"),
])
def test_bad_edit_settings_explain_themselves(kw, message):
    from engine.request import check_request

    with pytest.raises(UserError, match=message):
        check_request(Request(prompt="x", **kw), "sd15")


def test_a_mask_of_another_size_or_an_empty_one_is_refused(engine, tiny_model):
    model = str(tiny_model("sd15"))
    with pytest.raises(UserError, match=r"The mask is 16x16 but the image is 32x32"):
        engine.generate(Request(prompt="x", model=model, steps=2, init_image=picture(), mask=left_half((16, 16))))
    with pytest.raises(UserError, match=r"The mask is empty"):
        engine.generate(Request(prompt="x", model=model, steps=2, init_image=picture(),
                                mask=Image.new("L", (32, 32), 0)))


def _span_plugin(folder, name="tiny-span", scale=2):
    """An upscaler plugin: a SPAN x2 with random weights (spandrel reads its architecture from the tensors)."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=scale)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.safetensors")
    (folder / f"{name}.toml").write_text(f'name = "{name}"\nkind = "upscaler"\nsource = "{name}.safetensors"\n')
    return folder


def test_an_upscaler_plugin_resizes_before_the_hires_pass_or_alone(tmp_path, tiny_model):
    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True, plugin_dirs=(_span_plugin(tmp_path / "plugins"),))
    model = str(tiny_model("sd15"))
    alone = engine.generate(Request(prompt="x", model=model, steps=2, seed=1, init_image=picture(), upscale=2,
                                    hires_strength=0, upscaler="tiny-span"))
    lanczos = picture().resize((64, 64), Image.Resampling.LANCZOS)
    assert alone.images[0].size == (64, 64) and not np.array_equal(np.asarray(alone.images[0]), np.asarray(lanczos))
    assert "Hires upscaler: tiny-span" in alone.infotexts[0]
    refined = engine.generate(Request(prompt="x", model=model, steps=2, seed=1, init_image=picture(), upscale=3,
                                      upscaler="tiny-span"))
    assert refined.images[0].size == (96, 96)  # x2 by the model, then Lanczos to x3, then the hires pass
    with pytest.raises(UserError, match=r"no upscaler plugin named 'tiny-spam'. Did you mean 'tiny-span'"):
        engine.generate(Request(prompt="x", model=model, steps=2, init_image=picture(), upscale=2,
                                upscaler="tiny-spam"))


def test_an_editing_model_takes_the_image_and_the_instruction(tmp_path, tiny_model):
    """A tiny Flux Kontext (the tiny Flux's components under FluxKontextPipeline) edits through its own pipeline."""
    import diffusers

    from engine.engine import Engine

    folder = tmp_path / "tiny-kontext"
    flux = diffusers.FluxPipeline.from_pretrained(tiny_model("flux"))
    diffusers.FluxKontextPipeline(**flux.components).save_pretrained(folder)
    engine = Engine(device="cpu", local_paths=True)
    assert engine.resolve(str(folder)).variant == "kontext"
    result = engine.generate(Request(prompt="make it red", model=str(folder), steps=2, seed=1, width=32, height=32,
                                     init_image=picture()))
    assert result.images[0].size == (32, 32)
    assert type(engine.load(str(folder)).pipe).__name__ == "FluxKontextPipeline"


def tiny_fill(tmp_path, tiny_model):
    """A tiny Flux Fill: the tiny Flux's parts with a transformer that also reads the masked image and the mask
    (16 latent + 16 masked-image + 16 packed-mask channels in, 16 out), under FluxFillPipeline."""
    import diffusers

    flux = diffusers.FluxPipeline.from_pretrained(tiny_model("flux"))
    config = dict(flux.transformer.config)
    config.update(in_channels=48, out_channels=16)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel.from_config(config)
    parts = dict(flux.components, transformer=transformer)
    folder = tmp_path / "tiny-fill"
    diffusers.FluxFillPipeline(**{k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
                               ).save_pretrained(folder)
    return folder


def test_flux_fill_inpaints_and_outpaints_through_its_own_pipeline(tmp_path, tiny_model):
    from engine.engine import Engine

    folder = tiny_fill(tmp_path, tiny_model)
    engine = Engine(device="cpu", local_paths=True)
    assert engine.resolve(str(folder)).variant == "fill"
    init, mask = picture(), left_half()
    painted = engine.generate(Request(prompt="a red circle", model=str(folder), steps=2, seed=1, init_image=init,
                                      mask=mask, mask_blur=0))
    assert type(engine.load(str(folder)).pipe).__name__ == "FluxFillPipeline"
    assert painted.images[0].size == (32, 32) and unmasked_change(init, painted.images[0], mask) == 0
    assert np.abs(np.asarray(painted.images[0], np.int16) - np.asarray(init, np.int16))[:, :16].mean() > 10
    grown = engine.generate(Request(prompt="x", model=str(folder), steps=2, seed=1, init_image=init,
                                    outpaint=(16, 0, 0, 0), mask_blur=0))
    canvas, border = outpaint_canvas(init, (16, 0, 0, 0))
    assert grown.images[0].size == (48, 32) and unmasked_change(canvas, grown.images[0], border) == 0
    drawn = engine.generate(Request(prompt="x", model=str(folder), steps=2, seed=1, width=32, height=16))
    assert drawn.images[0].size == (32, 16)  # text-to-image: Fill under a full mask
    with pytest.raises(UserError, match="made for inpainting and outpainting; it cannot run image to image"):
        engine.generate(Request(prompt="x", model=str(folder), steps=2, seed=1, init_image=init))


def test_controlnet_units_and_an_inpaint_mask_are_refused_together_with_the_fix():
    from engine.request import ControlUnit, check_request

    unit = ControlUnit("edge", picture(), preprocessor="none")
    with pytest.raises(UserError, match="do not combine with inpainting or outpainting.*Turn the units off"):
        check_request(Request(prompt="x", init_image=picture(), mask=left_half(), controls=[unit]), "sd15")
    with pytest.raises(UserError, match="do not combine"):
        check_request(Request(prompt="x", init_image=picture(), outpaint=(8, 0, 0, 0), controls=[unit]), "sd15")
