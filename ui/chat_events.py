"""Wiring of the chat column: each event maps `{component: value}` to a plain handler of ui/handlers.py or
ui/edit_handlers.py and its answer back to component updates. A streaming turn redraws through a `Redraw`, which
owns what the page has been sent, so each yield sends only what changed. No torch; raw exceptions never reach
the page (handlers answer in the chat and log the traceback).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import gradio as gr

from studio.service import Studio
from ui import edit_handlers, handlers, history, runner
from ui.layout import Page
from ui.panel_events import show_view
from ui.panel_handlers import model_view
from ui.runner import Update
from ui.state import Session, Settings, ensure

UNSENT = object()  # an output a Redraw has not sent yet
QUICK = dict(queue=False, api_visibility="private")  # no engine: answered at once, even when many wait
# generations start at once and wait in studio.line (bounded, cancellable, told their place), so gradio's queue
# never fills and its "full" never refuses a page load or a panel event; the chat shows the turn's progress
# (gradio's own would put a pending border on each output)
ENGINE_EVENT = dict(concurrency_limit=None, api_visibility="private", show_progress="hidden")
Work = Callable[[Studio, Session, dict], Iterator[Update]]  # a generating handler, given the event's values


# ---------------------------------------------------------------------------------------------- reading

def settings_of(page: Page, values: dict) -> Settings:
    """The panel's settings, with the refine switch and strength beside the chat."""
    settings = page.panel.read(values)
    settings.refine, settings.strength = bool(values[page.refine]), float(values[page.strength])
    return settings


def typed(page: Page, values: dict) -> str:
    """The text in the message box (an edit's prompt)."""
    return (values[page.box] or {}).get("text", "") if isinstance(values[page.box], dict) else ""


# ---------------------------------------------------------------------------------------------- showing

def view(page: Page, session: Session) -> dict:
    """The chat column as `session` has it."""
    return {page.chatbot: session.history, page.state: session, page.gallery: session.gallery(),
            page.selected_md: handlers.selected_label(session)}


def render(page: Page, studio: Studio, session: Session, update: Update, values: dict) -> dict:
    """`view`, and the panel and message box where `update` sets them (a restored PNG, Reuse)."""
    out = view(page, session)
    panel = page.panel
    if update.settings is not None:
        out.update(panel.show(update.settings, values[panel.plugin_names]))
        if update.settings.model != values[panel.model]:
            out.update(show_view(panel, page.status_md, model_view(studio, update.settings.model),
                                 keep=update.settings))
    if update.model is not None:  # back on the last model that worked: the picker, its defaults and plugins
        out[panel.model] = update.model
        out.update(show_view(panel, page.status_md, model_view(studio, update.model)))
    if update.prompt is not None:
        out[page.box] = {"text": update.prompt, "files": []}
    if update.status is not None:
        out[page.status_md] = update.status
    return out


def _copy(values: dict) -> dict:
    """Values as sent: later turns change the session's lists in place."""
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


class Redraw:
    """What one streaming event has sent the page: the chat and the status line. Gradio checks every file of a
    value it is given (~1 ms an image, beside the sampling) and the browser renders it again, while an output left
    out costs a rebuild (0.3-4 ms): so each yield gives only what changed since the last, and one with nothing new
    gives nothing. The gallery and selection are not its outputs (`after_turn`)."""

    def __init__(self, page: Page, session: Session, line: str, known: bool):
        self.page, self.session, self.line = page, session, line  # line: the status line as the page shows it
        self.shown = _copy(self.showing()) if known else {}  # a new session: the page still shows the old one's

    def showing(self) -> dict:
        return {self.page.chatbot: self.session.history, self.page.status_md: self.line}

    def changes(self, extra: dict):
        """What changed since the last yield, with `extra`; gr.skip() when nothing did."""
        if self.session.closed:  # the tab went on to another chat: its page and gr.State are that chat's now
            return {k: v for k, v in extra.items() if k is not self.page.state} or gr.skip()
        out = {k: v for k, v in self.showing().items()
               if k is not self.page.state and v != self.shown.get(k, UNSENT)}
        self.shown.update(_copy(out))
        return {**out, **extra} or gr.skip()


# ---------------------------------------------------------------------------------------------- streaming

