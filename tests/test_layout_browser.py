"""The page as people see it, in a real browser (issue #15): the panel fits one screen, one Stop, icons that
render without an emoji font, readable grids of images and control maps, a chat that follows new replies, the
restore box and /help that work. Fixtures and helpers are tests/test_browser.py's (the app on a tiny model)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.test_browser import IMAGE, app_url, browser, free_port, open_chat, send  # noqa: F401  (fixtures)


def enter(page, text: str) -> None:
    """Type `text` into the message box and press Enter once."""
    page.fill("#prompt textarea", text)
    page.press("#prompt textarea", "Enter")


def test_restore_box_takes_a_studio_png_and_answers_a_bad_file(browser, app_url, tmp_path):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        send(page, "a green square --seed 5 --steps 3", 1)
        png = tmp_path / "made-here.png"
        png.write_bytes(page.request.get(page.locator(IMAGE.format(1)).get_attribute("src")).body())
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"not an image at all")
        page.get_by_text("Advanced", exact=False).first.click()
        upload = page.locator("#restore-file input[type=file]")
        upload.set_input_files(str(png))
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Restored from')",
                               timeout=20_000)
        page.wait_for_function("document.querySelector('#steps input[type=number]').value == '3'", timeout=10_000)
        assert page.locator("#seed input").input_value() == "5"
        assert page.locator("#prompt textarea").input_value() == "a green square"
        upload.set_input_files(str(junk))  # the box is emptied after each file, so it takes another
        page.wait_for_function("document.querySelector('#chat').innerText.includes('not an image this app can "
                               "read')", timeout=20_000)
    finally:
        context.close()


def test_a_png_dropped_into_the_message_box_restores_its_settings(browser, app_url, tmp_path):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        send(page, "a blue circle --seed 6 --steps 3", 1)
        png = tmp_path / "made-here.png"
        png.write_bytes(page.request.get(page.locator(IMAGE.format(1)).get_attribute("src")).body())
        page.locator("#prompt input[type=file]").set_input_files(str(png))  # no Enter: the drop itself restores
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Restored from')",
                               timeout=20_000)
        # the panel shows the PNG's settings (a quick event after the turn) and the box its prompt
        page.wait_for_function("document.querySelector('#steps input[type=number]').value == '3'", timeout=10_000)
        assert page.locator("#seed input").input_value() == "6"
        page.wait_for_function("document.querySelector('#prompt textarea').value == 'a blue circle'",
                               timeout=10_000)
        send(page, "a red square", 2)  # a plain message after it: the panel keeps the restored steps
        assert page.locator("#steps input[type=number]").input_value() == "3"
    finally:
        context.close()


def test_enter_while_a_turn_runs_sends_the_message_when_it_ends(browser, app_url):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        enter(page, "a red circle --steps 100")
        page.wait_for_function("document.querySelector('#prompt textarea').value === ''", timeout=10_000)
        enter(page, "a blue square")  # once, while the first turn runs (gradio used to drop it)
        page.wait_for_selector(IMAGE.format(2), timeout=60_000)
        assert page.locator("#chat .message-row.user-row").nth(1).inner_text().strip() == "a blue square"
    finally:
        context.close()


def test_help_shows_the_lora_tag_literally(browser, app_url):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        enter(page, "/help")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('How to use the studio')",
                               timeout=20_000)
        chat = page.locator("#chat")
        assert "<lora:NAME:W>" in chat.inner_text()
        assert chat.locator("a", has_text=re.compile("lora")).count() == 0  # not a link
    finally:
        context.close()


def test_the_users_own_lora_tag_shows_in_their_message(browser, app_url):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        enter(page, "a red circle <lora:nosuch:0.5>")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('nosuch')", timeout=20_000)
        page.wait_for_function("document.querySelectorAll('#chat .message-row').length >= 2", timeout=20_000)
        mine = page.locator("#chat .message-row.user-row").first.inner_text()
        assert "<lora:nosuch:0.5>" in mine, mine  # the Markdown sanitiser used to drop it as an HTML tag
    finally:
        context.close()


def test_no_share_button_off_spaces(browser, app_url):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        send(page, "a red circle", 1)
        assert page.locator("#chat button[aria-label='Share']:visible").count() == 0  # it fails off Spaces
        assert page.locator("#chat a[data-testid='download-link'] button:visible").count() >= 1
    finally:
        context.close()


# ------------------------------------------------------------------ the page as it is served: with a library
@pytest.fixture(scope="module")
def studio_url(engine, tiny_model, tmp_path_factory):
    """The app as `python app.py` serves it (a library, so the chat list is there too) on a tiny SD1.5 model
    marked as the built-in family (64x64)."""
    from store.library import Library
    from ui.app import build
    from ui.serve import launch
    from ui.status import ModelStatus

    root = tmp_path_factory.mktemp("layout")
    folder = root / "tiny-builtin"
    shutil.copytree(tiny_model("sd15"), folder)
    (folder / "studio.json").write_text(json.dumps({"family": "builtin"}))
    status = ModelStatus(str(folder))
    status.load(engine)
    demo = build(engine, str(folder), status=status, library=Library(root / "outputs"))
    demo.queue(max_size=8)
    port = free_port()
    launch(demo, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def open_at(browser, url, width: int, height: int):  # noqa: F811
    """A new tab of `url` at this window size."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    page.wait_for_timeout(800)  # the page's load event fills the panel
    return context, page


