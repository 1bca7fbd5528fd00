"""Chat handlers against the real engine on a tiny SD1.5 pipeline (no mocks): replies, flags, actions, restore."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from engine.images import metadata
from engine.request import ControlUnit, UserError
from studio.previews import MIN_RUN_S
from studio.service import model_family
from tests.ui_fixtures import *  # noqa: F403  (the UI tests' fixtures: studio, shared, session, settings)
from tests.ui_fixtures import a1111_png
from ui import api, handlers, inline
from ui.marks import PROBLEM
from ui.state import Session, Settings


def say(studio, session, text, settings, files=()):
    """Send one message and return the assistant's text replies of this turn."""
    before = len(session.history)
    updates = list(handlers.send(studio, session, text, settings, files))
    assert updates, "a handler must always redraw the chat"
    return [m["content"] for m in session.history[before:] if m["role"] == "assistant"
            and isinstance(m["content"], str)]


def test_message_replies_with_png_that_keeps_its_settings(studio, session, settings):
    replies = say(studio, session, "a red circle on a blue background", settings)
    assert len(session.shots) == 1
    shot = session.shots[0]
    images = [m for m in session.history if isinstance(m["content"], dict)]
    assert images[-1]["content"]["path"] == shot.path
    with Image.open(shot.path) as png:
        assert png.format == "PNG" and png.size == (32, 32)
        assert "Seed: " in png.text["parameters"] and "studio" in png.text
    assert "32x32" in replies[-1] and "2 steps" in replies[-1] and f"seed {shot.request.seed}" in replies[-1]
    assert [m["role"] for m in session.history] == ["user", "assistant", "assistant"]


def test_inline_flags_override_the_panel_for_one_turn(studio, session, settings):
    replies = say(studio, session, "a red circle --seed 42 --steps 3 --cfg 6 --no blurry text", settings)
    assert "seed 42" in replies[-1] and "3 steps" in replies[-1] and "cfg 6" in replies[-1]
    request, _ = metadata.read_png_settings(session.shots[-1].path)
    assert request.seed == 42 and request.steps == 3 and request.prompt == "a red circle"
    assert "blurry text" in request.negative
    say(studio, session, "a red circle", settings)  # the next turn is back to the panel's settings
    assert session.shots[-1].request.steps == 2


def test_aspect_ratio_and_count_flags(studio, session, settings):
    say(studio, session, "a square --n 2", settings)
    first, second = session.shots
    assert first.request.seed + 1 == second.request.seed and first.turn.count == 2
    # the tiny folder is an sd15 model: 2:1 keeps about its native 512x512 area
    request = handlers.build_request(studio, session, inline.parse_message("a square --ar 2:1"), settings)
    assert (request.width, request.height) == (728, 360)


@pytest.mark.parametrize("text, expected", [
    ("a cat --frobnicate 3", "I don't know the flag --frobnicate"),
    ("a cat --sede 3", "Did you mean --seed?"),
    ("a cat --steps many", "--steps many"),
    ("a cat --steps 100000", "steps = 100000 is out of range"),
    ("a cat --ar 10:1", "too extreme"),
    ("a cat --seed 4 wearing a hat", "Put the prompt first"),
    ("/imagine a cat", "Unknown command"),
    ("--seed 4", "only flags and no prompt"),
])
def test_bad_flags_get_a_clear_reply(studio, session, settings, text, expected):
    replies = say(studio, session, text, settings)
    assert replies and replies[-1].startswith(PROBLEM) and expected in replies[-1]
    assert session.shots == []


def test_empty_message_and_help(studio, session, settings):
    assert "Type what you'd like to see" in say(studio, session, "   ", settings)[-1]
    assert "--seed" in say(studio, session, "/help", settings)[-1]
    assert session.shots == []


def test_reroll_keeps_settings_with_a_new_seed(studio, session, settings):
    say(studio, session, "a red circle --seed 7", settings)
    list(handlers.reroll(studio, session, settings))
    first, second = session.shots
    assert second.request.seed != 7 and second.request.prompt == first.request.prompt
    assert (second.request.steps, second.request.width) == (first.request.steps, first.request.width)


def test_vary_and_refine_run_image_to_image(studio, session, settings):
    replies = say(studio, session, "make it brighter --refine", settings)
    assert "no image to refine yet" in replies[-1]
    say(studio, session, "a red circle", settings)
    list(handlers.vary(studio, session, settings))  # 2 steps x 0.35 is no step at all: the engine explains
    assert "steps leave no denoising step to run" in session.history[-1]["content"]
    session.shots.clear()
    settings = dataclasses.replace(settings, steps=4)  # image-to-image runs steps x strength of them
    say(studio, session, "a red circle", settings)
    list(handlers.vary(studio, session, settings))
    varied = session.shots[-1]
    assert varied.request.init_image == session.shots[0].path and varied.request.strength == 0.35
    assert "strength 0.35" in session.history[-1]["content"]
    say(studio, session, "a red circle, brighter --refine 0.6", settings)
    assert session.shots[-1].request.init_image == varied.path and session.shots[-1].request.strength == 0.6
    refining = dataclasses.replace(settings, refine=True, strength=0.3)
    session.selected = 0
    say(studio, session, "a red circle, darker", refining)
    assert session.shots[-1].request.init_image == session.shots[0].path


def test_reuse_and_use_as_control(studio, session, settings):
    say(studio, session, "a blue square --seed 11 --steps 3", settings)
    update = handlers.reuse(session, Settings(model=settings.model))
    assert update.prompt == "a blue square" and update.settings.seed == 11 and update.settings.steps == 3
    assert handlers.use_as_control(session) == session.shots[-1].path


