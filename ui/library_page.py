"""The Library tab: every kept image, newest first, a page of thumbnails at a time; search by prompt words, model
and LoRA; open one with its settings and send it to the chat (then Reuse settings, Use as control or Refine act
on it). Layout (`build_tab`) and plain handlers (`find`, `open_entry`, `send_to_chat`, `import_folder`).

On a server that others use (`EngineConfig.local_paths` off) each browser sees only the images of its own
conversations, importing server folders is off, and an image's details name its file but not the server's
folders. Thumbnails and opened images are copies in the session's temporary folder: the outputs folder is never
served by path.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.request import Request, UserError
from store.library import Entry, Library
from ui.marks import PROBLEM
from ui.state import Session, Shot

log = logging.getLogger(__name__)

PAGE = 48
THUMB = 192
THUMB_MAX_PIXELS = 64 * 2**20  # kept images may be upscaled past the engine's input limit; larger ones get no tile
PERIODS = {"any time": None, "today": 0, "last 7 days": 7, "last 30 days": 30, "last year": 365}


@dataclass
class LibraryTab:
    text: gr.Textbox
    model: gr.Textbox
    lora: gr.Textbox
    when: gr.Dropdown
    search: gr.Button
    gallery: gr.Gallery
    page_md: gr.Markdown
    prev: gr.Button
    next: gr.Button
    page: gr.State  # the page number shown
    ids: gr.State  # the entry ids of the gallery, in order
    details: gr.Markdown
    send: gr.Button
    reuse: gr.Button
    folder: gr.Textbox | None
    import_button: gr.Button | None
    import_md: gr.Markdown | None  # what the import did, beside its button


def build_tab(can_import: bool) -> LibraryTab:
    """The tab's components (call inside a gr.Tab)."""
    with gr.Row(equal_height=True):
        text = gr.Textbox(label="Search prompts", placeholder="words of the prompt, e.g. lighthouse dusk", scale=4,
                          elem_id="library-search")
        model = gr.Textbox(label="Model", placeholder="part of its name", scale=2)
        lora = gr.Textbox(label="LoRA", placeholder="name", scale=1)
        when = gr.Dropdown(list(PERIODS), value="any time", label="Made", scale=1, elem_id="library-when")
        search = gr.Button("Search", variant="primary", scale=1, elem_id="library-go")
    gallery = gr.Gallery(label="Kept images (newest first): click one to open it", columns=8, rows=2,
                         height="auto", object_fit="contain", allow_preview=False, elem_id="library-gallery")
    with gr.Row(equal_height=True):
        prev = gr.Button("← Newer", size="sm")
        page_md = gr.Markdown("", elem_id="library-page")
        next_ = gr.Button("Older →", size="sm")
    details = gr.Markdown("Open an image to see its settings.", elem_id="library-details")
    with gr.Row():
        send = gr.Button("Send to chat (select it there)", size="sm", elem_id="library-send")
        reuse = gr.Button("Reuse its settings", size="sm", elem_id="library-reuse")
    folder = import_button = import_md = None
    if can_import:
        with gr.Accordion("Import a folder of PNGs (AUTOMATIC1111, SD.Next, Fooocus, ComfyUI)", open=False):
            with gr.Row(equal_height=True):
                folder = gr.Textbox(label="Folder on this machine", placeholder="~/stable-diffusion-webui/outputs",
                                    scale=4)
                import_button = gr.Button("Import", scale=1, elem_id="library-import")
            import_md = gr.Markdown("", elem_id="library-imported")
    return LibraryTab(text, model, lora, when, search, gallery, page_md, prev, next_, gr.State(0), gr.State([]),
                      details, send, reuse, folder, import_button, import_md)


# ------------------------------------------------------------------------------------------------ handlers

def find(library: Library | None, session: Session, text: str, model: str, lora: str, page: int,
         own_only: bool, when: str = "any time") -> tuple[list[tuple[str, str]], list[int], str, int]:
    """One page of matches: (thumbnails with captions, their entry ids, the page line, the page shown)."""
    if library is None or not library.enabled:
        return [], [], "Nothing is kept on this server (started with `--outputs none`).", 0
    mine = None
    if own_only:
        mine = [c[0] for c in library.conversations(session.browser, limit=500)] if session.browser else []
    page = max(0, int(page or 0))
    since = _since(when)

    def one_page(number: int):
        return library.search(text or "", model=model or "", lora=lora or "", since=since, limit=PAGE,
                              offset=number * PAGE, conversation=mine)

    try:
        entries, total = one_page(page)
    except UserError as e:  # a search box past its length
        return [], [], f"{PROBLEM} {e}", 0
    if total and not entries and page:  # past the end (the library shrank): the last page
        page = (total - 1) // PAGE
        entries, total = one_page(page)
    shown = [(e, thumb) for e in entries if (thumb := thumbnail(e, session))]  # a file may be gone
    items = [(thumb, caption(e)) for e, thumb in shown]
    ids = [e.id for e, _ in shown]
    if not total:
        asked = text or model or lora or since is not None
        line = "No kept image matches." if asked else "No kept images yet: make some in the chat."
    else:
        line = f"{page * PAGE + 1}-{page * PAGE + len(entries)} of {total}"
    return items, ids, line, page