EMOJI = r"[\p{Emoji_Presentation}\uFE0F]"  # a glyph only an emoji font draws (an empty box without one)
NO_EMOJI = f"""() => {{
    const found = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) if (/{EMOJI}/u.test(n.data)) found.push(n.data.trim());
    for (const e of document.querySelectorAll('[aria-label], [title], [placeholder]'))
        for (const a of ['aria-label', 'title', 'placeholder'])
            if (/{EMOJI}/u.test(e.getAttribute(a) || '')) found.push(e.getAttribute(a));
    return found;
}}"""
BUSY_MARKS = "document.querySelectorAll('#chat-row .generating, #chat-row .pending, #header .generating').length"


def test_the_page_fits_one_screen_with_one_stop_and_no_emoji(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        assert page.locator("#stop").count() == 0  # the message box's Stop is the only one, hidden while idle
        assert page.locator("#prompt button.stop-button:visible").count() == 0
        send(page, "a big red circle on a blue background", 1)
        enter(page, "/help")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('How to use')", timeout=20_000)
        assert page.evaluate("document.documentElement.scrollHeight") <= 1000  # every accordion closed
        enter(page, "a slow red circle --steps 200 --n 8")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Step ')", timeout=60_000)
        assert page.locator("#prompt button.stop-button:visible").count() == 1  # active during a generation
        assert page.locator("#prompt button.submit-button:visible").count() == 0
        assert page.evaluate(BUSY_MARKS) == 0  # no pending border on the outputs: the chat shows progress
        assert page.evaluate(NO_EMOJI) == []  # buttons, labels, the replies so far, the progress line
        page.click("#prompt button.stop-button")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Stopped')", timeout=30_000)
        page.wait_for_selector("#prompt button.submit-button", timeout=10_000)
        assert page.locator("#prompt button.stop-button:visible").count() == 0
        assert page.evaluate(NO_EMOJI) == []
    finally:
        context.close()


def test_controlnet_units_are_tabs_and_plugin_rows_are_readable(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        page.click("#control-box > button")
        page.click("#plugins-box > button")
        page.wait_for_selector("#control-units button[role=tab]", timeout=10_000)
        tabs = page.locator("#control-units button[role=tab]").all_inner_texts()
        assert tabs == ["Unit 1", "Unit 2", "Unit 3", "Image prompt"]
        assert page.get_by_text("Unit 1 image").is_visible() and not page.get_by_text("Unit 2 image").is_visible()
        assert page.locator("#control-box").bounding_box()["height"] < 800  # was 3,800-5,200 px with the panel
        page.get_by_role("tab", name="Unit 2").click()
        page.get_by_text("Unit 2 image").wait_for(timeout=5_000)  # one unit on screen at a time
        assert not page.get_by_text("Unit 1 image").is_visible()
        rows = page.locator(".plugin-row:visible")
        assert rows.count() >= 1
        for i in range(rows.count()):
            label = rows.nth(i).locator(".plugin-toggle label").first
            box = label.bounding_box()
            assert box["height"] < 30, label.inner_text()  # the name on one line
            about = rows.nth(i).locator("div.plugin-line")
            assert about.bounding_box()["width"] > 250  # trigger and status across the row, not a word a line
            assert about.get_attribute("title")  # the description and status on hover
        weight = page.locator(".plugin-row:visible input[type=range]").first
        assert (weight.get_attribute("min"), weight.get_attribute("max")) == ("-4", "4")  # as plugins/README.md
    finally:
        context.close()


def test_the_panel_is_usable_on_a_phone(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 390, 844)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
        chat = page.locator("#chat").bounding_box()
        assert chat["width"] > 300 and chat["height"] > 400
        send(page, "a small yellow square --n 4", 4)
        tops = {round(page.locator(IMAGE.format(n)).bounding_box()["y"]) for n in range(1, 5)}
        assert len(tops) == 2  # two rows of two, not four stacked
        page.click("#control-box > button")
        assert page.locator("#control-box").bounding_box()["width"] <= 390
        # every tab is there to tap, the image prompt too (it was in gradio's "⋯" menu at this width)
        tab = page.get_by_role("tab", name="Image prompt")
        assert tab.is_visible() and tab.bounding_box()["x"] + tab.bounding_box()["width"] <= 390
        tab.click()
        assert page.locator("#image-prompt").is_visible()
    finally:
        context.close()


def test_several_images_are_a_grid_and_gallery_captions_read_whole(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        send(page, "a small yellow square --n 4 --seed 1234567890", 4)
        page.wait_for_timeout(500)
        boxes = [page.locator(IMAGE.format(n)).bounding_box() for n in range(1, 5)]
        assert len({round(b["y"]) for b in boxes}) == 1  # one row at 1440 px
        assert all(b["width"] >= 150 for b in boxes)
        captions = page.locator("#gallery .caption-label")
        assert captions.count() == 4
        assert "1234567893" in captions.nth(3).inner_text()
        assert page.evaluate("[...document.querySelectorAll('#gallery .caption-label')].every("
                             "c => c.scrollWidth <= c.clientWidth + 1)")  # nothing cut off ("#2 · seed …")
    finally:
        context.close()


def test_slider_limits_follow_the_model_family(browser, studio_url, tiny_model):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        width = page.locator("#width input[type=range]")
        assert (width.get_attribute("max"), width.get_attribute("step")) == ("512", "8")  # the built-in family
        page.click("#advanced > button")
        page.fill("#other-model input, #other-model textarea", str(tiny_model("sd15")))
        page.get_by_role("button", name="Use", exact=True).click()
        page.wait_for_function("document.querySelector('#width input[type=range]').max === '2048'", timeout=10_000)
        assert page.locator("#width input[type=number]").input_value() == "512"  # SD1.5's native size
    finally:
        context.close()


def test_the_aspect_box_names_the_current_sizes_aspect(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    aspect = "document.querySelector('#aspect input').value"
    try:
        assert page.evaluate(aspect) == "1:1"  # 64x64: it was blank until a preset was picked
        page.click("#aspect input")
        page.get_by_role("option", name="16:9", exact=True).click()
        page.wait_for_function("document.querySelector('#width input[type=number]').value === '88'", timeout=10_000)
        assert page.locator("#height input[type=number]").input_value() == "48"
        page.fill("#width input[type=number]", "200")
        page.press("#width input[type=number]", "Enter")
        page.wait_for_function(f"{aspect} === 'custom'", timeout=10_000)  # 200x48 is no preset
        page.fill("#height input[type=number]", "200")
        page.press("#height input[type=number]", "Enter")
        page.wait_for_function(f"{aspect} === '1:1'", timeout=10_000)
    finally:
        context.close()


def test_a_failed_model_switch_is_what_the_status_line_says(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        page.click("#model input")
        page.get_by_role("option", name=re.compile("stable-diffusion-xl")).click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('stable-diffusion-xl')",
                               timeout=10_000)
        enter(page, "a red circle")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('local Hugging Face cache')",
                               timeout=30_000)
        page.wait_for_timeout(500)
        status = page.inner_text("#status")
        assert "stable-diffusion-xl" in status and "ready" not in status, status
        assert "stable-diffusion-xl" in page.locator("#model input").input_value()
    finally:
        context.close()


@pytest.fixture
def builtin_controlnet(tiny_model, tmp_path, monkeypatch):
    """A tiny ControlNet (from the tests' tiny SD1.5 UNet) as the built-in family's edge/depth/pose nets."""
    import diffusers

    from engine import control

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_model("sd15"), subfolder="unet")
    diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)).save_pretrained(
        tmp_path / "controlnet")
    monkeypatch.setitem(control.CONTROLNETS, "builtin",
                        {k: (str(tmp_path / "controlnet"), None) for k in ("edge", "depth", "pose")})