def streamed(page: Page, studio: Studio, work: Work):
    """The event for a generating handler: each Update it yields becomes a yield of what changed on the page.
    A turn's new settings or prompt (a PNG dropped into the chat) wait on the session for `apply_pending`, the
    quick event after it: the panel's ~35 outputs in the stream would cost more than the sampling."""
    def event(values: dict, request: gr.Request = None):
        known = isinstance(values[page.state], Session)  # else the server lost it (expired, restarted)
        session = page.sessions.ensure(values[page.state], request)
        history.adopt_ids(session, values[page.ids], studio.library)  # a first message sent before the load ran
        session.pending = None
        session.page_had = page_has(session) if known else None
        before = values[page.status_md]  # the status line before the turn, for a turn that says nothing of its model
        redraw = Redraw(page, session, before, known)
        # the message box's own Stop button (the page's one Stop) shows while this runs, and only then; it comes
        # with the turn's first redraw (the user's message), not a yield of its own
        first = {page.state: session, page.box: gr.MultimodalTextbox(value=None, submit_btn=False, stop_btn=True)}
        try:
            with studio.stops.watching(getattr(request, "session_hash", None), session.cancel):
                for update in work(studio, session, values):
                    if update.settings is not None or update.prompt is not None or update.model is not None:
                        session.pending = update
                    redraw.line = before if update.status_back else (update.status or redraw.line)
                    yield redraw.changes(first)
                    first = {}
        except Exception as e:
            session.say("assistant", runner.error_message(e, studio.local_paths))
        yield redraw.changes(turn_end(page, studio, session))
    return event


def turn_end(page: Page, studio: Studio, session: Session) -> dict:
    """The event's last yield: Send again and Stop hidden (a .then could land after the next message's Stop), the
    pending panel's tick, and the conversation stored so it outlasts the page (a closed tab runs no .then), under
    the ids the browser keeps. The session goes into its gr.State again: a page load that ran during the turn (a
    first message sent while the page was still loading) must not leave its own, empty session there."""
    done = {page.box: gr.MultimodalTextbox(submit_btn=True, stop_btn=False), page.state: session}
    if session.pending is not None:  # settings or a prompt to show: the quick panel event runs on this tick
        done[page.pending_tick] = time.monotonic_ns()
    history.persist(studio.library, session, soon=True)
    if session.browser:
        done[page.ids] = {"browser": session.browser, "conversation": session.conversation}
    return done


def page_has(session: Session) -> dict:
    """The gallery and selection label as `after_turn` compares them."""
    return {"gallery": session.gallery(), "selected": handlers.selected_label(session)}


def after_turn(page: Page, studio: Studio, session) -> dict:
    """The quick event after a turn: the gallery and selection where the turn changed them (all of them when the
    page showed a session the server had lost), and the chat list. They are not outputs of the streaming event,
    whose every yield would cost gradio a rebuild of each (the gallery's alone ~3.5 ms, 50 tabs each yielding every
    few seconds)."""
    if not isinstance(session, Session) or session.closed:
        return gr.skip()
    had, now = session.page_had, page_has(session)
    session.page_had = now
    out = {component: now[key] for key, component in (("gallery", page.gallery), ("selected", page.selected_md))
           if had is None or had[key] != now[key]}
    if session.browser and studio.library is not None and studio.library.enabled:  # named by its first prompt
        out[page.conversations] = gr.Dropdown(choices=history.chat_list(studio.library, session),
                                              value=session.conversation)
    return out or gr.skip()


def apply_pending(page: Page, studio: Studio, values: dict):
    """The panel and message box for the turn that just ended (when it restored settings)."""
    session = values[page.state]
    update = session.pending if isinstance(session, Session) else None
    if update is None:
        return gr.skip()
    session.pending = None
    out = render(page, studio, session, update, values)
    return {k: v for k, v in out.items() if k not in (page.chatbot, page.state, page.gallery, page.selected_md)}


# ---------------------------------------------------------------------------------------------- the handlers' calls

def send(page: Page) -> Work:
    def work(studio, session, values):
        message = values[page.box] or {}
        return handlers.send(studio, session, message.get("text", ""), settings_of(page, values),
                             message.get("files") or [])
    return work


def on_selected(page: Page, action) -> Work:
    """Reroll or Vary of the selected image."""
    return lambda studio, session, values: action(studio, session, settings_of(page, values))


def edit(page: Page, action, *extra) -> Work:
    """An edit of the selected image (zoom out, upscale, pan) with the message box's text as its prompt."""
    return lambda studio, session, values: action(studio, session, settings_of(page, values), typed(page, values),
                                                  *extra)


def inpaint(page: Page) -> Work:
    return lambda studio, session, values: edit_handlers.inpaint(studio, session, settings_of(page, values),
                                                                 typed(page, values), values[page.editor])


# ---------------------------------------------------------------------------------------------- wiring

