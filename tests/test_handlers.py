"""The UI's module-level handlers called directly, no browser: panel handlers, selection, the one Settings ->
Request conversion, the API's work, error replies, and the page following `engine.config.local_paths`.

Real engine on a tiny SD1.5 folder, real PNG files; every assertion is on what the user would see.
"""

from __future__ import annotations

import dataclasses

import gradio as gr
import pytest
from PIL import Image

from engine.engine import Cancelled
from engine.request import Request, UserError, check_request
from studio.service import builtin_defaults, model_choices
from tests.ui_fixtures import *  # noqa: F403  (the UI tests' fixtures: studio, shared, session, settings)
from tests.ui_fixtures import a1111_png
from ui import api, handlers, panel_handlers, runner
from ui.marks import PROBLEM, STOPPED
from ui.panel import Panel
from ui.state import RANDOM_SEED, Settings


def generate(studio, session, text, settings):
    list(handlers.send(studio, session, text, settings))
    return session.history[-1]["content"]


# ------------------------------------------------------------------------------------------ panel handlers

def test_picking_a_model_brings_its_family_defaults_and_plugins(studio):
    view = panel_handlers.pick_model(studio, studio.default_model)
    assert view.status.startswith(f"Model **{studio.default_model}**") and "next message" in view.status
    d = view.defaults
    assert (d["family"], d["steps"], d["guidance"], d["width"], d["multiple"]) == ("sd15", 30, 7.5, 512, 8)
    assert d["schedulers"][0] == "default" and "dpm++2m-karras" in d["schedulers"]
    assert "flow-euler" not in d["schedulers"]  # a flux scheduler is no choice for an sd15 model
    assert isinstance(view.plugins, list)


def test_a_shared_server_refuses_a_folder_in_the_picker(shared, tmp_path):
    view = panel_handlers.pick_other_model(shared, f"  {tmp_path}  ")
    assert view.defaults is None and view.model == str(tmp_path)
    assert view.status.startswith(PROBLEM) and "on this server models are chosen by Hub id" in view.status
    hub = panel_handlers.pick_other_model(shared, "")
    assert hub.status == "Type a Hub id (owner/name) first." and hub.defaults is None


def test_a_private_server_takes_a_folder_and_says_what_is_wrong_with_it(studio, tmp_path):
    assert "a folder or a .safetensors path" in panel_handlers.pick_other_model(studio, "").status
    view = panel_handlers.pick_other_model(studio, str(tmp_path / "missing"))
    assert view.defaults is None and "No such file or folder" in view.status
    ok = panel_handlers.pick_other_model(studio, studio.default_model)
    assert ok.defaults["family"] == "sd15" and ok.status.endswith("selected; it loads on the next message.")


def test_aspect_presets_keep_the_native_area(studio, shared, tmp_path):
    assert panel_handlers.aspect_size(studio, studio.default_model, "3:2") == (624, 416)
    assert panel_handlers.aspect_size(studio, studio.default_model, "9:16") == (384, 680)
    with pytest.raises(UserError, match="on this server models are chosen by Hub id"):
        panel_handlers.aspect_size(shared, str(tmp_path), "1:1")


def test_page_load_restores_kept_settings_unless_their_model_is_gone(studio, shared, tmp_path):
    kept = Settings(model=studio.default_model, steps=7, seed=12, count=3).to_browser()
    remembered, view = panel_handlers.page_load(studio, kept)
    assert (remembered.steps, remembered.seed, remembered.count) == (7, 12, 3)
    assert view.defaults["family"] == "sd15"
    gone = Settings(model=str(tmp_path / "deleted-model")).to_browser()
    for server, data in ((studio, gone), (shared, gone), (studio, "not a dict"), (studio, None)):
        remembered, view = panel_handlers.page_load(server, data)
        assert remembered is None and view.model == studio.default_model and view.defaults is None


# ------------------------------------------------------------------------------------------ Settings -> Request

def test_form_values_become_one_request_with_the_defaults_unset():
    unset = Settings(model="builtin", steps=0, guidance=-1, seed=RANDOM_SEED, width=0, height=0,
                     scheduler="default", count=0).request("a fox")
    assert unset == Request(prompt="a fox", model="builtin")  # every None: the family's default
    real = Settings(model="builtin", guidance=0, seed=0, width=48, height=40, scheduler="euler",
                    count=2).request("a fox")
    assert (real.guidance, real.seed, real.width, real.height, real.scheduler, real.count) == (0, 0, 48, 40,
                                                                                              "euler", 2)
    typo = Settings(model="builtin", seed=-7, steps=-3).request("a fox")  # not the form's marks: named, not random
    assert (typo.seed, typo.steps) == (-7, -3)
    with pytest.raises(UserError, match=r"seed = -7 is out of range"):
        check_request(dataclasses.replace(typo, steps=None), "builtin")


