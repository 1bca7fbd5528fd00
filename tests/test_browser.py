"""End to end in a real browser: Playwright drives Debian's Chromium against the app on a tiny model.

Needs `apt-get install -y chromium` and `pip install playwright` (no `playwright install`: the system
Chromium is used). Missing either is a failure with the install hint, never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from engine.request import DEFAULTS

CHROMIUM = "/usr/bin/chromium"
STEPS = DEFAULTS["builtin"].steps  # the built-in model's default steps, as the page shows them
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = "Install the browser test's needs: apt-get install -y chromium && pip install playwright"
IMAGE = "#chat img[src*='studio-{:04d}']"  # the n-th image of a session, as named by ui/handlers.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(engine, tiny_model, tmp_path_factory):
    """The real app (ui.app.build + launch) on a tiny SD1.5 model marked as the built-in family (64x64)."""
    from ui.app import build
    from ui.serve import launch
    from ui.status import ModelStatus

    folder = tmp_path_factory.mktemp("browser") / "tiny-builtin"
    shutil.copytree(tiny_model("sd15"), folder)
    (folder / "studio.json").write_text(json.dumps({"family": "builtin"}))
    status = ModelStatus(str(folder))
    status.load(engine)
    demo = build(engine, str(folder), status=status)
    demo.queue(max_size=8)
    port = free_port()
    launch(demo, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing. {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"The playwright package is missing. {INSTALL_HINT}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_chat(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    return context, page


def send(page, text: str, image_number: int) -> float:
    """Type `text`, press Enter, wait for the image; the seconds from Enter to image.

    The box ignores Enter while this tab's previous message is still being answered (the text stays), and
    the app empties it once it takes the message: so Enter is pressed again if the text is still there.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.fill("#prompt textarea", text)
    for _ in range(10):
        started = time.perf_counter()
        page.press("#prompt textarea", "Enter")
        try:
            page.wait_for_function("document.querySelector('#prompt textarea').value === ''", timeout=3_000)
            break
        except PlaywrightTimeout:
            continue
    page.wait_for_selector(IMAGE.format(image_number), timeout=60_000)
    return time.perf_counter() - started


def test_prompt_and_enter_gives_an_image(browser, app_url, record_property):
    context, page = open_chat(browser, app_url)
    try:
        seconds = send(page, "a red circle on a blue background", 1)
        record_property("enter_to_image_s", round(seconds, 2))
        print(f"\nEnter to image: {seconds:.2f}s")
        page.wait_for_function(f"document.querySelector('#chat').innerText.includes('{STEPS} steps')")
        chat = page.inner_text("#chat")
        assert "a red circle on a blue background" in chat and "64x64" in chat
        assert page.locator("#gallery img").count() >= 1
        # what the browser downloads is the PNG with its settings
        png = page.request.get(page.locator(IMAGE.format(1)).get_attribute("src")).body()
        assert png.startswith(b"\x89PNG") and b"parameters" in png and f"Steps: {STEPS},".encode() in png
    finally:
        context.close()


def test_inline_seed_then_reroll(browser, app_url):
    context, page = open_chat(browser, app_url)
    try:
        send(page, "a green square --seed 42 --steps 4", 1)
        page.wait_for_function("document.querySelector('#chat').innerText.includes('seed 42')")
        assert "4 steps" in page.inner_text("#chat")
        page.click("#reroll")
        page.wait_for_selector(IMAGE.format(2), timeout=60_000)
        second = page.locator(IMAGE.format(2)).get_attribute("src")
        assert not re.search(r"seed42\.png", second), second  # same settings, new seed (424010810 is new)
        page.wait_for_function("document.querySelector('#selected').innerText.includes('#2')")
        # the reply's settings line may render a moment after its image: wait for it, don't race it
        page.wait_for_function("document.querySelector('#chat').innerText.split('4 steps').length === 3")
        page.locator("#gallery img").first.click()  # select #1: actions now act on it
        page.wait_for_function("document.querySelector('#selected').innerText.includes('#1')")
    finally:
        context.close()


