"""Lasting work in a real browser (issue #16): make images, reload the page, restart the server, and find the
conversation and its images again; the Library tab finds an image by a word of its prompt and sends it back."""

from __future__ import annotations

import pytest

from tests.test_browser import IMAGE, browser, free_port  # noqa: F401  (browser is a fixture)


def serve(engine, model: str, library, port: int):
    from ui.app import build
    from ui.serve import launch

    demo = build(engine, model, library=library)
    demo.queue(max_size=16, default_concurrency_limit=1)
    launch(demo, "127.0.0.1", port)
    return demo


@pytest.fixture
def built_in_like(tiny_model, tmp_path):
    """The tests' tiny SD1.5 (64x64, fast) in a folder the engine may load."""
    return str(tiny_model("sd15"))


def first_image(page, port: int, text: str) -> None:
    """Opens the page and sends one message; returns when its image is in the chat."""
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    page.fill("#prompt textarea", text)
    page.press("#prompt textarea", "Enter")
    page.wait_for_selector(IMAGE.format(1), timeout=90_000)


def send_first_tile(page, words: str) -> None:
    """Opens the Library's first tile (its details name `words`) and sends it to the chat."""
    page.locator("#library-gallery img").first.click()
    page.wait_for_function(f"document.querySelector('#library-details').innerText.includes('{words}')",
                           timeout=20_000)
    page.click("#library-send")
    page.wait_for_function("document.querySelector('#chat').innerText.includes('is from the library')",
                           timeout=20_000)


def wait_stored(page, library) -> int:
    """The turn's chat is stored by a background writer as the turn ends: waits for it, returns the count."""
    stored = lambda: library._db.execute("SELECT count(*) FROM conversations").fetchone()[0]  # noqa: E731
    for _ in range(200):
        if stored():
            break
        page.wait_for_timeout(100)
    return stored()


def test_a_conversation_survives_reload_and_restart_and_the_library_finds_it(browser, engine, tmp_path):  # noqa: F811
    from store.library import Library

    port = free_port()
    library = Library(tmp_path / "outputs")
    demo = serve(engine, "builtin", library, port)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#prompt textarea", timeout=30_000)
        for i, text in enumerate(["a big red circle on the left, blue background",
                                  "a small yellow square at the top, black background"], 1):
            page.fill("#prompt textarea", text)
            page.press("#prompt textarea", "Enter")
            page.wait_for_selector(IMAGE.format(i), timeout=90_000)
        # the chat list names the chat by its first prompt as soon as its turn ends (it said "New chat")
        page.wait_for_function("document.querySelector('#chats input').value.startsWith('a big red circle')",
                               timeout=20_000)
        assert wait_stored(page, library) == 1
        page.reload()
        page.wait_for_function("document.querySelectorAll('#chat img').length >= 2", timeout=30_000)
        assert "a small yellow square at the top" in page.inner_text("#chat")
        demo.close()  # a server restart: a new process would read the same folder
        demo = serve(engine, "builtin", Library(tmp_path / "outputs"), port)
        page.reload()
        page.wait_for_function("document.querySelectorAll('#chat img').length >= 2", timeout=30_000)
        chat = page.inner_text("#chat")
        assert "a big red circle on the left" in chat and "#2" in chat
        png = page.request.get(page.locator("#chat img").nth(1).get_attribute("src")).body()
        assert png.startswith(b"\x89PNG") and b"yellow square" in png  # the kept file, with its settings
        page.get_by_role("tab", name="Library").click()
        page.wait_for_selector("#library-gallery img", timeout=20_000)
        page.fill("#library-search textarea", "yellow")
        page.click("#library-go")
        page.wait_for_function("document.querySelector('#library-page').innerText.includes('1-1 of 1')",
                               timeout=20_000)
        send_first_tile(page, "yellow square")
        page.click("#new-chat")
        page.wait_for_function("document.querySelectorAll('#chat img').length === 0", timeout=20_000)
        page.reload()  # the new, empty chat is the current one; the old one is in the list
        page.wait_for_selector("#prompt textarea", timeout=30_000)
        page.wait_for_timeout(1500)
        assert page.locator("#chat img").count() == 0
    finally:
        context.close()
        demo.close()