def test_the_api_uses_the_same_conversion_and_the_engines_messages(studio, shared, tmp_path):
    with pytest.raises(UserError, match=r"steps = 500 is out of range"):
        api.generate(studio, tmp_path, "a red circle", steps=500)
    with pytest.raises(UserError, match="The prompt is empty"):
        api.generate(studio, tmp_path, "   ")
    with pytest.raises(UserError, match="on this server models are chosen by Hub id"):
        api.generate(shared, tmp_path, "a red circle", model=str(tmp_path))
    paths = api.generate(studio, tmp_path, "a red circle", steps=2, guidance=0, seed=0, width=24, height=16)
    with Image.open(paths[0]) as png:
        assert png.size == (24, 16) and "Seed: 0," in png.text["parameters"] and "CFG scale: 0," in png.text[
            "parameters"]


def test_too_few_img2img_steps_show_the_engines_own_message(studio, session, settings):
    generate(studio, session, "a red circle", settings)
    list(handlers.vary(studio, session, settings))  # 2 steps x 0.35 strength: no denoising step
    shot = session.shots[-1]
    with pytest.raises(UserError) as expected:
        check_request(dataclasses.replace(shot.request, init_image=shot.path, strength=0.35), "sd15")
    assert session.history[-1]["content"] == f"{PROBLEM} {expected.value}"
    assert len(session.shots) == 1


# ------------------------------------------------------------------------------------------ selection, seed, stop

def test_selection_follows_clicks_in_the_chat_and_gallery(studio, session, settings):
    assert handlers.selected_label(session) == "Actions apply to the selected image (none yet)."
    assert handlers.last_seed(session) is None and handlers.last_seed(None) is None
    generate(studio, session, "a red circle --seed 21", settings)
    generate(studio, session, "a blue square --seed 22", settings)
    first = session.shots[0]
    label = handlers.select_message(session, [first.message_index, None])  # gradio's [index, None] form
    assert label.startswith("Selected: **#1**") and "seed 21" in label and "(latest)" not in label
    assert handlers.last_seed(session) == 21
    assert handlers.select(session, 1).startswith("Selected: **#2** (latest)")
    assert handlers.select(session, 99).startswith("Selected: **#2**")  # out of range: unchanged
    handlers.select_message(session, 0)  # the user's own message: no image, the selection stays
    assert handlers.last_seed(session) == 22


def test_reroll_and_vary_before_any_image_say_so(studio, session, settings):
    for handler, reply in ((handlers.reroll, "Nothing to reroll yet"), (handlers.vary, "Nothing to vary yet")):
        updates = list(handler(studio, session, settings))
        assert len(updates) == 1 and session.history[-1]["content"].startswith(reply)
    assert handlers.use_as_control(session) is None and handlers.reuse(session, settings).settings is None


def test_stop_before_and_during_a_run(studio, session, settings):
    handlers.stop(None)  # a tab that never sent anything
    handlers.stop(session)
    assert session.cancel.is_set()
    generate(studio, session, "a red circle", settings)  # a new run clears an old stop
    assert len(session.shots) == 1


def test_error_replies():
    assert runner.error_message(Cancelled()).startswith(f"{STOPPED} Nothing was saved")
    assert runner.error_message(UserError("Use 1 to 200 steps.")) == f"{PROBLEM} Use 1 to 200 steps."
    reply = runner.error_message(RuntimeError("CUDA exploded at 0x7f"))
    assert "RuntimeError" in reply and "0x7f" not in reply and "server log" in reply


def test_restore_replaces_a_scheduler_of_another_family(studio, session, settings, tmp_path):
    path = a1111_png(tmp_path / "flux.png", "a misty lake\nSteps: 12, Sampler: Euler, Schedule type: Simple, "
                     "CFG scale: 3.5, Seed: 77, Size: 512x512, Model: v1-5")
    update = handlers.restore(studio, session, path, settings)
    assert update.settings.scheduler == "default" and update.settings.seed == 77 and update.prompt == "a misty lake"
    assert "flow-euler doesn't fit Stable Diffusion 1.5 models" in session.history[-1]["content"]


