"""The page: `build(engine, default_model)` lays out ui/layout.py's components and wires the chat's events to
the plain handlers of ui/handlers.py (the side panel's in ui/panel_events.py, the API's in ui/api.py).

The closures here only map `{component: value}` to handler arguments and a handler's plain answer back to
component updates. Every event that runs the engine shares the concurrency group "engine" (one at a time, one
GPU); the queue is bounded; raw exceptions never reach the page: handlers answer in the chat and log the
traceback. Serving (launch, --auth, warnings) is ui/serve.py.
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from engine.request import UserError
from studio.line import Line
from studio.service import Studio, builtin_defaults, model_choices, panel_defaults
from ui import api, edit_handlers, handlers, history, runner
from ui.history_events import wire_history
from ui.layout import SESSION_TTL_S, TITLE, Page, build_page
from ui.marks import PROBLEM
from ui.panel_events import show_view, wire_panel
from ui.panel_handlers import model_view
from ui.runner import Update
from ui.state import Session, Settings, ensure
from ui.status import ModelStatus

UNSENT = object()  # an output this event has not sent yet

log = logging.getLogger(__name__)


def build(engine, default_model: str = "builtin", *, gpu=None, status: ModelStatus | None = None,
          max_queue: int = 16, session_ttl: float = SESSION_TTL_S, library=None, on_space: bool = False) -> gr.Blocks:
    """The page for `engine`; users may name server paths as models when `engine.config.local_paths`; `on_space`:
    served on a Hugging Face Space (the chat's Share button works only there).

    At most `max_queue` generations wait for the engine (later ones are told the server is busy); a session
    idle for `session_ttl` seconds is closed and its files deleted."""
    studio = Studio(engine, default_model, gpu, Line(max_queue, getattr(engine, "replicas", 1)), library)
    start = Settings(model=studio.default_model)
    try:
        defaults = panel_defaults(studio, studio.default_model)
        status_text = status.text if status else f"Model **{studio.default_model}** loads on first use."
    except UserError as e:  # a missing default model: the page still comes up, and says why
        defaults, status_text = builtin_defaults(), f"{PROBLEM} {e}"
    with gr.Blocks(title=TITLE, fill_height=True, delete_cache=(3600, 3 * 3600)) as demo:
        page = build_page(model_choices(studio.default_model), start, defaults, status_text,
                          handlers.selected_label(None), studio.local_paths, session_ttl,
                          keeps=library.browser_secret() if library is not None and library.enabled else "",
                          on_space=on_space)
        wire_chat(page, studio)
        wire_history(demo, page, studio)
        wire_panel(demo, page, studio, status)
        api.wire_api(studio)
    demo.studio = studio  # the engine, default model and line behind this page (benchmarks read the line)
    return demo


def wire_chat(page: Page, studio: Studio) -> None:
    """Attach the chat column's events (call inside the gr.Blocks context)."""
    panel = page.panel
    chat_out = [page.chatbot, page.state, page.gallery, page.selected_md, page.box, page.status_md,
                *panel.persisted(), *panel.plugin_outputs()]
    inputs = panel.settings_inputs() | {page.state, page.box, page.refine, page.strength}
    selection_out = [page.state, page.selected_md]

    def settings_of(values: dict) -> Settings:
        settings = panel.read(values)
        settings.refine, settings.strength = bool(values[page.refine]), float(values[page.strength])
        return settings

    def view(session) -> dict:
        return {page.chatbot: session.history, page.state: session, page.gallery: session.gallery(),
                page.selected_md: handlers.selected_label(session)}

    def render(session, update: Update, values: dict) -> dict:
        out = view(session)
        if update.settings is not None:
            out.update(panel.show(update.settings, values[panel.plugin_names]))
            if update.settings.model != values[panel.model]:
                out.update(show_view(panel, page.status_md, model_view(studio, update.settings.model),
                                     keep=update.settings))
        if update.prompt is not None:
            out[page.box] = {"text": update.prompt, "files": []}
        return out

    # A streaming event redraws only the chat: gradio rebuilds every output a yield leaves out (a component and
    # its JSON schema each), so the panel's ~35 outputs in the stream cost more than the sampling. A turn's new
    # settings or prompt (a PNG dropped into the chat) wait in `pending` for the quick `apply_pending` after it.
    stream_out = [page.chatbot, page.state, page.gallery, page.selected_md, page.status_md, page.box,
                  page.pending_tick]
    stream_in = inputs | {page.status_md}
    pending: dict[int, Update] = {}  # id(session) -> the turn's last Update with settings or a prompt

    def streamed(work):
        """Wrap a generating handler: each Update becomes a yield of what changed on the page (nothing, if nothing
        did); nothing escapes as a raw error."""
        def event(values: dict):
            known = isinstance(values[page.state], Session)  # else the server lost it (expired, restarted)
            session = ensure(values[page.state])
            pending.pop(id(session), None)

            line = values[page.status_md]  # the status line as it is, until a run says how its model did
            # what the page shows now: gradio checks every file of a value it is given (~1 ms an image, beside the
            # sampling) and the browser renders it again, while one it is not given costs a rebuild (~1-4 ms): so a
            # yield gives only what changed since the last, and one with nothing new gives nothing (gr.skip())
            def showing() -> dict:
                return {**view(session), page.status_md: line}

            def copy(values: dict) -> dict:  # as sent: later turns change the session's lists in place
                return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}

            shown = copy(showing()) if known else {}  # a new session: the page still shows the old one's

            def changes(extra: dict) -> dict:
                if session.closed:  # the tab went on to another chat: its page and gr.State are that chat's now
                    return {k: v for k, v in extra.items() if k is not page.state} or gr.skip()
                out = {k: v for k, v in showing().items() if k is not page.state and v != shown.get(k, UNSENT)}
                shown.update(copy(out))
                return {**out, **extra} or gr.skip()

            # the message box's own Stop button (the page's one Stop) shows while this runs, and only then; it
            # comes with the turn's first redraw (the user's message), not a yield of its own
            first = {page.state: session, page.box: gr.MultimodalTextbox(value=None, submit_btn=False,
                                                                         stop_btn=True)}
            try:
                for update in work(studio, session, values):
                    if update.settings is not None or update.prompt is not None:
                        pending[id(session)] = update
                    line = update.status or line
                    yield changes(first)
                    first = {}
            except Exception as e:
                session.say("assistant", runner.error_message(e))
            # Send again, Stop hidden: in this event's last yield (a .then could land after the next message's Stop)
            done = {page.box: gr.MultimodalTextbox(submit_btn=True, stop_btn=False)}
            if id(session) in pending:  # settings or a prompt to show: the quick panel event runs on this tick
                done[page.pending_tick] = time.monotonic_ns()
            history.persist(studio.library, session, soon=True)  # the conversation outlasts the page
            if first:  # no redraw yet: the session goes into its gr.State with this last one
                done[page.state] = session
            yield changes(done)  # the event's end
        return event

    def apply_pending(values: dict):
        """The panel and message box for the turn that just ended (when it restored settings)."""
        session = values[page.state]
        update = pending.pop(id(session), None) if isinstance(session, Session) else None
        if update is None:
            return gr.skip()
        out = render(session, update, values)
        return {k: v for k, v in out.items() if k not in (page.chatbot, page.state, page.gallery, page.selected_md)}

    def send(studio, session, values):
        message = values[page.box] or {}
        return handlers.send(studio, session, message.get("text", ""), settings_of(values),
                             message.get("files") or [])

    # generations start at once and wait in studio.line (FIFO, bounded, cancellable, told their place), so
    # gradio's queue never fills and its "full" never refuses a page load or a panel event
    # show_progress hidden: the chat shows the turn's progress; gradio's would put a pending border on each output
    engine_event = dict(concurrency_limit=None, api_visibility="private", show_progress="hidden")
    panel_out = [page.box, page.status_md, *panel.persisted(), *panel.plugin_outputs()]
    for trigger, work in ((page.box.submit, send),
                          (page.reroll.click, lambda st, s, v: handlers.reroll(st, s, settings_of(v))),
                          (page.vary.click, lambda st, s, v: handlers.vary(st, s, settings_of(v)))):
        # Enter while this tab's turn is still ending is kept and sent when it ends (gradio's default, "once",
        # dropped it: the text stayed in the box until Enter was pressed again)
        mode = {"trigger_mode": "always_last"} if trigger == page.box.submit else {}
        trigger(streamed(work), stream_in, stream_out, **engine_event, **mode)
    # only when a turn left settings to show (a dropped PNG): an event run after every turn would cost gradio a
    # rebuild of its ~45 outputs (gr.skip() included), ~60 ms a message
    page.pending_tick.change(apply_pending, inputs, panel_out, queue=False, api_visibility="private",
                             show_progress="hidden")
    def typed(values: dict) -> str:
        return (values[page.box] or {}).get("text", "") if isinstance(values[page.box], dict) else ""

    edits = [(page.inpaint.click, lambda st, s, v: edit_handlers.inpaint(st, s, settings_of(v), typed(v),
                                                                          v[page.editor])),
             (page.zoom_out.click, lambda st, s, v: edit_handlers.zoom_out(st, s, settings_of(v), typed(v))),
             (page.upscale.click, lambda st, s, v: edit_handlers.upscale(st, s, settings_of(v), typed(v)))]
    edits += [(button.click, lambda st, s, v, side=side: edit_handlers.pan(st, s, settings_of(v), typed(v), side))
              for side, button in page.pans.items()]
    for trigger, work in edits:
        trigger(streamed(work), stream_in | {page.editor}, stream_out, **engine_event)
    page.paint.click(lambda state: edit_handlers.selected_background(ensure(state)), page.state, page.editor,
                     queue=False, api_visibility="private")
    def on_clear(state):
        session = ensure(state)
        handlers.clear(session)
        return {page.chatbot: session.history, page.state: session, page.gallery: session.gallery(),
                page.selected_md: handlers.selected_label(session)}

    if studio.library is None or not studio.library.enabled:  # with a library, Clear starts a new chat
        page.chatbot.clear(on_clear, page.state, [page.chatbot, page.state, page.gallery, page.selected_md],
                           queue=False, api_visibility="private")
    page.box.stop(handlers.stop, page.state, None, queue=False, api_visibility="private")

    def on_reuse(values: dict):
        session = ensure(values[page.state])
        return render(session, handlers.reuse(session, settings_of(values)), values)

    quick = dict(queue=False, api_visibility="private")  # no engine: answered at once, even when many wait
    page.reuse.click(on_reuse, inputs, chat_out, **quick)

    unit = panel.units[0]

    def on_control(session):
        session = ensure(session)
        path = handlers.use_as_control(session)
        out = view(session)
        if path:
            out.update({unit.enabled: True, unit.image: path, panel.control_box: gr.Accordion(open=True)})
        return out

    page.control.click(on_control, page.state, [page.chatbot, page.state, page.gallery, page.selected_md,
                                                unit.enabled, unit.image, panel.control_box], **quick)

    def on_restore(values: dict):
        session = ensure(values[page.state])
        file = values[panel.restore_file]
        if not file:
            return view(session)
        return {**render(session, handlers.restore(studio, session, file, settings_of(values)), values),
                panel.restore_file: None}

    # the file box is an input of its own upload (else gradio shows it read-only and the handler never sees it)
    panel.restore_file.upload(on_restore, inputs | {panel.restore_file}, chat_out + [panel.restore_file], **quick)

    def on_gallery_select(session, evt: gr.SelectData):
        session = ensure(session)
        return {page.state: session, page.selected_md: handlers.select(session, evt.index)}

    page.gallery.select(on_gallery_select, page.state, selection_out, **quick)

    def on_chat_select(session, evt: gr.SelectData):
        session = ensure(session)
        return {page.state: session, page.selected_md: handlers.select_message(session, evt.index)}

    page.chatbot.select(on_chat_select, page.state, selection_out, **quick)
