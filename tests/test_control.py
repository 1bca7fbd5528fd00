"""ControlNet units on tiny SD1.5 / SDXL / Flux / SD3 / Qwen-Image ControlNets: control changes the output, scale 0
is no control, multi-unit, start/end, and each bad input's message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine import control
from engine.request import ControlUnit, Request, UserError


def _perturb(net, seed: int = 0) -> None:
    """A fresh ControlNet's zero convolutions change nothing: give them weights so tests can see control."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "controlnet_" in name or "zero" in name or "conv_out" in name or "pos_embed_input" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def tiny_controlnets(tiny_model, tmp_path_factory):
    """family -> folder of a saved tiny ControlNet made from that family's tiny model."""
    import diffusers

    out = {}
    root = tmp_path_factory.mktemp("controlnets")
    for family in ("sd15", "sdxl", "flux", "sd3", "qwenimage"):
        folder = tiny_model(family)
        if family == "sd3":
            transformer = diffusers.SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")
            net = diffusers.SD3ControlNetModel.from_transformer(transformer, num_layers=1,
                                                                num_extra_conditioning_channels=0)
        elif family == "qwenimage":
            transformer = diffusers.QwenImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
            net = diffusers.QwenImageControlNetModel.from_transformer(transformer, num_layers=1, attention_head_dim=16,
                                                                      num_attention_heads=2)
        elif family == "flux":
            transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
            net = diffusers.FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                                 attention_head_dim=16, num_attention_heads=2)
        else:
            unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
            net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
        _perturb(net)
        net.save_pretrained(root / family)
        out[family] = root / family
    return out


@pytest.fixture
def use_controlnets(monkeypatch, tiny_controlnets):
    for family, path in tiny_controlnets.items():
        table = {k: (str(path), None) for k in ("edge", "depth", "pose")}
        monkeypatch.setitem(control.CONTROLNETS, family, table)
    return tiny_controlnets


def edge_map(x0: int = 4) -> Image.Image:
    img = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(img).rectangle([x0, 8, x0 + 12, 24], outline="white", width=2)
    return img


def gen(engine, family_folder, controls=(), **kw):
    args = dict(prompt="a red square", model=str(family_folder), steps=2, width=32, height=32, seed=3,
                controls=list(controls))
    args.update(kw)
    return np.asarray(engine.generate(Request(**args)).images[0], dtype=np.int16)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "sd3", "qwenimage"])
def test_control_changes_output_and_scale_zero_is_none(engine, tiny_model, use_controlnets, family):
    folder = tiny_model(family)
    base = gen(engine, folder)
    on = gen(engine, folder, [ControlUnit("edge", edge_map(), preprocessor="none", scale=1.0)])
    zero = gen(engine, folder, [ControlUnit("edge", edge_map(), preprocessor="none", scale=0.0)])
    other = gen(engine, folder, [ControlUnit("edge", edge_map(16), preprocessor="none", scale=1.0)])
    assert np.abs(on - base).mean() > 0.5
    assert np.abs(on - other).mean() > 0.1  # the map's content matters, not just its presence
    assert np.abs(zero - base).max() <= 1  # scale 0 is the base model (up to rounding)


@pytest.mark.parametrize("family", ["sd15", "flux", "sd3", "qwenimage"])
def test_multi_unit_and_start_end(engine, tiny_model, use_controlnets, family):
    folder = tiny_model(family)
    one = gen(engine, folder, [ControlUnit("edge", edge_map(), preprocessor="none")], steps=4)
    two = gen(engine, folder, [ControlUnit("edge", edge_map(), preprocessor="none"),
                               ControlUnit("depth", edge_map(16), preprocessor="none", scale=0.7)], steps=4)
    late = gen(engine, folder, [ControlUnit("edge", edge_map(), preprocessor="none", start=0.5, end=1.0)], steps=4)
    assert np.abs(one - two).mean() > 0.1
    assert np.abs(one - late).mean() > 0.1


def test_control_map_is_returned_and_canny_preprocesses(engine, tiny_model, use_controlnets, tmp_path):
    photo = Image.new("RGB", (80, 60), (30, 60, 200))
    ImageDraw.Draw(photo).ellipse([20, 10, 60, 50], fill=(240, 200, 30))
    path = tmp_path / "photo.jpg"
    photo.save(path)
    result = engine.generate(Request(prompt="x", model=str(tiny_model("sd15")), steps=2, width=32, height=32,
                                     controls=[ControlUnit("edge", str(path))]))
    cmap = np.asarray(result.control_maps[0])
    assert cmap.shape[:2] == (32, 32)
    assert cmap.max() > 150 and 0.02 < (cmap > 60).mean() < 0.6  # white edges on black
    assert "ControlNet 0" in result.infotexts[0] and "canny" in result.infotexts[0]


@pytest.mark.parametrize("unit, message", [
    (ControlUnit("edge", None), "has no image"),
    (ControlUnit("sketch", "x.png"), "unknown type 'sketch'"),
    (ControlUnit("edge", "x.png", scale=3.0), "scale = 3.0 is out of range"),
    (ControlUnit("edge", "x.png", start=0.6, end=0.4), "start \\(0.6\\) must be before end"),
    (ControlUnit("edge", "x.png", preprocessor="openpose"), "makes pose maps, not edge"),
    (ControlUnit("edge", "x.png", preprocessor="magic"), "Unknown preprocessor 'magic'"),
])
def test_bad_units_explain_themselves(engine, tiny_model, use_controlnets, unit, message):
    with pytest.raises(UserError, match=message):
        engine.generate(Request(prompt="x", model=str(tiny_model("sd15")), steps=2, width=32, height=32,
                                controls=[unit]))


def test_bad_images_and_missing_weights(engine, tiny_model, use_controlnets, tmp_path):
    folder = str(tiny_model("sd15"))
    html = tmp_path / "page.png"
    html.write_text("<html><body>not an image</body></html>")
    with pytest.raises(UserError, match="edge control image"):
        engine.generate(Request(prompt="x", model=folder, steps=2, width=32, height=32,
                                controls=[ControlUnit("edge", str(html), preprocessor="none")]))
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), "gray").save(photo)
    with pytest.raises(UserError, match="needs weights from .*upload a ready depth map"):
        engine.generate(Request(prompt="x", model=folder, steps=2, width=32, height=32,
                                controls=[ControlUnit("depth", str(photo), preprocessor="midas")]))
    ok = engine.generate(Request(prompt="x", model=folder, steps=2, width=32, height=32, seed=1))
    assert ok.images[0].size == (32, 32)  # nothing else disturbed


def test_controlnet_of_another_family_is_refused(engine, tiny_model, tiny_controlnets, monkeypatch):
    monkeypatch.setitem(control.CONTROLNETS, "sdxl", {"edge": (str(tiny_controlnets["sd15"]), None)})
    with pytest.raises(UserError, match="made for another model family"):
        engine.generate(Request(prompt="x", model=str(tiny_model("sdxl")), steps=2, width=32, height=32,
                                controls=[ControlUnit("edge", edge_map(), preprocessor="none")]))
