"""A conversation outlives the page (issue #16): kept images, the stored session, its restore in a new session, and
the Library tab's handlers, on the real built-in engine and a real library folder."""

from __future__ import annotations

from engine.request import Request
from store.library import Library, new_id
from studio.jobs import keep
from ui import history, library_page
from ui.runner import show_result
from ui.state import Session


def made(engine, library, session, prompt="a big red circle on the left, blue background", seed=4):
    result = engine.generate(Request(prompt=prompt, seed=seed))
    session.say("user", prompt)
    show_result(session, result)
    for i, shot in enumerate(session.shots[-len(result.images):]):
        entry, refused = keep(library, result, i, "chat", conversation=session.conversation)
        assert refused is None
        session.kept[shot.path] = entry.path
    return result


def test_a_stored_conversation_comes_back_in_a_new_session_with_its_images(tmp_path, engine):
    library = Library(tmp_path / "outputs")
    first = Session.new()
    first.browser, first.conversation = new_id(), new_id()
    made(engine, library, first)
    made(engine, library, first, "a small yellow square at the top, black background", seed=5)
    first.selected = 0
    history.persist(library, first)
    first.close()  # the tab closed: its temporary files are gone

    again = Session.new()
    state = library.load_conversation(first.browser, first.conversation)
    history.restore(state, again)
    assert [m["content"] for m in again.history if m["role"] == "user"] == [
        "a big red circle on the left, blue background", "a small yellow square at the top, black background"]
    assert [s.request.seed for s in again.shots] == [4, 5] and again.selected == 0
    for shot in again.shots:  # the copies exist in the new session's folder and are shown in the chat
        assert shot.path.startswith(str(again.workdir)) and again.history[shot.message_index]["content"]["path"] == \
            shot.path
    assert library_page.find(library, again, "yellow", "", "", 0, own_only=False)[1] != []
    assert history.title_of(again) == "a big red circle on the left, blue background"


def test_another_browser_gets_nothing_and_a_deleted_image_says_so(tmp_path, engine):
    library = Library(tmp_path / "outputs")
    session = Session.new()
    session.browser, session.conversation = new_id(), new_id()
    made(engine, library, session)
    history.persist(library, session)
    assert library.load_conversation(new_id(), session.conversation) is None
    stranger = Session.new()
    stranger.browser = new_id()
    assert library_page.find(library, stranger, "", "", "", 0, own_only=True)[1] == []  # a shared server
    entry = library.search()[0][0]
    library.delete_image(entry.id)
    restored = history.restore(library.load_conversation(session.browser, session.conversation), Session.new())
    assert any(m["content"] == "(this image was deleted from the library)" for m in restored.history)
    assert restored.shots == []


def test_the_library_tab_pages_opens_and_sends_an_image_to_the_chat(tmp_path, engine):
    library = Library(tmp_path / "outputs")
    session = Session.new()
    session.browser, session.conversation = new_id(), new_id()
    for seed in range(3):
        made(engine, library, session, seed=seed)
    history.persist(library, session)
    items, ids, line, page = library_page.find(library, session, "circle", "", "", 0, own_only=True)
    assert len(items) == 3 and line == "1-3 of 3" and page == 0
    entry, details = library_page.open_entry(library, ids, 0)
    assert entry.seed == 2 and "| Seed | 2 |" in details  # newest first
    chat = Session.new()
    shot = library_page.send_to_chat(library, chat, entry.id)
    assert chat.selected_shot() is shot and shot.request.seed == 2 and shot.request.prompt.startswith("a big red")
    assert library_page.find(library, session, "no-such-word", "", "", 0, own_only=False)[2] == \
        "No kept image matches."
    assert len(library_page.find(library, session, "", "", "", 0, own_only=False, when="today")[1]) == 3
    with library._lock:  # one of them from last month
        library._db.execute("UPDATE images SET created = created - 40 * 86400 WHERE id = ?", (ids[0],))
    assert len(library_page.find(library, session, "", "", "", 0, own_only=False, when="last 30 days")[1]) == 2


def test_ids_from_the_browser_are_checked():
    browser, conversation = history.ids_of({"browser": "../../etc", "conversation": 5})
    assert len(browser) == 32 and len(conversation) == 32 and browser.isalnum()
    good = new_id()
    assert history.ids_of({"browser": good, "conversation": good}) == (good, good)


def test_api_generations_are_kept_in_the_library_too(tmp_path, engine):
    """The A1111, OpenAI and MCP endpoints run through studio.jobs.Jobs: their images are kept like the chat's."""
    from studio.jobs import Jobs
    from studio.line import Line
    from studio.service import Studio

    library = Library(tmp_path / "outputs")
    jobs = Jobs(Studio(engine, "builtin", line=Line(4), library=library))
    result = jobs.run(Request(prompt="a small green triangle at the bottom, black background", seed=8))
    entries, total = library.search("triangle")
    assert total == 1 and entries[0].source == "api" and entries[0].seed == 8 and len(result.images) == 1