def wire_chat(page: Page, studio: Studio) -> None:
    """Attach the chat column's events (call inside the gr.Blocks context)."""
    panel = page.panel
    inputs = panel.settings_inputs() | {page.state, page.box, page.refine, page.strength}
    stream_in = inputs | {page.status_md, page.ids}
    # few outputs: each one a yield leaves out costs gradio a rebuild (Redraw); the rest come after the turn
    stream_out = [page.chatbot, page.state, page.status_md, page.box, page.pending_tick, page.ids]
    after_out = [page.gallery, page.selected_md, page.conversations]

    def after(state):
        return after_turn(page, studio, state)

    # Enter while this tab's turn is still ending is kept and sent when it ends (gradio's default, "once",
    # dropped it: the text stayed in the box until Enter was pressed again)
    page.box.submit(streamed(page, studio, send(page)), stream_in, stream_out, **ENGINE_EVENT,
                    trigger_mode="always_last").then(after, page.state, after_out, **QUICK)
    for trigger, action in ((page.reroll.click, handlers.reroll), (page.vary.click, handlers.vary)):
        trigger(streamed(page, studio, on_selected(page, action)), stream_in, stream_out, **ENGINE_EVENT).then(
            after, page.state, after_out, **QUICK)
    edits = [(page.inpaint.click, inpaint(page)), (page.zoom_out.click, edit(page, edit_handlers.zoom_out)),
             (page.upscale.click, edit(page, edit_handlers.upscale))]
    edits += [(button.click, edit(page, edit_handlers.pan, side)) for side, button in page.pans.items()]
    # the editor shows the selected image: when the edit box opens, on "Paint on the selected image", and after
    # each edit (it started empty, and kept the image an inpaint had just replaced)
    def to_editor(state):
        return edit_handlers.selected_background(ensure(state))

    for trigger, work in edits:
        trigger(streamed(page, studio, work), stream_in | {page.editor}, stream_out, **ENGINE_EVENT).then(
            after, page.state, after_out, **QUICK).then(to_editor, page.state, page.editor, **QUICK)
    page.edit_box.expand(to_editor, page.state, page.editor, **QUICK)
    # only when a turn left settings to show (a dropped PNG): an event run after every turn would cost gradio a
    # rebuild of its ~45 outputs (gr.skip() included), ~60 ms a message
    panel_out = [page.box, page.status_md, *panel.persisted(), *panel.plugin_outputs()]
    page.pending_tick.change(lambda values: apply_pending(page, studio, values), inputs, panel_out,
                             show_progress="hidden", **QUICK)
    page.paint.click(to_editor, page.state, page.editor, **QUICK)
    page.box.stop(handlers.stop, page.state, None, **QUICK)
    wire_actions(page, studio, inputs)


def wire_actions(page: Page, studio: Studio, inputs: set) -> None:
    """The quick events: Clear, Reuse, Use as control, restore a PNG, and selecting an image."""
    panel = page.panel
    chat_out = [page.chatbot, page.state, page.gallery, page.selected_md, page.box, page.status_md,
                *panel.persisted(), *panel.plugin_outputs()]
    view_out = [page.chatbot, page.state, page.gallery, page.selected_md]

    def on_clear(state):
        session = ensure(state)
        handlers.clear(session)
        return view(page, session)

    if studio.library is None or not studio.library.enabled:  # with a library, Clear starts a new chat
        page.chatbot.clear(on_clear, page.state, view_out, **QUICK)

    def on_reuse(values: dict):
        session = ensure(values[page.state])
        return render(page, studio, session, handlers.reuse(session, settings_of(page, values)), values)

    page.reuse.click(on_reuse, inputs, chat_out, **QUICK)
    unit = panel.units[0]

    def on_control(state):
        session = ensure(state)
        path = handlers.use_as_control(session)
        out = view(page, session)
        if path:
            out.update({unit.enabled: True, unit.image: path, panel.control_box: gr.Accordion(open=True),
                        panel.control_tabs: gr.Tabs(selected="unit-1")})
        return out

    page.control.click(on_control, page.state, [*view_out, unit.enabled, unit.image, panel.control_box,
                                                 panel.control_tabs], **QUICK)

    def on_look(state):
        session = ensure(state)
        path = handlers.use_as_image_prompt(session)
        out = view(page, session)
        if path:
            out.update({panel.look_image: path, panel.control_box: gr.Accordion(open=True),
                        panel.control_tabs: gr.Tabs(selected="image-prompt-tab")})
        return out

    page.look.click(on_look, page.state, [*view_out, panel.look_image, panel.control_box, panel.control_tabs],
                    **QUICK)

    def on_restore(values: dict):
        session = ensure(values[page.state])
        file = values[panel.restore_file]
        if not file:
            return view(page, session)
        update = handlers.restore(studio, session, file, settings_of(page, values))
        return {**render(page, studio, session, update, values), panel.restore_file: None}

    # the file box is an input of its own upload (else gradio shows it read-only and the handler never sees it)
    panel.restore_file.upload(on_restore, inputs | {panel.restore_file}, chat_out + [panel.restore_file], **QUICK)

    def on_gallery_select(state, evt: gr.SelectData):
        session = ensure(state)
        return {page.state: session, page.selected_md: handlers.select(session, evt.index)}

    def on_chat_select(state, evt: gr.SelectData):
        session = ensure(state)
        return {page.state: session, page.selected_md: handlers.select_message(session, evt.index)}

    page.gallery.select(on_gallery_select, page.state, [page.state, page.selected_md], **QUICK)
    page.chatbot.select(on_chat_select, page.state, [page.state, page.selected_md], **QUICK)
