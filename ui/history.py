"""Conversations that outlast the page: each image kept in the library as it is made, and the session stored per
browser so that a reload or a server restart finds it again. No gradio, no torch.

The browser holds only two random ids (`gr.BrowserState`): its own and its current conversation's. Everything
else is on the server, in the library (store/library.py); another browser's id opens nothing. The chat shows
copies of the kept images in the session's temporary folder (gradio serves only those), so the outputs folder is
never exposed by path.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.request import Request
from store.library import Library, new_id
from ui.state import Session, Shot

log = logging.getLogger(__name__)
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-persist")  # one: writes stay in order


def snapshot(session: Session) -> dict:
    """The session as plain JSON, with the kept files' paths in place of the chat's temporary copies."""
    def kept(path: str) -> str | None:
        return session.kept.get(path)

    history = []
    for message in session.history:
        content = message["content"]
        if isinstance(content, dict) and "path" in content:
            if kept(content["path"]) is None:
                continue  # not kept (a preview, a dropped file): nothing to show after a reload
            content = {**content, "path": kept(content["path"])}
        elif not isinstance(content, str):
            continue
        history.append({"role": message["role"], "content": content})
    shots = [{"number": s.number, "path": kept(s.path), "request": s.request.to_json(), "turn": s.turn.to_json(),
              "model_name": s.model_name, "message": _message_of(session, s)} for s in session.shots if kept(s.path)]
    return {"version": 1, "history": history, "shots": shots, "selected": session.selected}


def _message_of(session: Session, shot: Shot) -> int:
    """Where `shot` will stand in the stored history (messages that are not kept are left out of it)."""
    position = -1
    for n, message in enumerate(session.history):
        content = message["content"]
        if isinstance(content, str) or (isinstance(content, dict) and session.kept.get(content.get("path", ""))):
            position += 1
        if n == shot.message_index:
            return position
    return -1


def restore(state: dict, session: Session) -> Session:
    """Fill an empty `session` from a stored snapshot: kept images copied into its folder, paths rewritten."""
    copies: dict[str, str] = {}

    def copy(kept: str) -> str | None:
        if kept not in copies:
            source = Path(kept)
            if not source.is_file():
                return None  # deleted from the library since
            target = session.workdir / f"studio-restored-{len(copies):04d}-{source.name}"
            shutil.copyfile(source, target)
            copies[kept] = str(target)
            session.kept[str(target)] = kept
        return copies[kept]

    for message in state.get("history") or []:
        content = message.get("content")
        if isinstance(content, dict) and isinstance(content.get("path"), str):
            shown = copy(content["path"])
            content = {**content, "path": shown} if shown else "(this image was deleted from the library)"
        if isinstance(content, (str, dict)):
            session.history.append({"role": str(message.get("role", "assistant")), "content": content})
    for shot in state.get("shots") or []:
        shown = copy(shot["path"]) if isinstance(shot.get("path"), str) else None
        if shown is None:
            continue
        try:
            request, turn = Request.from_json(shot["request"]), Request.from_json(shot["turn"])
        except Exception:  # a snapshot from another version: the image still shows in the chat
            log.info("skipping a stored image whose settings no longer read", exc_info=True)
            continue
        session.shots.append(Shot(int(shot.get("number", len(session.shots) + 1)), shown, request, turn,
                                  str(shot.get("model_name", "")), int(shot.get("message", -1))))
    selected = state.get("selected")
    session.selected = selected if isinstance(selected, int) and 0 <= selected < len(session.shots) else None
    return session


def chat_list(library: Library, session: Session) -> list[tuple[str, str]]:
    """(title, id) of this browser's conversations for the chat list, newest first; the session's own under its
    first prompt even before it is stored (its first turn is written in the background)."""
    choices = [(title or "New chat", cid) for cid, title, _ in library.conversations(session.browser)
               if cid != session.conversation]
    return [(title_of(session), session.conversation), *choices] if session.conversation else choices


def title_of(session: Session) -> str:
    """The conversation's name in the list: its first prompt."""
    for message in session.history:
        if message["role"] == "user" and isinstance(message["content"], str) and message["content"].strip():
            return message["content"].strip().splitlines()[0][:80]
    return "New chat"


def persist(library: Library | None, session: Session, soon: bool = False) -> None:
    """Store the session under its browser and conversation ids (nothing when either is unknown or not kept).

    `soon`: write it in the background writer, in order (the chat's turns: until its event ends, gradio ignores
    the tab's next Enter, so a turn ends with its last redraw, not after the database write). The snapshot is
    taken here, so later turns cannot change what is written."""
    if library is None or not library.enabled or not session.browser or not session.history:
        return
    if not session.conversation:
        session.conversation = new_id()
    args = (library, session.browser, session.conversation, snapshot(session), title_of(session))
    if soon:
        _WRITER.submit(_save, *args)
    else:
        _save(*args)


def _save(library: Library, browser: str, conversation: str, state: dict, title: str) -> None:
    try:
        library.save_conversation(browser, conversation, state, title)
    except Exception:  # the chat goes on; the next event tries again
        log.exception("could not store conversation %s", conversation)


def adopt_ids(session: Session, saved, library=None) -> None:
    """Give a session that has no browser id yet the ids this browser keeps (or new ones): a message sent before
    the page's load event ran (or after the server dropped the tab's state) is then stored where the next visit
    looks. A conversation already stored is not continued by a session that never loaded it: the session gets a
    new one (else its first save would write over the stored chat with only the new messages)."""
    if not session.browser:
        session.browser, conversation = ids_of(saved, library)
        if session.user:  # a signed-in account's chats are stored under the account, not the browser
            session.browser = session.account_key
        if library is not None and library.owner(conversation) is not None:
            conversation = new_id()
        session.conversation = session.conversation or conversation


def ids_of(saved, library=None) -> tuple[str, str]:
    """(browser id, current conversation id) from the browser's stored value, made when missing or malformed.
    A conversation id that `library` holds for another browser is replaced by a new one: a browser that claims
    another's conversation would otherwise file its images under it (in that browser's Library, deleted with it)."""
    data = saved if isinstance(saved, dict) else {}
    browser, conversation = data.get("browser"), data.get("conversation")
    ok = lambda x: isinstance(x, str) and len(x) == 32 and x.isalnum()  # noqa: E731 (new_id's form only)
    browser = browser if ok(browser) else new_id()
    if not ok(conversation) or (library is not None and library.owner(conversation) not in (None, browser)):
        conversation = new_id()
    return browser, conversation
