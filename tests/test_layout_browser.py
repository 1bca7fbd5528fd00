"""The page as people see it, in a real browser (issue #15): the panel fits one screen, one Stop, icons that
render without an emoji font, readable grids of images and control maps, a chat that follows new replies, the
restore box and /help that work. Fixtures and helpers are tests/test_browser.py's (the app on a tiny model)."""

from __future__ import annotations

import re

from tests.test_browser import IMAGE, app_url, browser, open_chat, send  # noqa: F401  (fixtures)


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


def test_help_shows_the_lora_tag_literally(browser, app_url):  # noqa: F811
    context, page = open_chat(browser, app_url)
    try:
        page.fill("#prompt textarea", "/help")
        page.press("#prompt textarea", "Enter")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('How to use the studio')",
                               timeout=20_000)
        chat = page.locator("#chat")
        assert "<lora:NAME:W>" in chat.inner_text()
        assert chat.locator("a", has_text=re.compile("lora")).count() == 0  # not a link
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