def test_two_browsers_do_not_see_each_other(browser, app_url):
    (ctx_a, a), (ctx_b, b) = open_chat(browser, app_url), open_chat(browser, app_url)
    try:
        send(a, "alice's yellow triangle", 1)
        send(b, "bob's purple circle", 1)
        a.wait_for_function("document.querySelector('#chat').innerText.includes('steps')")
        text_a, text_b = a.inner_text("#chat"), b.inner_text("#chat")
        assert "alice" in text_a and "bob" not in text_a
        assert "bob" in text_b and "alice" not in text_b
        assert a.locator("#gallery img").count() == 1 and b.locator("#gallery img").count() == 1
    finally:
        ctx_a.close(), ctx_b.close()


def test_api_endpoint_with_gradio_client(app_url, tmp_path):
    from gradio_client import Client

    from engine.images import metadata

    client = Client(app_url, verbose=False, download_files=str(tmp_path))
    files = client.predict("a red circle", "", "", 2, -1, 7, 32, 32, 1, "default", api_name="/generate")
    paths = [f if isinstance(f, str) else f.get("path") for f in files]
    assert len(paths) == 1
    assert metadata.read_png_settings(paths[0])[0].seed == 7


def test_settings_survive_a_reload(browser, app_url):
    context, page = open_chat(browser, app_url)
    try:
        steps = page.locator("#steps input[type='number']")
        page.wait_for_function(f"document.querySelector('#steps input[type=number]').value == '{STEPS}'")
        page.wait_for_timeout(300)  # let the page's own first save happen
        before = page.evaluate("localStorage.getItem('studio-settings')")
        steps.fill("7")
        steps.press("Enter")
        page.wait_for_function("before => localStorage.getItem('studio-settings') !== before", arg=before)
        page.reload()
        page.wait_for_selector("#prompt textarea")
        page.wait_for_function("document.querySelector('#steps input[type=number]').value == '7'", timeout=15_000)
    finally:
        context.close()


def test_stop_cancels_a_long_generation(browser, app_url):
    context, page = open_chat(browser, app_url)
    try:
        page.fill("#prompt textarea", "a slow red circle --steps 200")
        page.press("#prompt textarea", "Enter")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Step ')", timeout=60_000)
        page.click("#prompt button.stop-button")  # the page's one Stop: the message box's own
        page.wait_for_function("document.querySelector('#chat').innerText.includes('Stopped')", timeout=30_000)
        assert page.locator("#chat img[src*='studio-']").count() == 0
        send(page, "a quick blue square --steps 4", 1)  # the session goes on
    finally:
        context.close()


def test_paint_on_the_selected_image_and_inpaint_only_that_part(browser, app_url):
    """The mask editor in use: the brush painted over the image's left third, Inpaint repaints there only."""
    import io

    import numpy as np
    from PIL import Image

    context, page = open_chat(browser, app_url)
    try:
        send(page, "a red circle on a blue background --seed 3", 1)
        page.click("#edit-box > button")  # open the edit accordion
        page.click("#edit-paint")
        canvas = page.locator("#editor canvas").first
        canvas.wait_for(timeout=15_000)
        page.wait_for_timeout(1500)  # the image is drawn onto the canvas
        box = canvas.bounding_box()  # the image sits square in the middle, about 0.83 of the canvas's height
        x = box["x"] + box["width"] / 2 - 0.25 * box["height"]  # a fifth of the image's width from its left edge
        page.mouse.move(x, box["y"] + box["height"] * 0.3)
        page.mouse.down()
        for y in np.linspace(0.3, 0.7, 8):  # a brush stroke down the image's left part
            page.mouse.move(x, box["y"] + box["height"] * y, steps=4)
        page.mouse.up()
        page.click("#edit-inpaint")
        page.wait_for_selector(IMAGE.format(2), timeout=60_000)
        assert "Inpaint" in page.inner_text("#chat")

        def pixels(n: int) -> np.ndarray:
            src = page.locator(IMAGE.format(n)).get_attribute("src")
            return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), np.int16)

        before, after = pixels(1), pixels(2)
        assert before.shape == after.shape
        w = before.shape[1]
        # the stroke (a 12-px brush on a 64-px image, feathered 4 px) covers the left half at most: the rest keeps
        # its very pixels
        assert np.array_equal(before[:, w * 5 // 8:], after[:, w * 5 // 8:])
        assert np.abs(after[:, : w // 3] - before[:, : w // 3]).mean() > 2  # under the stroke: repainted
    finally:
        context.close()