def test_restore_from_our_png_fills_the_settings(studio, session, settings, tmp_path):
    say(studio, session, "a green triangle --seed 5 --steps 3", settings)
    other = Session.new()
    try:
        update = handlers.restore(studio, other, session.shots[-1].path, Settings(model="builtin"))
        assert update.prompt == "a green triangle"
        assert (update.settings.seed, update.settings.steps, update.settings.model) == (5, 3, settings.model)
        assert "Restored from this app's own settings" in other.history[-1]["content"]
    finally:
        other.close()


def test_restore_from_automatic1111_png(studio, session, settings, tmp_path):
    path = a1111_png(tmp_path / "a1111.png", "a castle on a hill\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, "
                     "Schedule type: Automatic, CFG scale: 7, Seed: 123, Size: 512x768, Model: v1-5")
    update = handlers.restore(studio, session, path, settings)
    s = update.settings
    assert (s.steps, s.guidance, s.seed, s.width, s.height, s.scheduler) == (20, 7.0, 123, 512, 768, "euler-a")
    assert s.negative == "fog" and s.model == settings.model and update.prompt == "a castle on a hill"
    assert "isn't available here" in session.history[-1]["content"]


def test_restore_without_metadata_or_from_a_non_image(studio, session, settings, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    fake = tmp_path / "page.png"
    fake.write_text("<!doctype html><html></html>")
    for path, expected in ((plain, "no generation settings"), (fake, "web page")):
        update = handlers.restore(studio, session, str(path), settings)
        assert update.settings is None and expected in session.history[-1]["content"]


def test_dropped_png_in_a_message_restores_then_generates(studio, session, settings):
    say(studio, session, "a yellow circle --seed 3", settings)
    source = session.shots[-1].path
    updates = list(handlers.send(studio, session, "", settings, [source]))
    assert updates[0].settings.seed == 3 and updates[0].prompt == "a yellow circle"
    assert len(session.shots) == 1


def test_two_sessions_do_not_share_history(studio, settings):
    a, b = Session.new(), Session.new()
    try:
        say(studio, a, "a red circle", settings)
        assert b.history == [] and b.shots == [] and a.workdir != b.workdir
        say(studio, b, "a blue square", settings)
        assert [m["content"] for m in a.history if m["role"] == "user"] == ["a red circle"]
    finally:
        a.close(), b.close()


def test_bad_model_answers_in_chat_and_the_next_message_works(studio, session, settings, tmp_path):
    bad = dataclasses.replace(settings, model=str(tmp_path / "no-such-model"))
    assert "No such file or folder" in say(studio, session, "a red circle", bad)[-1]
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert "not a diffusers model folder" in say(studio, session, "a red circle", dataclasses.replace(
        settings, model=str(empty)))[-1]
    say(studio, session, "a red circle", settings)
    assert len(session.shots) == 1


def test_control_unit_without_image_is_explained(studio, session, settings):
    with_control = dataclasses.replace(settings, controls=[ControlUnit(kind="edge", image=None)])
    assert "has no image" in say(studio, session, "a red circle", with_control)[-1]


def test_progress_preview_and_stop(studio, session, settings):
    many = dataclasses.replace(settings, steps=40)
    studio.previews.min_run_s = 0.0  # the tiny model's 40 steps count as a run long enough for previews
    session.history.clear()
    seen_preview = False
    for _ in handlers.send(studio, session, "a red circle", many):
        seen_preview |= any(isinstance(m["content"], dict) and m["content"]["path"].endswith(".jpg")
                            for m in session.history)
        if seen_preview:
            handlers.stop(session)
    studio.previews.min_run_s = MIN_RUN_S
    assert seen_preview
    assert "Stopped" in session.history[-1]["content"] and session.shots == []
    say(studio, session, "a red circle", settings)  # a stop leaves the session usable
    assert len(session.shots) == 1


def test_shared_server_refuses_server_paths(shared, tmp_path):
    with pytest.raises(UserError, match="is a file or folder name; on this server models are chosen by Hub id"):
        model_family(shared, str(tmp_path))
    assert model_family(shared, shared.default_model) == "sd15"  # the operator's own --model stays usable
    assert model_family(shared, "builtin") == "builtin"


def test_api_generate_returns_pngs_with_metadata(studio, tmp_path):
    paths = api.generate(studio, tmp_path, "a red circle", steps=2, seed=9, width=32, height=32, count=2)
    assert len(paths) == 2
    assert metadata.read_png_settings(paths[1])[0].seed == 10


def test_inline_parser():
    asked = inline.parse_message("<lora:pastel:0.8> a cat —seed 5 --lora ink=0.5 --size 64 --refine")
    assert asked.prompt == "a cat" and asked.overrides == {"seed": 5, "width": 64, "height": 64}
    assert [(x.name, x.weight) for x in asked.loras] == [("pastel", 0.8), ("ink", 0.5)]
    assert asked.refine == inline.DEFAULT_REFINE
    assert inline.size_for_ratio((3, 2), 1024, 16) == (1248, 832)
    assert inline.parse_message("rock--paper").prompt == "rock--paper"
    with pytest.raises(UserError, match="either --ar"):
        inline.parse_message("x --ar 1:1 --size 64x64")


def test_build_has_the_named_api_endpoint(engine, studio):
    from ui.app import build

    demo = build(engine, studio.default_model)
    names = [d.get("api_name") for d in demo.config["dependencies"]]
    assert "generate" in names
    assert build(engine, "/no/such/model") is not None  # a missing default model: the page still comes up