def test_delete_chat_asks_once_then_deletes_the_chat_for_good(browser, engine, tmp_path):  # noqa: F811
    """Delete chat used to answer "deleted" and store the chat again as it made the new one: it stayed in the list
    and in the database, and came back on reload. Now a first click asks, a second deletes it all."""
    from store.library import Library

    port = free_port()
    library = Library(tmp_path / "outputs")
    demo = serve(engine, "builtin", library, port)
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    try:
        first_image(page, port, "a big red circle on the left, blue background")
        assert wait_stored(page, library) == 1
        stored = lambda: library._db.execute("SELECT count(*) FROM conversations").fetchone()[0]  # noqa: E731
        page.click("#delete-chat")
        page.wait_for_function("document.querySelector('#delete-chat').innerText.includes('Click again')",
                               timeout=20_000)
        assert page.locator("#chat img").count() == 1  # one click deletes nothing
        page.click("#delete-chat")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('were deleted')", timeout=20_000)
        assert "The chat and its 1 kept image(s) were deleted." in page.inner_text("#chat")
        assert page.inner_text("#delete-chat").strip() == "Delete chat"
        images = library._db.execute("SELECT count(*) FROM images").fetchone()[0]
        assert (stored(), images) == (0, 0)
        page.reload()
        page.wait_for_function("(document.querySelector('#chats input') || {}).value === 'New chat'",
                               timeout=30_000)  # the page's load event has run: the current chat is the new one
        assert "a big red circle" not in page.inner_text("#chat") and stored() == 0
    finally:
        page.context.close()
        demo.close()


def test_a_first_message_sent_before_the_page_has_loaded_is_kept_over_a_reload(browser, engine, tmp_path):  # noqa: F811
    """The page is up at once, its load event (which reads this browser's ids) may come later: a first message
    sent before it ran was stored under no browser id, or under ids the browser never kept, and the chat was gone
    on reload. Here the load event is held until the first image is there."""
    import threading

    from store.library import Library

    port = free_port()
    library = Library(tmp_path / "outputs")
    release, loads = threading.Event(), []
    load_conversation = library.load_conversation

    def held(*args):
        loads.append(args)
        if len(loads) == 1:
            release.wait(timeout=120)  # the first page load's event waits for the test, not for a clock
        return load_conversation(*args)

    library.load_conversation = held
    demo = serve(engine, "builtin", library, port)
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    try:
        first_image(page, port, "a small green triangle at the top, white background")
        assert loads and not release.is_set()  # the image came while the page's load event was still held
        release.set()
        assert wait_stored(page, library) == 1
        page.reload()
        page.wait_for_function("document.querySelectorAll('#chat img').length >= 1", timeout=30_000)
        assert "a small green triangle at the top" in page.inner_text("#chat")
    finally:
        release.set()
        page.context.close()
        demo.close()


def test_the_library_imports_only_images_shows_one_result_as_a_tile_and_sends_it_with_a_message(
        browser, engine, tmp_path):  # noqa: F811
    """A newcomer's Library: an HTML page named .png was imported, a 96x64 image recorded at the 768x512 its text
    claimed, the import's answer showed in the pager and the gallery did not refresh, one result was one tile as
    wide as the page, captions were a cut-off date, and Send to chat posted an image with no message before it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from store.library import Library

    folder = tmp_path / "webui"
    folder.mkdir()
    info = PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, "
                                "Size: 768x512, Model: dreamshaper_8")
    Image.new("RGB", (96, 64), (200, 120, 40)).save(folder / "00001-42.png", pnginfo=info)
    (folder / "page.png").write_text("<html>not an image</html>")
    port = free_port()
    library = Library(tmp_path / "outputs")
    demo = serve(engine, "builtin", library, port)
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#prompt textarea", timeout=30_000)
        page.get_by_role("tab", name="Library").click()
        page.get_by_text("Import a folder of PNGs").click()
        page.get_by_placeholder("~/stable-diffusion-webui/outputs").fill(str(folder))
        page.click("#library-import")
        page.wait_for_function("document.querySelector('#library-imported').innerText.includes('Imported 1')",
                               timeout=20_000)
        assert "Left out 1 file(s) that are not images" in page.inner_text("#library-imported")
        page.wait_for_selector("#library-gallery img", timeout=20_000)  # the gallery shows what came in
        assert page.locator("#library-gallery img").first.bounding_box()["width"] < 300
        assert page.evaluate("[...document.querySelectorAll('#library-gallery .caption-label')].every("
                             "c => c.scrollWidth <= c.clientWidth + 1)")  # read whole
        assert "a lighthouse" in page.inner_text("#library-gallery")
        entry = library.search("lighthouse")[0][0]
        assert (entry.width, entry.height) == (96, 64)
        send_first_tile(page, "lighthouse")
        assert "From the library: a lighthouse" in page.inner_text("#chat")
    finally:
        page.context.close()
        demo.close()