def test_the_control_map_is_shown_readable_beside_its_image(browser, studio_url, builtin_controlnet,  # noqa: F811
                                                            tmp_path):
    from PIL import Image, ImageDraw

    edges = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(edges).rectangle([12, 12, 44, 44], outline="white", width=3)
    edges.save(tmp_path / "edges.png")
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        page.click("#control-box > button")
        page.get_by_label("Unit 1 on").check()
        page.locator("#control-units input[type=file]").first.set_input_files(str(tmp_path / "edges.png"))
        page.wait_for_selector("#control-units img", timeout=15_000)
        send(page, "a red square --steps 2", 1)
        control_map = page.locator("#chat img[src*='control-']")
        control_map.wait_for(timeout=20_000)
        page.wait_for_timeout(500)
        image, shown = page.locator(IMAGE.format(1)).bounding_box(), control_map.bounding_box()
        assert shown["width"] >= 150 and shown["height"] >= 150  # was about 64 px
        assert abs(shown["y"] - image["y"]) < 10 and shown["x"] >= image["x"] + image["width"]  # beside it
        assert "control map" in page.inner_text("#chat")  # the reply says what it is
    finally:
        context.close()


LOG = "document.querySelector('#chat [role=log]')"  # the chat's scrolling element


def chat_scroll(page) -> dict:
    return page.evaluate(f"(() => {{ const l = {LOG}; return {{top: l.scrollTop, bottom: l.scrollHeight - "
                         "l.scrollTop - l.clientHeight}; })()")


