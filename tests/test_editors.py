"""Instruction editors on tiny random models built from configs: Qwen-Image-Edit and Edit Plus, FLUX.2 [dev] and
[klein]. Each loads through the real folder path; an edit takes the image (or several) and the instruction as they
are; the chat edits the selected image when the model is an editor; what an editor cannot do is refused in one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.request import Request, SettingsError, UserError
from engine.sources.resolve import Resolver
from studio.service import Studio
from tests.ui_fixtures import session  # noqa: F401  (a chat session)
from ui import handlers
from ui.state import Settings

ROOT = Path(__file__).resolve().parent.parent
EDITORS = {"flux2": ("flux2", ""), "flux2klein": ("flux2klein", ""), "qwenimage-edit": ("qwenimage", "edit"),
           "qwenimage-edit-plus": ("qwenimage", "edit-plus")}
RED, BLUE = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))


def edit(model, **kw) -> Request:
    args = dict(prompt="make the circle blue", model=str(model), steps=2, seed=1, init_image=RED)
    args.update(kw)
    return Request(**args)


def pixels(result, i: int = 0) -> np.ndarray:
    return np.asarray(result.images[i], dtype=np.int16)


@pytest.mark.parametrize("name", list(EDITORS))
def test_family_and_variant_read_from_the_folder(tiny_model, name):
    source = Resolver().resolve(str(tiny_model(name)))
    assert (source.family, source.variant) == EDITORS[name]


def test_klein_base_is_told_from_distilled_by_its_config(tiny_model, tmp_path, engine):
    from tests.tiny_models import flux2klein

    base = flux2klein(tmp_path / "base", distilled=False)
    assert Resolver().resolve(str(base)).variant == "base"
    plan = engine.plan(Request(prompt="x", model=str(base)))
    assert (plan.request.steps, plan.request.guidance) == (50, 4.0)
    distilled = engine.plan(Request(prompt="x", model=str(tiny_model("flux2klein"))))
    assert (distilled.request.steps, distilled.request.guidance) == (4, 1.0)


@pytest.mark.parametrize("name", list(EDITORS))
def test_an_edit_is_reproducible_and_follows_its_image(engine, tiny_model, name):
    folder = tiny_model(name)
    a, b = engine.generate(edit(folder)), engine.generate(edit(folder))
    other = engine.generate(edit(folder, init_image=BLUE))
    assert a.images[0].size == (64, 64)  # the image's own size: no size was asked for
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(other)).mean() > 0.05  # the image goes in (a random model: no colour check)
    assert a.request.strength is None  # an instruction edit has no strength
    text = a.infotexts[0]
    assert "Init image hash" in text and "Denoising strength" not in text
    assert "· edit ·" in a.settings_line()


@pytest.mark.parametrize("name", ["qwenimage-edit-plus", "flux2klein", "flux2"])
def test_several_images_go_to_one_edit(engine, tiny_model, name):
    folder = tiny_model(name)
    one = engine.generate(edit(folder))
    two = engine.generate(edit(folder, references=[BLUE]))
    again = engine.generate(edit(folder, references=[BLUE]))
    assert np.array_equal(pixels(two), pixels(again))
    assert np.abs(pixels(one) - pixels(two)).mean() > 0.05
    assert two.infotexts[0].count(",") > one.infotexts[0].count(",")  # "Edit images: a, b"
    assert "Edit images" in two.extra and len(two.extra["Edit images"].split(", ")) == 2
    assert "edit of 2 images" in two.settings_line()


def test_an_editor_takes_only_as_many_images_as_it_can(engine, tiny_model):
    with pytest.raises(SettingsError, match="edits one image at a time"):
        engine.plan(edit(tiny_model("qwenimage-edit"), references=[BLUE]))
    with pytest.raises(SettingsError, match="takes at most 4 in one edit"):
        engine.plan(edit(tiny_model("flux2klein"), references=[BLUE] * 4))
    with pytest.raises(SettingsError, match="edits one image at a time"):
        engine.plan(edit(tiny_model("sd15"), references=[BLUE]))  # not an editor at all
    with pytest.raises(SettingsError, match="go with the image to edit"):
        engine.plan(Request(prompt="x", model=str(tiny_model("flux2klein")), references=[BLUE]))


def test_an_edit_model_alone_refuses_text_to_image_in_one_line(engine, tiny_model):
    with pytest.raises(UserError) as e:
        engine.generate(Request(prompt="a cat", model=str(tiny_model("qwenimage-edit")), steps=2))
    message = str(e.value)
    assert "made for editing an image" in message and "instruction edits of an image" in message
    assert "\n" not in message


def test_klein_and_qwen_edit_inpaint_keep_the_rest_exactly(engine, tiny_model):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    for name in ("flux2klein", "qwenimage-edit"):
        result = engine.generate(edit(tiny_model(name), mask=mask, mask_blur=2))
        out = np.asarray(result.images[0], dtype=np.int16)
        assert result.images[0].size == (64, 64)  # Qwen's edit inpaint paints at 1024x1024's area: brought back
        assert np.array_equal(out[:, :24], np.asarray(RED, dtype=np.int16)[:, :24])
        assert np.abs(out[:, 40:] - np.asarray(RED, dtype=np.int16)[:, 40:]).mean() > 5


def test_flux2_has_no_inpaint_and_says_what_it_can(engine, tiny_model):
    mask = Image.new("L", (64, 64), 255)
    with pytest.raises(UserError, match="It can do: text to image, instruction edits of an image"):
        engine.generate(edit(tiny_model("flux2"), mask=mask))


# ------------------------------------------------------------------------------------------------ the chat

@pytest.fixture(scope="module")
def klein_studio(engine, tiny_model):
    return Studio(engine, default_model=str(tiny_model("flux2klein")))


def chat(studio, session, text, model) -> str:  # noqa: F811 (the fixture's name)
    settings = Settings(model=str(model), width=64, height=64, steps=2)
    list(handlers.send(studio, session, text, settings))
    return session.history[-1]["content"]


def test_the_chat_edits_the_selected_image_with_an_editing_model(klein_studio, session, tiny_model):  # noqa: F811
    model = tiny_model("flux2klein")
    first = chat(klein_studio, session, "a red circle --seed 3", model)
    assert first.startswith("#1") and session.shots[0].request.init_image is None  # text to image first
    second = chat(klein_studio, session, "make it blue --seed 3", model)
    assert second.startswith("#2") and "from #1" in second and "· edit ·" in second
    assert session.shots[1].request.init_image == session.shots[0].path
    fresh = chat(klein_studio, session, "a green square --new --seed 3", model)
    assert fresh.startswith("#3") and "from #" not in fresh and session.shots[2].request.init_image is None
    both = chat(klein_studio, session, "the circle of image 1 on image 2 --images 1,3 --seed 3", model)
    assert "from #1 and #3" in both and "edit of 2 images" in both
    shot = session.shots[3]
    assert shot.request.init_image == session.shots[0].path and shot.request.references == [session.shots[2].path]
    session.selected = 2  # a click on #3: the next edit is of #3
    assert "from #3" in chat(klein_studio, session, "make it yellow", model)


def test_the_chat_names_a_missing_image_and_a_model_that_is_no_editor(klein_studio, session, tiny_model):  # noqa: F811
    chat(klein_studio, session, "a red circle", tiny_model("flux2klein"))
    reply = chat(klein_studio, session, "both --images 1,7", tiny_model("flux2klein"))
    assert "no image #7" in reply and "#1 to #1" in reply
    reply = chat(klein_studio, session, "both --images 1", tiny_model("sd15"))
    assert "--images is for editing models" in reply


def test_an_edit_model_in_an_empty_chat_says_how_to_start(klein_studio, session, tiny_model):  # noqa: F811
    reply = chat(klein_studio, session, "make the sky purple", tiny_model("qwenimage-edit"))
    assert "edits images and draws none from text alone" in reply and "select it, then write the change" in reply
    assert session.shots == []


# -------------------------------------------------------------------------------------------------- the CLI

def test_cli_edits_two_images_reproducibly(tiny_model, tmp_path):
    RED.save(tmp_path / "red.png")
    BLUE.save(tmp_path / "blue.png")
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.png"
        run = subprocess.run([sys.executable, "app.py", "generate", "--model", str(tiny_model("qwenimage-edit-plus")),
                              "--init", str(tmp_path / "red.png"), "--ref", str(tmp_path / "blue.png"), "--prompt",
                              "the colour of image 2 on image 1", "--steps", "2", "--seed", "4", "--out", str(out),
                              "--outputs", "none"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        outs.append(Image.open(out))
    assert np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    parameters = outs[0].text["parameters"]
    assert "Seed: 4" in parameters and "Edit images:" in parameters and "Denoising strength" not in parameters
    bad = subprocess.run([sys.executable, "app.py", "generate", "--model", str(tiny_model("qwenimage-edit")),
                          "--init", str(tmp_path / "red.png"), "--ref", str(tmp_path / "blue.png"), "--prompt", "x",
                          "--outputs", "none"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "edits one image at a time" in bad.stderr and "Traceback" not in bad.stderr


def test_picking_an_editing_model_says_how_a_message_works_with_it(klein_studio, tiny_model):
    from ui import panel_handlers

    klein = panel_handlers.pick_other_model(klein_studio, str(tiny_model("flux2klein"))).status
    assert "each message changes the selected (or last) image" in klein and "up to 4 together" in klein
    edit = panel_handlers.pick_other_model(klein_studio, str(tiny_model("qwenimage-edit"))).status
    assert "edits images only" in edit and "together" not in edit
    assert "edits images" not in panel_handlers.pick_other_model(klein_studio, str(tiny_model("sd3"))).status


@pytest.mark.parametrize("name", ["flux2", "flux2klein"])
def test_flux2_takes_image_prompts_as_its_references(engine, tiny_model, name):
    """FLUX.2 has no IP-Adapter: its image prompts are its own reference images, the same call as an edit of them
    (the same pixels), with a note saying so; an editor reads them after the image it edits, within its limit."""
    from engine.request import ImagePrompt

    model = tiny_model(name)
    asked = dict(prompt="the circle of image 1 in blue", model=str(model), steps=2, seed=3, width=64, height=64)
    prompted = engine.generate(Request(**asked, image_prompts=[ImagePrompt(RED, 0.8), ImagePrompt(BLUE)]))
    edited = engine.generate(Request(**asked, init_image=RED, references=[BLUE]))
    assert np.array_equal(pixels(prompted), pixels(edited))
    assert any(n.kind == "image-prompt" and "reference images" in n and "without a scale" in n
               for n in prompted.notes), prompted.notes

    plus = dict(prompt="put the circle of image 2 on image 1", model=str(tiny_model("qwenimage-edit-plus")), steps=2,
                seed=3, init_image=RED)  # an editor: the image prompt joins after the image it edits
    joined = engine.generate(Request(**plus, image_prompts=[ImagePrompt(BLUE)]))
    assert np.array_equal(pixels(joined), pixels(engine.generate(Request(**plus, references=[BLUE]))))
    assert any("image 2 on" in n for n in joined.notes), joined.notes
    with pytest.raises(UserError, match="at most 1|one image"):  # Qwen-Image-Edit takes one image only
        engine.generate(Request(prompt="x", model=str(tiny_model("qwenimage-edit")), init_image=RED, steps=2,
                                image_prompts=[ImagePrompt(BLUE)]))
