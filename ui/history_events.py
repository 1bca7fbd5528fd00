"""Wiring of lasting work: the page load that brings this browser's conversation back, New chat, the chat list
(open, delete), and the Library tab's events. Handlers live in ui/history.py and ui/library_page.py.
"""

from __future__ import annotations

import logging

import gradio as gr

from store.library import new_id
from studio.service import Studio
from ui import handlers, history, library_page
from ui.layout import Page
from ui.state import Session, ensure

log = logging.getLogger(__name__)
QUICK = dict(queue=False, api_visibility="private")
DELETE, CONFIRM = "Delete chat", "Click again to delete"  # the button's label (ui/layout.py), and when armed


def wire_history(demo: gr.Blocks, page: Page, studio: Studio) -> None:
    """Attach the events (call inside the gr.Blocks context); nothing when the server keeps no library."""
    library = studio.library
    if library is None or not library.enabled:
        return
    chat_out = [page.chatbot, page.state, page.gallery, page.selected_md, page.ids, page.conversations]

    def view(session: Session) -> dict:
        return {page.chatbot: session.history, page.state: session, page.gallery: session.gallery(),
                page.selected_md: handlers.selected_label(session),
                page.ids: {"browser": session.browser, "conversation": session.conversation},
                page.conversations: chats(session)}

    def chat_view(session: Session) -> dict:
        """`view` and the Delete chat button back to its label, for the chat list's own events."""
        return {**view(session), page.delete_chat: gr.Button(value=DELETE)}

    def chats(session: Session):
        return gr.Dropdown(choices=history.chat_list(library, session), value=session.conversation)

    def on_load(state, ids, request: gr.Request = None):
        # the page's own Session, shared with a first message that may be running already (OpenPages)
        session = page.sessions.ensure(state, request)
        if session.history:  # a first message got here before this load: its ids (adopt_ids) stand
            history.adopt_ids(session, ids, library)
            return chat_view(session)
        session.browser, conversation = history.ids_of(ids, library)
        if session.user:  # signed in: the account's chats, the latest one open, on whatever browser
            session.browser = session.account_key
            if library.owner(conversation) != session.browser:
                latest = library.conversations(session.browser, limit=1)
                conversation = latest[0][0] if latest else new_id()
        session.conversation = conversation
        stored = library.load_conversation(session.browser, conversation)
        if stored and not session.history:  # a message sent meanwhile starts a new chat; the stored one is listed
            history.restore(stored, session)
        return chat_view(session)

    demo.load(on_load, [page.state, page.ids], [*chat_out, page.delete_chat], **QUICK)

    def fresh(session: Session, conversation: str, keep_old: bool = True) -> Session:
        """A new, empty session of the same browser (the old one's temporary files go; it is stored first unless
        it was just deleted)."""
        browser = session.browser if isinstance(session, Session) else history.ids_of(None)[0]
        if isinstance(session, Session):
            if keep_old:
                history.persist(library, session)
            session.close()
        out = Session.new()
        out.browser, out.conversation = browser, conversation
        out.user = session.user if isinstance(session, Session) else ""  # the signed-in account stays signed in
        return out

    def on_new(state):
        return chat_view(fresh(ensure(state), new_id()))

    chat_out = [*chat_out, page.delete_chat]
    page.new_chat.click(on_new, page.state, chat_out, **QUICK)
    page.chatbot.clear(on_new, page.state, chat_out, **QUICK)  # Clear: a new, empty chat; the old one is listed

    def on_pick(state, conversation):
        session = ensure(state)
        if not conversation or conversation == session.conversation:
            return gr.skip()
        stored = library.load_conversation(session.browser, conversation)
        if stored is None:
            return chat_view(session)
        session = fresh(session, conversation)
        history.restore(stored, session)
        return chat_view(session)

    page.conversations.input(on_pick, [page.state, page.conversations], chat_out, **QUICK)

    def on_delete(state):
        """The first click asks (the button says "Click again to delete"), the second deletes the chat, its kept
        images and its place in the list. New chat and opening another chat put the button back."""
        session = ensure(state)
        if not session.history:
            return chat_view(session)
        if session.delete_armed != session.conversation:
            session.delete_armed = session.conversation
            return {page.state: session, page.delete_chat: gr.Button(value=CONFIRM)}
        removed = library.delete_conversation(session.browser, session.conversation)
        session = fresh(session, new_id(), keep_old=False)  # not stored again: that brought the chat back
        session.say("assistant", f"The chat and its {removed} kept image(s) were deleted.")
        return chat_view(session)

    page.delete_chat.click(on_delete, page.state, chat_out, **QUICK)
    if page.library is not None:
        wire_library_tab(page, studio, view)


def wire_library_tab(page: Page, studio: Studio, view) -> None:
    tab, library = page.library, studio.library
    own_only = not studio.local_paths  # a shared server: each browser sees its own conversations' images
    found_out = [tab.gallery, tab.ids, tab.page_md, tab.page]

    def search(state, text, model, lora, when, number):
        session = ensure(state)
        items, ids, line, number = library_page.find(library, session, text, model, lora, number,
                                                     own_only or bool(session.user), when)  # an account: its own
        return {tab.gallery: items, tab.ids: ids, tab.page_md: line, tab.page: number}

    inputs = [page.state, tab.text, tab.model, tab.lora, tab.when]
    for trigger in (tab.search.click, tab.text.submit, tab.when.input, page.tabs.select):
        trigger(lambda st, t, m, lo, w: search(st, t, m, lo, w, 0), inputs, found_out, **QUICK)
    tab.prev.click(lambda st, t, m, lo, w, n: search(st, t, m, lo, w, max(0, n - 1)), inputs + [tab.page],
                   found_out, **QUICK)
    tab.next.click(lambda st, t, m, lo, w, n: search(st, t, m, lo, w, n + 1), inputs + [tab.page], found_out,
                   **QUICK)
    chosen = gr.State(None)

    def on_open(ids, evt: gr.SelectData):
        entry, details = library_page.open_entry(library, ids, evt.index, studio.local_paths)
        return {tab.details: details, chosen: entry.id if entry else None}

    tab.gallery.select(on_open, tab.ids, [tab.details, chosen], **QUICK)

    def on_send(state, entry_id, reuse: bool):
        session = ensure(state)
        shot = library_page.send_to_chat(library, session, entry_id)
        out = view(session)
        out[page.tabs] = gr.Tabs(selected="chat")
        if shot is not None:
            history.persist(library, session)
        return out

    send_out = [page.chatbot, page.state, page.gallery, page.selected_md, page.ids, page.conversations, page.tabs]
    tab.send.click(lambda st, e: on_send(st, e, False), [page.state, chosen], send_out, **QUICK)
    tab.reuse.click(lambda st, e: on_send(st, e, True), [page.state, chosen], send_out, **QUICK).then(
        None, None, None, js="() => document.querySelector('#reuse')?.click()")
    if tab.import_button is not None:  # the answer beside the button, then the gallery with what came in
        tab.import_button.click(lambda folder: library_page.import_folder(library, folder), tab.folder,
                                tab.import_md, api_visibility="private").then(
            lambda st, t, m, lo, w: search(st, t, m, lo, w, 0), inputs, found_out, **QUICK)