# ------------------------------------------------------------------------------------------ the panel, the page

def test_panel_shows_and_reads_back_the_same_settings(studio):
    with gr.Blocks():
        panel = Panel(model_choices(studio.default_model), Settings(model=studio.default_model),
                      builtin_defaults(), local_paths=True)
    values = {c: c.value for c in panel.settings_inputs()}
    wanted = Settings(model=studio.default_model, negative="fog", steps=9, guidance=4.5, seed=5, width=96,
                      height=64, scheduler="euler-a", count=2, vary_strength=0.2)
    values.update(panel.show(wanted))
    assert panel.read(values) == wanted
    values[panel.units[0].enabled], values[panel.units[0].image] = True, "/tmp/edges.png"
    assert [(u.kind, u.image) for u in panel.read(values).controls] == [("edge", "/tmp/edges.png")]


def test_size_limits_follow_the_family_and_share_only_on_spaces(studio):
    from ui.layout import chat_buttons

    d = builtin_defaults()
    assert (d["multiple"], d["max_size"]) == (8, 512)  # the built-in model refuses more than 512
    with gr.Blocks():
        panel = Panel(model_choices(studio.default_model), Settings(), d, local_paths=True)
    assert (panel.width.minimum, panel.width.maximum, panel.width.step) == (8, 512, 8)
    flux = {**d, "family": "flux", "multiple": 16, "max_size": 2048, "width": 1024, "height": 1024}
    out = panel.show_model(flux, [])
    assert (out[panel.width]["maximum"], out[panel.width]["step"], out[panel.width]["value"]) == (2048, 16, 1024)
    kept = panel.show_model(flux, [], keep=Settings(width=768, height=None))
    assert kept[panel.width]["value"] == 768 and "value" not in kept[panel.height]  # keeps the user's own
    assert (panel.plugins[0].weight.minimum, panel.plugins[0].weight.maximum) == (-4, 4)  # plugins/README.md
    assert "share" not in chat_buttons(on_space=False) and "share" in chat_buttons(on_space=True)


def test_the_status_line_says_how_the_turns_model_did(studio, session, settings):
    sdxl = dataclasses.replace(settings, model="stabilityai/stable-diffusion-xl-base-1.0")  # not cached, offline
    updates = list(handlers.send(studio, session, "a red circle", sdxl))
    assert "local Hugging Face cache" in session.history[-1]["content"]
    assert updates[-1].status == (f"{PROBLEM} **stabilityai/stable-diffusion-xl-base-1.0** could not make the last "
                                  "message's image: the chat says why.")
    updates = list(handlers.send(studio, session, "a red circle", settings))
    assert updates[-1].status == f"**{settings.model}** ready (it made the last image)"
    assert runner.model_status("builtin", Cancelled()) is None  # a Stop says nothing about the model
    assert runner.model_status("builtin", UserError("steps = 999"), settings_fault=True) is None  # nor bad settings
    updates = list(handlers.send(studio, session, "a red circle --steps 999", settings))
    assert "out of range" in session.history[-1]["content"] and updates[-1].status is None  # the model is still fine


def test_after_a_model_fails_the_panel_goes_back_to_the_last_that_worked(studio, session, settings):
    """The picker stayed on a model that failed to load, so every next message failed the same way."""
    list(handlers.send(studio, session, "a red circle --steps 2", settings))  # works: the last good model
    missing = dataclasses.replace(settings, model="stabilityai/stable-diffusion-xl-base-1.0")  # offline, not cached
    updates = list(handlers.send(studio, session, "a red circle", missing))
    assert updates[-1].model == settings.model and f"back on **{settings.model}**" in updates[-1].status
    assert f"The panel is back on **{settings.model}**" in session.history[-1]["content"]
    list(handlers.send(studio, session, "a red circle --steps 999", settings))  # bad settings: no switch
    updates = list(handlers.send(studio, session, "a red circle --steps 999", missing))
    assert updates[-1].model == settings.model  # the model's fault comes first: still back


def test_the_page_follows_the_engine_config():
    from engine.config import EngineConfig
    from engine.engine import Engine
    from ui.app import build

    for local_paths, hint in ((True, "Hub id, folder or file"), (False, "Hub id (owner/name)")):
        demo = build(Engine(EngineConfig(device="cpu", local_paths=local_paths)), "builtin")
        placeholders = [c["props"].get("placeholder") for c in demo.config["components"]]
        assert hint in placeholders
        assert "generate" in [d.get("api_name") for d in demo.config["dependencies"]]


