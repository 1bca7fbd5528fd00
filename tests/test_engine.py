"""Engine on tiny SD1.5 / SDXL / Flux / SD3 / Chroma / Z-Image / Qwen-Image / FLUX.2 pipelines: loading,
reproducibility, metadata (tests/test_editors.py: the instruction editors)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.request import Request, UserError
from engine.sources.resolve import Resolver

FAMILIES = ["sd15", "sdxl", "flux", "sd3", "chroma", "zimage", "qwenimage", "flux2", "flux2klein"]
STRENGTH_IMG2IMG = [f for f in FAMILIES if not f.startswith("flux2")]  # FLUX.2's image-to-image is an edit


def small(model, **kw) -> Request:
    args = dict(prompt="a big red circle on the left", model=str(model), steps=2, width=32, height=32, seed=1)
    args.update(kw)
    return Request(**args)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_detected_from_folder(tiny_model, family):
    assert Resolver().resolve(str(tiny_model(family))).family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_pixels_other_seed_differs(engine, tiny_model, family):
    folder = tiny_model(family)
    a = engine.generate(small(folder, seed=7))
    b = engine.generate(small(folder, seed=7))
    c = engine.generate(small(folder, seed=8))
    assert a.images[0].size == (32, 32)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1.0
    assert a.seeds == [7] and a.family == family


def test_drawn_seed_is_reported_and_reproduces(engine, tiny_model):
    folder = tiny_model("sd15")
    first = engine.generate(small(folder, seed=None))
    again = engine.generate(small(folder, seed=first.seeds[0]))
    assert np.array_equal(pixels(first), pixels(again))


def test_count_gives_consecutive_seeds(engine, tiny_model):
    folder = tiny_model("sd15")
    batch = engine.generate(small(folder, seed=3, count=2))
    single = engine.generate(small(folder, seed=4))
    assert batch.seeds == [3, 4]
    # a batch of 2 may pick other CPU conv kernels than a batch of 1: equal up to float rounding
    assert np.abs(np.asarray(batch.images[1], dtype=np.int16) - pixels(single)).max() <= 2


@pytest.mark.parametrize("family", STRENGTH_IMG2IMG)
def test_img2img_shares_components_and_follows_init(engine, tiny_model, family):
    folder = tiny_model(family)
    base = engine.generate(small(folder, seed=5))
    white = Image.new("RGB", (32, 32), "white")
    black = Image.new("RGB", (32, 32), "black")
    w = engine.generate(small(folder, seed=5, init_image=white, strength=0.3, steps=4))
    k = engine.generate(small(folder, seed=5, init_image=black, strength=0.3, steps=4))
    w2 = engine.generate(small(folder, seed=5, init_image=white, strength=0.3, steps=4))
    assert np.array_equal(pixels(w), pixels(w2))
    assert np.abs(pixels(w) - pixels(k)).mean() > 1.0  # the init image matters (tiny VAEs are random: no colour check)
    loaded = engine.cache.get(str(folder.resolve()))
    variant = loaded.variant("img2img")
    denoiser = "unet" if "unet" in loaded.pipe.components else "transformer"
    assert getattr(variant, denoiser) is getattr(loaded.pipe, denoiser)
    assert base.images[0].size == (32, 32)


def test_scheduler_choice_changes_output(engine, tiny_model):
    folder = tiny_model("sd15")
    a = engine.generate(small(folder, scheduler="euler", steps=3))
    b = engine.generate(small(folder, scheduler="dpm++2m", steps=3))
    assert not np.array_equal(pixels(a), pixels(b))
    assert "Sampler: DPM++ 2M" in b.infotexts[0]


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps = 0 is out of range"),
    (dict(steps=100000), "steps = 100000 is out of range"),
    (dict(guidance=-1.0), "guidance = -1.0 is out of range"),
    (dict(width=30), "width = 30 is not a multiple of 8"),
    (dict(width=99999), "width = 99999 is out of range"),
    (dict(prompt="   "), "The prompt is empty"),
    (dict(scheduler="magic"), "Unknown scheduler 'magic'. Choose one of: euler, euler-a"),
    (dict(scheduler="flow-euler"), "does not work with Stable Diffusion 1.5 models"),
    (dict(count=0), "count = 0 is out of range"),
])
def test_bad_settings_explain_themselves(engine, tiny_model, kw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        engine.generate(small(tiny_model("sd15"), **kw))


def test_flux_needs_multiple_of_16(engine, tiny_model):
    with pytest.raises(UserError, match="not a multiple of 16"):
        engine.generate(small(tiny_model("flux"), width=40))


def test_bad_model_sources(tmp_path, engine, tiny_model):
    marker = tmp_path / "pwned"
    pickle_file = tmp_path / "evil.ckpt"
    # a pickle that would create `marker` if anything ever unpickled it
    pickle_file.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    cases = {
        str(tmp_path / "nope.safetensors"): "No such file or folder",
        str(pickle_file): "is a pickle file",
        str(tmp_path): "not a diffusers model folder",
        "some-org/some-model-that-is-not-cached": "not in the local Hugging Face cache",
    }
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    cases[str(tmp_path / "random.safetensors")] = "not a valid .safetensors file"
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    cases[str(huge)] = "not a valid .safetensors file"
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases[str(tmp_path / "empty.safetensors")] = "is empty"
    ok = engine.generate(small(tiny_model("sd15"), seed=11))
    for model, message in cases.items():
        with pytest.raises(UserError, match=message):
            engine.generate(small(model))
    assert not marker.exists()
    again = engine.generate(small(tiny_model("sd15"), seed=11))  # the loaded model still works
    assert np.array_equal(pixels(ok), pixels(again))


def test_cached_model_is_not_reloaded(engine, tiny_model):
    folder = tiny_model("sdxl")
    engine.generate(small(folder))
    first = engine.cache.get(str(folder.resolve())).pipe
    engine.generate(small(folder, seed=2))
    assert engine.cache.get(str(folder.resolve())).pipe is first


def test_cancel_stops_generation(engine, tiny_model):
    import threading

    from engine.result import Cancelled

    stop = threading.Event()
    seen = []

    def progress(step, total, latents):
        seen.append(step)
        stop.set()

    with pytest.raises(Cancelled):
        engine.generate(small(tiny_model("sd15"), steps=10), progress=progress, cancel=stop)
    assert seen == [1]


def test_nan_pixels_are_answered_with_a_note_naming_the_cause(tiny_model):
    import torch

    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True)  # its own: the weights are broken on purpose below
    model = str(tiny_model("sd15"))
    good = engine.generate(small(model, seed=3))
    assert not any("NaN" in n for n in good.notes)
    with torch.no_grad():
        engine.load(model).pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    bad = engine.generate(small(model, seed=3))
    assert any("invalid pixel values (NaN/inf)" in n and "broken model weights" in n for n in bad.notes)
    assert np.asarray(bad.images[0]).max() == 0  # shown black, not garbage


def test_the_built_in_model_names_the_words_it_does_not_know(engine):
    result = engine.generate(Request(prompt="a cat, make it green", seed=1))
    note = next(n for n in result.notes if "knows only its shapes world" in n)
    assert "'cat', 'make', 'it'" in note and "'green'" not in note and "a big red circle on the left" in note
    known = engine.generate(Request(prompt="a big red circle on the left, blue background", seed=1))
    assert not any("shapes world" in n for n in known.notes)


def test_the_built_in_model_says_what_it_made_of_a_top_hat_and_of_emoji(engine):
    """'a cat wearing a top hat' read 'top' as a position without a word; emoji made an orange blob unsaid."""
    hat = engine.generate(Request(prompt="a cat wearing a top hat", seed=1))
    assert any("It read 'top' (in 'top hat') as a position" in n for n in hat.notes)
    plain = engine.generate(Request(prompt="a big red circle on the left, blue background", seed=2))
    emoji = engine.generate(Request(prompt="a big red circle 🐱 on the left, blue background", seed=2))
    assert any("the symbols 🐱" in n for n in emoji.notes)
    assert np.array_equal(np.asarray(emoji.images[0]), np.asarray(plain.images[0]))  # the symbol changes nothing
    assert emoji.request.prompt == "a big red circle 🐱 on the left, blue background"  # shown as written


def test_the_built_in_model_reads_centre_and_middle_as_its_own_center(engine):
    """A new user wrote 'in the centre': the model ignored the word (its captions say 'center'), with a note."""
    center = engine.generate(Request(prompt="a small red square in the center, blue background", seed=4))
    for said in ("a small red square in the centre, blue background", "a little red square in the middle, blue "
                 "background"):
        result = engine.generate(Request(prompt=said, seed=4))
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(center.images[0])), said
        assert not any("shapes world" in n for n in result.notes) and result.request.prompt == said


def test_every_scheduler_offered_for_the_built_in_model_gives_an_image(engine):
    """dpm++2m-karras crashed mid-run (Karras sigmas repeat timesteps on the built-in model's near-zero terminal
    SNR) and heun was refused everywhere (it visits each timestep twice by design): the first is no longer offered
    for this model (the dropdown, /help, A1111's lists), the second works; asked for anyway, karras is refused with
    the model's default named."""
    from engine.request import valid_schedulers

    offered = valid_schedulers("builtin")
    assert "dpm++2m-karras" not in offered and "heun" in offered
    for name in offered:
        result = engine.generate(Request(prompt="a red circle", scheduler=name, steps=10, seed=1))
        assert result.images[0].size == (64, 64), name
    with pytest.raises(UserError, match=r"dpm\+\+2m-karras.*dpm\+\+2m"):
        engine.generate(Request(prompt="a red circle", scheduler="dpm++2m-karras", steps=10, seed=1))


def test_the_engine_plans_every_default_before_it_loads_anything():
    """Engine.plan decides the request (the family's defaults, a LoRA plugin's own sampling, the seed, the job)
    torch-free and without a load; generate then samples exactly that plan."""
    import subprocess
    import sys

    from engine.engine import Engine
    from engine.request import LoraSpec, Request

    engine = Engine(device="cpu")
    plan = engine.plan(Request(prompt="a red circle", loras=[LoraSpec("fast", 1.0)]))
    assert (plan.request.steps, plan.request.scheduler, plan.request.guidance) == (4, "ddim", 1.0)
    assert plan.job == "txt2img" and plan.request.seed is not None and any("LoRA fast" in n for n in plan.notes)
    plain = engine.plan(Request(prompt="a red circle", seed=5, width=256, height=256))
    assert (plain.request.steps, plain.request.width, plain.seeds) == (10, 256, [5])
    assert any("learned sizes from 48 to 128" in n for n in plain.notes)
    assert not engine.cache.models, "planning loaded a model"
    code = "import sys, engine.plan; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    result = engine.generate(Request(prompt="a red circle", seed=5, steps=2))
    assert result.seeds == [5] and result.request.steps == 2


def test_qwen_image_guides_with_true_cfg_even_without_a_negative_prompt(engine, tiny_model):
    """Qwen-Image's guidance is true CFG (`true_cfg_scale`), which its pipeline runs only with a negative prompt:
    the family sends " " when none is given, so guidance 1 and 12 differ (passed as `guidance_scale`, which this
    transformer has no embedding for, both gave the same pixels)."""
    folder = tiny_model("qwenimage")
    plain = engine.generate(small(folder, seed=3, guidance=1.0))
    guided = engine.generate(small(folder, seed=3, guidance=12.0))
    assert not np.array_equal(pixels(plain), pixels(guided))
    assert "CFG scale: 12" in guided.infotexts[0]