def test_the_chat_follows_new_replies_unless_the_user_reads_older_ones(browser, studio_url):  # noqa: F811
    context, page = open_at(browser, studio_url, 1440, 1000)
    try:
        for n in range(1, 4):  # more than the chat's height
            send(page, f"a red circle, take {n}", n)
        page.evaluate(f"{LOG}.scrollTop = 0")  # the user goes back to an older image and picks it
        page.locator(IMAGE.format(1)).click()
        page.wait_for_function("document.querySelector('#selected').innerText.includes('#1')", timeout=10_000)
        send(page, "a blue square", 4)  # asking for a new reply: the chat follows it
        page.wait_for_timeout(800)
        assert chat_scroll(page)["bottom"] < 60
        log_box, image = page.locator("#chat [role=log]").bounding_box(), page.locator(IMAGE.format(4)).bounding_box()
        assert log_box["y"] <= image["y"] and image["y"] + image["height"] <= log_box["y"] + log_box["height"]

        enter(page, "a slow green circle --steps 200 --n 2")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Step ')", timeout=60_000)
        page.evaluate(f"{LOG}.scrollTop = 0")  # reading older replies while it runs
        page.wait_for_selector(IMAGE.format(6), timeout=120_000)
        page.wait_for_timeout(800)
        assert chat_scroll(page)["top"] < 50  # the reply did not pull the user away
        jump = page.locator("#new-reply")
        assert jump.is_visible() and "New reply" in jump.inner_text()
        jump.click()
        page.wait_for_timeout(500)
        assert chat_scroll(page)["bottom"] < 60 and not jump.is_visible()
    finally:
        context.close()


def test_a_reply_lays_the_page_out_a_few_times_not_at_every_change(browser, app_url):  # noqa: F811
    """The chat's follow script looks at the scroll position (which makes the browser lay the page out) once a
    frame at most; it used to look at each of a redraw's many changes: ~2x the layouts, ~50 ms of CPU a reply."""
    import statistics

    context, page = open_chat(browser, app_url)
    try:
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def layouts() -> float:
            return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "LayoutCount")

        counts = []
        for n in range(1, 7):
            before = layouts()
            send(page, f"a red circle, take {n} --steps 2", n)
            page.wait_for_timeout(300)  # the image's own layout
            counts.append(layouts() - before)
        assert statistics.median(counts[2:]) <= 24, counts
    finally:
        context.close()
