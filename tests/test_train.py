"""The training code cannot rot: every stage at toy size (`train smoke`), and `train-lora` from a folder of images."""

from __future__ import annotations

import json
import random

import numpy as np
from PIL import Image

from engine.request import LoraSpec, Request
from engine.train import world
from tests.test_cli import app


def test_smoke_run_trains_every_stage_and_the_result_loads(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from engine.train.run import smoke

    folder = smoke(tmp_path)  # VAE, UNet + text encoder, decoder, a ControlNet, the demo LoRAs; then generates
    pipe = StableDiffusionPipeline.from_pretrained(folder / "builtin")
    assert json.loads((folder / "builtin" / "studio.json").read_text())["family"] == "builtin"
    assert pipe.unet.dtype.is_floating_point and pipe.text_encoder.config.hidden_size == 128
    # the saved tokenizer carries no padding state from training
    assert json.loads((folder / "builtin" / "tokenizer" / "tokenizer.json").read_text())["padding"] is None
    cn = ControlNetModel.from_pretrained(folder / "controlnet-edge")
    assert tuple(cn.config.conditioning_embedding_out_channels) == (16, 32, 64)
    for name in ("outline", "pastel"):
        assert (folder / "plugins" / f"{name}.safetensors").stat().st_size > 0
        assert f'name = "{name}"' in (folder / "plugins" / f"{name}.toml").read_text()


def test_train_lora_from_a_folder_makes_a_plugin_that_changes_the_image(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    for i in range(4):
        scene = world.random_scene(rng, two_objects=0.0)
        Image.fromarray(world.render(scene, "pastel")).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(world.caption(scene))
    out = tmp_path / "plugins"
    r = app("train-lora", str(data), "--name", "mine", "--steps", "3", "--trigger", "mine style", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "LoRA plugin written" in r.stdout
    manifest = (out / "mine.toml").read_text()
    assert 'family = "builtin"' in manifest and 'trigger = "mine style"' in manifest

    monkeypatch.setenv("STUDIO_PLUGINS", str(out))
    from engine.engine import Engine

    engine = Engine(device="cpu")
    prompt = "a big red circle on the left, blue background"
    base = engine.generate(Request(prompt=prompt, seed=1)).images[0]
    tuned = engine.generate(Request(prompt=prompt, seed=1, loras=[LoraSpec("mine", 1.0)]))
    assert "mine style" in str(tuned.triggers)  # the trigger joins the prompt
    assert np.abs(np.asarray(base, np.int16) - np.asarray(tuned.images[0], np.int16)).mean() > 0.1


def test_train_lora_refuses_an_empty_folder_with_a_message(tmp_path):
    r = app("train-lora", str(tmp_path), "--name", "x", "--steps", "1", "--out", str(tmp_path / "p"))
    assert r.returncode == 2
    assert "has no training images" in r.stderr and "Traceback" not in r.stderr
