"""The page's layout: every component of the chat column and where the side panel goes. Components only.

`build_page` is called inside `gr.Blocks` and returns a `Page` that names each component; ui/app.py and
ui/panel_events.py wire their events, ui/panel.py builds the side panel's own components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ui.checked_image import checked_editor
from ui.library_page import LibraryTab, build_tab
from ui.panel import Panel
from ui.state import MAX_MESSAGE, OpenPages, Settings, close_session

TITLE = "Diffusion Studio"
CSS = (Path(__file__).with_name("page.css")).read_text()  # sizes, the image grid, what fits one screen
# the page's scripts, each a function: the chat follows new replies (a "New reply" button); a PNG dropped into the
# message box restores its settings at once
_SCRIPTS = [(Path(__file__).with_name(name)).read_text() for name in ("follow.js", "restore.js")]
JS = "() => {\n" + "".join(f"({script.strip()})();\n" for script in _SCRIPTS) + "}"
PLACEHOLDER = ("**Describe an image and press Enter.** Add flags like `--seed 42 --ar 3:2 --no text`; type `/help` "
               "for all of them.")


@dataclass
class Page:
    state: gr.State  # this tab's ui.state.Session
    saved: gr.BrowserState  # the panel's plain settings, kept in the browser
    status_md: gr.Markdown
    chatbot: gr.Chatbot
    box: gr.MultimodalTextbox
    selected_md: gr.Markdown
    reroll: gr.Button
    vary: gr.Button
    reuse: gr.Button
    control: gr.Button
    look: gr.Button  # "Use as image prompt"
    refine: gr.Checkbox
    strength: gr.Slider
    gallery: gr.Gallery
    panel: Panel
    ids: gr.BrowserState  # {"browser", "conversation"}: the random ids this browser's history is stored under
    tabs: gr.Tabs
    new_chat: gr.Button
    conversations: gr.Dropdown  # this browser's stored conversations (id -> title)
    delete_chat: gr.Button
    library: LibraryTab | None  # the Library tab (None when nothing is kept: --outputs none)
    edit_box: gr.Accordion
    editor: gr.ImageEditor  # the selected image, to paint the part to repaint on
    paint: gr.Button  # put the selected image on the editor's canvas
    inpaint: gr.Button
    zoom_out: gr.Button
    pans: dict  # side -> gr.Button
    upscale: gr.Button
    pending_tick: gr.State  # changed when a turn leaves settings for the panel (a dropped PNG): shows them
    sessions: OpenPages = field(default_factory=OpenPages)  # each open page's Session, for events that race


CHAT_HEIGHT = "calc(100vh - 576px)"  # at 1440x1000 the page fits the screen (page.css: taller on a phone)
SESSION_TTL_S = 6 * 3600  # a session idle this long is closed and its files deleted (clients without a heartbeat too)


def chat_buttons(on_space: bool) -> list[str]:
    """The chat's buttons: gradio's Share posts to a Space's discussions, so it is there only on a Space (elsewhere
    it fails with "Must be on Spaces to share"). Each image message's own Share button is always drawn by gradio
    6.31; the class "no-share" hides it (CSS)."""
    return ["copy", "copy_all"] + (["share"] if on_space else [])


def build_page(models: list[tuple[str, str]], start: Settings, defaults: dict, status_text: str, selected_text: str,
               local_paths: bool, session_ttl: float = SESSION_TTL_S, keeps: str = "", on_space: bool = False,
               hf_login: bool = False) -> Page:
    """Lay out the page (inside a gr.Blocks); `defaults` are studio.service.panel_defaults of `start.model`; `keeps`:
    the library's browser secret when the server keeps images and conversations (a Library tab, a chat list);
    `on_space`: served on a Hugging Face Space (its Share button works there only); `hf_login`: a "Sign in with
    Hugging Face" button (a Space with `hf_oauth: true`): signed in, the account owns the chats, as with --auth.

    A session ends when its tab closes (gradio's heartbeat) or `session_ttl` seconds after its last event."""
    state = gr.State(None, delete_callback=close_session, time_to_live=session_ttl)
    saved = gr.BrowserState(None, storage_key="studio-settings")
    ids = gr.BrowserState(None, storage_key="studio-history", secret=keeps or None)
    pending_tick = gr.State(0)
    with gr.Row(equal_height=True, elem_id="header"):
        gr.Markdown(f"## {TITLE}", elem_id="title")
        status_md = gr.Markdown(status_text, elem_id="status")
        if hf_login:  # gradio's OAuth: signs in, then reloads the page as that user (ui.state.signed_in_name)
            gr.LoginButton(size="sm", scale=0, min_width=170, elem_id="hf-login")
    with gr.Tabs(selected="chat") as tabs, gr.Tab("Chat", id="chat"):
        with gr.Row(visible=bool(keeps), elem_id="chat-list"):
            new_chat = gr.Button("+ New chat", size="sm", scale=0, min_width=110, elem_id="new-chat")
            conversations = gr.Dropdown([], label="Your chats (this browser's; pick one to open it)",
                                        show_label=False, scale=4, container=False, elem_id="chats")
            delete_chat = gr.Button("Delete chat", size="sm", scale=0, min_width=110, variant="stop",
                                    elem_id="delete-chat")
        chat_row = gr.Row(elem_id="chat-row")
    with chat_row:
        with gr.Column(scale=5, min_width=340):
            # the chat takes the height the rest leaves (page.css); autoscroll is follow.js's
            # no "Chat" label: its badge covered the first line of the chat (a note's "Note:" read "te:")
            chatbot = gr.Chatbot(elem_id="chat", label="Chat", show_label=False, height=CHAT_HEIGHT, min_height=300,
                                 feedback_options=None, placeholder=PLACEHOLDER, autoscroll=False,
                                 buttons=chat_buttons(on_space), elem_classes=[] if on_space else ["no-share"])
            # the one Stop: the box's own stop button, shown only while a generation runs (ui/app.py)
            box = gr.MultimodalTextbox(elem_id="prompt", show_label=False, file_types=["image"],
                                       file_count="multiple", stop_btn=False, max_plain_text_length=MAX_MESSAGE,
                                       placeholder="Describe an image… (/help for flags; drop a PNG here to "
                                                   "restore its settings)")
            with gr.Row(equal_height=True, elem_id="actions"):
                selected_md = gr.Markdown(selected_text, elem_id="selected", min_height=0)
                reroll = gr.Button("Reroll", elem_id="reroll", size="sm", scale=0, min_width=80)
                vary = gr.Button("Vary", elem_id="vary", size="sm", scale=0, min_width=70)
                reuse = gr.Button("Reuse settings", elem_id="reuse", size="sm", scale=0, min_width=110)
                control = gr.Button("Use as control", elem_id="use-control", size="sm", scale=0, min_width=110)
                look = gr.Button("Use as image prompt", elem_id="use-image-prompt", size="sm", scale=0,
                                 min_width=140)
                refine = gr.Checkbox(label="Refine next message", value=False, elem_id="refine",
                                     scale=0, container=False)
            with gr.Accordion("Edit the selected image: refine strength, paint to repaint, zoom out, pan, upscale",
                              open=False, elem_id="edit-box") as edit_box:
                strength = gr.Slider(0.05, 1.0, step=0.05, value=0.5, label="Refine strength (the Refine switch, "
                                     "--refine S): low keeps more of the image", elem_id="strength")
                # the hint above the editor, not as its label: on a phone the editor's toolbar covered the label
                gr.Markdown("Paint over what to change (the brush); the message box's text, if any, says what to "
                            "put there.", elem_id="editor-hint")
                editor = checked_editor(type="pil", label="Paint over what to change", show_label=False,
                                        elem_id="editor",
                                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=12),
                                        eraser=gr.Eraser(default_size=12), layers=False, height=360,
                                        sources=(), transforms=())
                with gr.Row():
                    paint = gr.Button("Paint on the selected image", size="sm", elem_id="edit-paint")
                    inpaint = gr.Button("Inpaint the painted part", size="sm", variant="primary",
                                        elem_id="edit-inpaint")
                with gr.Row():
                    zoom_out = gr.Button("Zoom out 1.5x", size="sm", elem_id="edit-zoom")
                    pans = {side: gr.Button(f"Pan {side}", size="sm", elem_id=f"edit-pan-{side}")
                            for side in ("left", "up", "down", "right")}
                    upscale = gr.Button("Upscale 2x", size="sm", elem_id="edit-upscale")
            gallery = gr.Gallery(label="This session's images: click one to select it (the actions act on it); "
                                       "downloads keep the settings", columns=8, fit_columns=False,
                                 object_fit="contain", height=140, allow_preview=True, elem_id="gallery",
                                 buttons=["download", "fullscreen"])
        with gr.Column(scale=2, min_width=340, elem_id="panel"):
            panel = Panel(models, start, defaults, local_paths)
    library = None
    if keeps:
        with tabs, gr.Tab("Library", id="library"):
            library = build_tab(can_import=local_paths)
    return Page(state=state, saved=saved, status_md=status_md, chatbot=chatbot, box=box, selected_md=selected_md,
                reroll=reroll, vary=vary, reuse=reuse, control=control, look=look, refine=refine, strength=strength,
                gallery=gallery, panel=panel, ids=ids, tabs=tabs, new_chat=new_chat, conversations=conversations,
                delete_chat=delete_chat, library=library, edit_box=edit_box, editor=editor, paint=paint,
                inpaint=inpaint, zoom_out=zoom_out, pans=pans, upscale=upscale, pending_tick=pending_tick)