def caption(entry: Entry, length: int = 18) -> str:
    """A thumbnail's caption: the start of its prompt, what people search by (its date and seed are in the
    details; a date alone was cut off under each tile and told them apart by nothing)."""
    prompt = " ".join((entry.prompt or "").split()) or "(no prompt)"
    return prompt if len(prompt) <= length else prompt[:length - 1].rstrip() + "…"


def _since(when: str) -> float | None:
    """The start of a period of PERIODS as a timestamp (local midnight for "today")."""
    import time

    days = PERIODS.get(when)
    if days is None:
        return None
    midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
    return midnight - days * 86400


def thumbnail(entry: Entry, session: Session) -> str | None:
    """A small copy of the entry's image in the session folder (made once), or None (its tile is left out) when
    its file is gone or cannot be shown: damaged, or changed into a decompression bomb since it was indexed."""
    from PIL import Image

    target = session.workdir / "thumbs" / f"{entry.id}.png"
    if target.is_file():
        return str(target)
    try:
        with Image.open(entry.path) as image:  # PIL refuses a header past twice its pixel limit: a bomb
            if image.width * image.height > THUMB_MAX_PIXELS:
                return None
            image.thumbnail((THUMB, THUMB))
            target.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(target, format="PNG")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        log.info("no thumbnail for library image %s: %s", entry.id, e)
        return None
    return str(target)


def open_entry(library: Library | None, ids: list[int], index: int,
               local_paths: bool = False) -> tuple[Entry | None, str]:
    """The entry clicked in the gallery and its settings as Markdown. Its file's full path only where
    `local_paths` (a loopback server: the reader runs it); elsewhere the name alone, not the server's folders."""
    if library is None or not ids or not 0 <= index < len(ids):
        return None, "Open an image to see its settings."
    entry = library.get(ids[index])
    if entry is None:
        return None, "This image is no longer in the library."
    s = entry.settings
    rows = [("Prompt", entry.prompt), ("Negative", entry.negative), ("Model", entry.model),
            ("Size", f"{entry.width}x{entry.height}" if entry.width else ""), ("Seed", entry.seed),
            ("Steps", s.get("steps")), ("Guidance", s.get("guidance")), ("Scheduler", s.get("scheduler")),
            ("LoRAs", entry.loras), ("Made", f"{entry.when} ({entry.source})"),
            ("File", entry.path if local_paths else Path(entry.path).name)]
    table = "\n".join(f"| {k} | {html.escape(str(v))} |" for k, v in rows if v not in (None, ""))
    return entry, f"| setting | value |\n|---|---|\n{table}"


def send_to_chat(library: Library | None, session: Session, entry_id: int | None) -> Shot | None:
    """Add a kept image to the chat as a selected image, so the chat's actions work on it."""
    if library is None or entry_id is None:
        return None
    entry = library.get(entry_id)
    if entry is None or not Path(entry.path).is_file():
        session.say("assistant", "That image is no longer in the library.")
        return None
    try:
        request = Request.from_json({**_request_fields(entry.settings), "prompt": entry.prompt or " "})
    except (UserError, TypeError, ValueError):
        request = Request(prompt=entry.prompt or " ", seed=entry.seed, width=entry.width, height=entry.height)
    number = len(session.shots) + 1
    shown = session.workdir / f"studio-library-{number:04d}-{Path(entry.path).name}"
    shown.write_bytes(Path(entry.path).read_bytes())
    session.kept[str(shown)] = entry.path
    session.say("user", f"From the library: {caption(entry, 80)}")  # the image is an answer to this, after reload too
    index = session.say("assistant", {"path": str(shown), "alt_text": f"#{number} (from the library): {entry.prompt}"})
    shot = Shot(number, str(shown), request, request, entry.model, index)
    session.shots.append(shot)
    session.selected = len(session.shots) - 1
    session.say("assistant", f"#{number} is from the library ({entry.when}). It is selected: **Reuse settings**, "
                             "**Use as control**, **Vary** or **Refine** act on it.")
    return shot


def _request_fields(settings: dict) -> dict:
    known = set(Request.__dataclass_fields__)
    return {k: v for k, v in settings.items() if k in known}


def import_folder(library: Library | None, folder: str) -> str:
    if library is None or not library.enabled:
        return "Nothing is kept on this server (`--outputs none`)."
    if not (folder or "").strip():
        return "Type the folder to import, e.g. ~/stable-diffusion-webui/outputs."
    try:
        done = library.import_folder(Path(folder.strip()))
    except UserError as e:
        return f"{PROBLEM} {e}"
    note = f" ({done.unreadable} without readable settings: searchable by date only)" if done.unreadable else ""
    skipped = f" Left out {done.not_images} file(s) that are not images." if done.not_images else ""
    return f"Imported {done.added} image(s) from {folder.strip()}{note}.{skipped}"
