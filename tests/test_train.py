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

    folder = smoke(tmp_path)  # VAE, UNet + text encoder, decoder, multi-aspect UNet, a ControlNet, the demo LoRAs
    pipe = StableDiffusionPipeline.from_pretrained(folder / "builtin")
    assert json.loads((folder / "builtin" / "studio.json").read_text())["family"] == "builtin"
    assert pipe.unet.dtype.is_floating_point and pipe.text_encoder.config.hidden_size == 128
    # the saved tokenizer carries no padding state from training
    assert json.loads((folder / "builtin" / "tokenizer" / "tokenizer.json").read_text())["padding"] is None
    # the multi-aspect continuation keeps the first phase's record and adds its own
    notes = json.loads((folder / "builtin-aspect" / "studio.json").read_text())
    assert [p["steps"] for p in notes["unet_phases"]] == [3, 3] and notes["unet_phases"][1]["sides"] == [48, 80]
    assert "phase 2 continued the UNet" in notes["timing_note"] and notes["native_size"] == 64
    cn = ControlNetModel.from_pretrained(folder / "controlnet-edge")
    assert tuple(cn.config.conditioning_embedding_out_channels) == (16, 32, 64)
    for name in ("outline", "pastel"):
        assert (folder / "plugins" / f"{name}.safetensors").stat().st_size > 0
        assert f'name = "{name}"' in (folder / "plugins" / f"{name}.toml").read_text()


def _toy_run(ckpt, steps: int, stop_after: int | None = None):
    """A linear model fitted by the shared training loop; `stop_after` interrupts it like a killed process."""
    import torch

    from engine.train.loop import train_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    target = torch.tensor([[1.0], [-2.0], [0.5]])

    def make(step):
        if stop_after is not None and step >= stop_after:
            raise KeyboardInterrupt
        return torch.randn(8, 3, generator=torch.Generator().manual_seed(step))

    def loss_fn(step, x):
        return ((model(x) - x @ target) ** 2).mean()

    info = train_loop("toy", {"model": model}, torch.optim.AdamW(model.parameters(), lr=0.1), make, loss_fn,
                      steps=steps, lr=0.1, warmup=2, ckpt=ckpt, save_every=2, log_every=1,
                      finish=lambda budget: {"steps": budget.total})
    return model, info


def test_the_training_loop_resumes_where_it_stopped_and_marks_the_end_done(tmp_path):
    import pytest
    import torch

    target = torch.tensor([[1.0, -2.0, 0.5]])
    untrained, _ = _toy_run(None, 0)
    straight, info = _toy_run(tmp_path / "a.ckpt", 25)
    assert info == {"steps": 25} and torch.load(tmp_path / "a.ckpt", weights_only=False)["done"]
    assert (straight.weight - target).norm() < 0.5 * (untrained.weight - target).norm()  # it learned
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b.ckpt", 25, stop_after=13)
    assert torch.load(tmp_path / "b.ckpt", weights_only=False)["step"] == 12  # the last periodic save
    resumed, _ = _toy_run(tmp_path / "b.ckpt", 25)
    assert torch.equal(resumed.weight, straight.weight)  # same batches, same schedule: the same weights
    again, info = _toy_run(tmp_path / "b.ckpt", 25, stop_after=0)  # done: loads the weights, trains nothing
    assert torch.equal(again.weight, straight.weight) and info == {"steps": 25}


def test_train_lora_from_a_folder_makes_a_plugin_that_changes_the_image(tmp_path):
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

    from engine.engine import Engine

    engine = Engine(device="cpu", plugin_dirs=(out,))
    prompt = "a big red circle on the left, blue background"
    base = engine.generate(Request(prompt=prompt, seed=1)).images[0]
    tuned = engine.generate(Request(prompt=prompt, seed=1, loras=[LoraSpec("mine", 1.0)]))
    assert "mine style" in str(tuned.triggers)  # the trigger joins the prompt
    assert np.abs(np.asarray(base, np.int16) - np.asarray(tuned.images[0], np.int16)).mean() > 0.1


def test_train_lora_refuses_an_empty_folder_with_a_message(tmp_path):
    r = app("train-lora", str(tmp_path), "--name", "x", "--steps", "1", "--out", str(tmp_path / "p"))
    assert r.returncode == 2
    assert "has no training images" in r.stderr and "Traceback" not in r.stderr