def test_a_message_of_flags_only_names_the_missing_prompt_or_reuses_the_selected_one(studio, session, settings):
    """Before: a bare '--cfg 999' answered only 'The prompt is empty'."""
    from ui import inline

    with pytest.raises(UserError, match=r"only flags and no prompt"):
        handlers.build_request(studio, session, inline.parse_message("--cfg 999"), settings)
    generate(studio, session, "a red circle", settings)
    request = handlers.build_request(studio, session, inline.parse_message("--seed 5 --cfg 999"), settings)
    assert (request.prompt, request.seed) == ("a red circle", 5)
    with pytest.raises(UserError, match=r"guidance = 999.0 is out of range"):
        check_request(request, "sd15")


def test_the_chats_edits_inpaint_zoom_out_pan_and_upscale_the_selected_image(studio, session, settings):
    """#17 in the chat: the mask comes from the strokes painted on the image editor; the rest stays as it was."""
    import numpy as np
    from PIL import Image

    from engine.edit import unmasked_change
    from ui import edit_handlers

    generate(studio, session, "a red circle", settings)
    first = session.shots[-1]
    original = Image.open(first.path).convert("RGB")
    strokes = Image.new("RGBA", original.size, (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (0, 0, original.width // 2, original.height))
    list(edit_handlers.inpaint(studio, session, settings, "", {"background": original, "layers": [strokes]}))
    inpainted = session.shots[-1]
    assert inpainted is not first and inpainted.request.mask is not None
    mask = edit_handlers.mask_from_editor({"layers": [strokes]}, original.size)
    assert unmasked_change(original, Image.open(inpainted.path), mask, margin=8) == 0
    assert "inpaint strength" in session.history[-1]["content"]
    session.selected = 0
    list(edit_handlers.zoom_out(studio, session, settings, ""))
    assert Image.open(session.shots[-1].path).size == (48, 48)  # 32 px grown by 8 px a side
    session.selected = 0
    list(edit_handlers.pan(studio, session, settings, "", "left"))
    assert Image.open(session.shots[-1].path).size == (48, 32)
    session.selected = 0
    list(edit_handlers.upscale(studio, session, settings, ""))
    assert Image.open(session.shots[-1].path).size == (64, 64)
    reply = session.history[-1]["content"]
    assert "upscaled 2x from 32x32" in reply
    nothing = list(edit_handlers.inpaint(studio, session, settings, "", {"layers": [np.zeros((32, 32, 4))]}))
    assert nothing and "Paint over the part to change first" in session.history[-1]["content"]


def test_the_chats_edits_chain_each_on_the_image_before(studio, session, settings):
    """Each edit used to carry the previous edit's own settings: inpaint then zoom out answered "Give either a mask
    or borders", pan then upscale "Upscale ... in its own step". Each is now one edit of the image as it is."""
    from PIL import Image

    from ui import edit_handlers

    generate(studio, session, "a red circle", settings)
    strokes = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (0, 0, 16, 32))
    list(edit_handlers.inpaint(studio, session, settings, "", {"layers": [strokes]}))
    assert "inpaint strength 1" in session.history[-1]["content"]  # no strength given: drawn anew
    for edit, size in ((lambda: edit_handlers.zoom_out(studio, session, settings, ""), (48, 48)),
                       (lambda: edit_handlers.pan(studio, session, settings, "", "left"), (72, 48)),
                       (lambda: edit_handlers.upscale(studio, session, settings, ""), (144, 96))):
        before = len(session.shots)
        list(edit())  # on the latest image: the one the previous edit made
        assert len(session.shots) == before + 1, session.history[-1]["content"]
        assert Image.open(session.shots[-1].path).size == size


def test_clear_empties_the_chat_the_gallery_and_the_selection(studio, session, settings):
    """Before, the chat's Clear only hid the messages; the gallery, the selection and Reroll kept the old ones."""
    generate(studio, session, "a red circle", settings)
    handlers.clear(session)
    assert session.history == [] and session.gallery() == [] and session.selected_shot() is None
    assert "none yet" in handlers.selected_label(session)


def test_a_line_with_two_slots_runs_two_and_counts_only_the_rest_as_waiting():
    from studio.line import Busy, Line

    line = Line(max_waiting=1, slots=2)
    a, b, c = line.join(), line.join(), line.join()
    assert (line.wait(a, 0), line.wait(b, 0), line.wait(c, 0)) == (0, 0, 1) and line.waiting == 1
    with pytest.raises(Busy, match="1 generations are waiting"):
        line.join()
    line.leave(b)  # a slot frees: the first waiting one runs
    assert line.wait(c, 0) == 0 and line.waiting == 0 and line.served == 1


def test_a_ticket_nobody_asks_about_loses_its_place_and_never_blocks_the_line():
    """A generation whose event was dropped without being closed (gradio's cancel inside a step) used to keep its
    place: once first, nobody started it and the line froze. Its owner's silence now gives the place up."""
    from studio.line import Busy, Line
    from studio.stream import Switch

    line = Line(max_waiting=4, slots=1, abandon_s=0.0)  # every ticket not being asked about right now is stale
    running, dropped = line.join(), line.join()
    assert line.wait(running, 0) == 0  # its owner saw its turn: it runs until it leaves, asked about or not
    next_one = line.join()
    assert line.wait(next_one, 0) == 1  # `dropped` never asked about its place: gone, only `running` is ahead
    with pytest.raises(Busy, match="lost its place in line"):
        line.wait(dropped, 0)
    switch = Switch(__import__("threading").Event(), abandon_s=0.0)
    assert switch.is_set()  # a run whose stream nobody pulls stops at its next step
    assert not Switch(__import__("threading").Event(), abandon_s=60.0).is_set()


def test_the_fast_plugin_in_the_panel_takes_its_own_steps_unless_the_user_set_them(engine, session):
    """The panel always sends steps and guidance; at the model's defaults they give way to `fast`'s own 4 steps."""
    from engine.request import LoraSpec
    from studio.service import Studio

    studio = Studio(engine, "builtin")
    panel = Settings(model="builtin", steps=10, guidance=2.0, seed=1, loras=[LoraSpec("fast", 1.0)])
    for text, settings, steps in (("a big red circle on the left, blue background", panel, 4),
                                  ("a big red circle on the left, blue background --steps 10", panel, 10),
                                  ("a big red circle on the left, blue background", dataclasses.replace(panel,
                                                                                                       steps=12), 12)):
        list(handlers.send(studio, session, text, settings, []))
        shot = session.shots[-1]
        assert shot.request.steps == steps and f"Steps: {steps}," in Image.open(shot.path).text["parameters"]
    assert session.shots[0].request.guidance == 1.0 and session.shots[0].request.scheduler == "ddim"
    assert "set its own steps 4" in str(session.history)
    plain = Settings(model="builtin", steps=10, guidance=2.0, seed=1)  # no such LoRA: the panel's values as they are
    list(handlers.send(studio, session, "a small blue square, white background", plain, []))
    assert session.shots[-1].request.steps == 10


def test_an_a1111_png_restored_on_the_built_in_model_gets_settings_it_can_draw(engine, session, tmp_path):
    """An SD1.5 PNG (768x512, DPM++ 2M Karras) restored on the built-in model set 768x512 and Karras: Enter ran
    for minutes and failed or gave noise. Its size is mapped onto the model's range, same shape, and the
    scheduler falls back to the model's default; the reply says both."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from studio.service import Studio

    info = PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, "
                                "Size: 768x512, Model: v1-5-pruned-emaonly")
    Image.new("RGB", (768, 512)).save(tmp_path / "a1111.png", pnginfo=info)
    update = handlers.restore(Studio(engine, "builtin"), session, str(tmp_path / "a1111.png"),
                              Settings(model="builtin"))
    restored = update.settings
    assert (restored.model, restored.width, restored.height, restored.scheduler) == ("builtin", 96, 64, "default")
    reply = session.history[-1]["content"]
    assert "768x512 is outside what this built-in model draws well, so 96x64" in reply
    assert "dpm++2m-karras doesn't fit built-in models" in reply


def test_a_size_the_model_was_not_trained_for_is_said_before_the_run(engine, session):
    """A 512x512 on the built-in model ran for minutes and only then said it had not learned that size."""
    from studio.service import Studio

    studio = Studio(engine, "builtin")
    turn = handlers.send(studio, session, "a red circle --size 192x192 --steps 1", Settings(model="builtin"))
    next(turn)  # the user's message and "Starting…", before any step
    starting = session.history[-1]["content"]
    assert starting.startswith("Starting…") and "learned sizes from 48 to 128" in starting
    list(turn)
    assert "learned sizes from 48 to 128" in session.history[-1]["content"]  # and with the image
