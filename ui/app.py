"""The chat app: `build(engine, default_model)` lays out and wires the page; `serve(args)` launches it safely.

Handlers live in ui/handlers.py (plain Python, tested without a browser); this file only maps gradio
values to them and their updates back to components. Every event that runs the engine shares the
concurrency group "engine" (one at a time, one GPU); the queue is bounded; raw exceptions never reach
the page: handlers answer in the chat and log the traceback.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from engine.request import DEFAULTS, UserError, valid_schedulers
from ui import handlers, runner
from ui.panel import Panel
from ui.panel_events import wire_panel
from ui.runner import Studio, Update
from ui.state import Settings, close_session, ensure

log = logging.getLogger(__name__)

ENGINE_GROUP = "engine"
MAX_FILE_SIZE = "20mb"
TITLE = "Diffusion Studio"
# our images are named studio-*.png / preview-*.jpg: show small ones (the built-in model's 64x64) larger
CSS = ("#chat {flex-grow: 1} #chat img[src*='studio-'], #chat img[src*='preview-'] {min-width: 192px !important; "
       "height: auto !important; max-height: 512px !important; object-fit: contain}")


class ModelStatus:
    """The status line: the default model loading in the background, then ready or the error."""

    def __init__(self, model: str):
        self.model, self.text, self.done = model, f"⏳ Loading **{model}** in the background…", False

    def load(self, engine) -> None:
        started = time.perf_counter()
        try:
            engine.warm(self.model)  # under the engine's own lock: never beside a generation
            self.text = f"✅ **{self.model}** ready (loaded in {time.perf_counter() - started:.1f}s)"
        except UserError as e:
            self.text = f"⚠️ {e}"
        except Exception as e:
            log.exception("loading %s failed", self.model)
            self.text = f"⚠️ Loading {self.model} failed ({type(e).__name__}); see the server log. Pick another model."
        self.done = True

    def start(self, engine) -> None:
        threading.Thread(target=self.load, args=(engine,), name="load-model", daemon=True).start()


def build(engine, default_model: str = "builtin", *, local_paths: bool = True, gpu=None,
          status: ModelStatus | None = None) -> gr.Blocks:
    """The page for `engine`. `local_paths`: may users load models from server paths (off when shared)."""
    studio = Studio(engine, default_model, local_paths, gpu)
    start = Settings(model=default_model)
    try:
        defaults = runner.panel_defaults(studio, default_model)
        status_text = status.text if status else f"Model **{default_model}** loads on first use."
    except UserError as e:
        d = DEFAULTS["builtin"]
        defaults = {"family": "builtin", "steps": d.steps, "guidance": d.guidance, "width": d.size,
                    "height": d.size, "scheduler": d.scheduler, "schedulers": ["default"] + valid_schedulers("sd15")}
        status_text = f"⚠️ {e}"
    api_dir = Path(tempfile.mkdtemp(prefix="studio-api-"))

    with gr.Blocks(title=TITLE, fill_height=True, delete_cache=(3600, 3 * 3600)) as demo:
        state = gr.State(None, delete_callback=close_session)
        saved = gr.BrowserState(None, storage_key="studio-settings")
        with gr.Row(equal_height=True):
            gr.Markdown(f"## {TITLE}", elem_id="title")
            status_md = gr.Markdown(status_text, elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="chat", label="Chat", height=560, feedback_options=None,
                                     placeholder="**Describe an image and press Enter.** Add flags like "
                                                 "`--seed 42 --ar 3:2 --no text`; type `/help` for all of them.")
                box = gr.MultimodalTextbox(elem_id="prompt", show_label=False, file_types=["image"],
                                           file_count="multiple", stop_btn=True, max_plain_text_length=4000,
                                           placeholder="Describe an image… (/help for flags; drop a PNG here to "
                                                       "restore its settings)")
                selected_md = gr.Markdown(handlers.selected_label(None), elem_id="selected")
                with gr.Row():
                    reroll_btn = gr.Button("🎲 Reroll", elem_id="reroll", size="sm")
                    vary_btn = gr.Button("🌀 Vary", elem_id="vary", size="sm")
                    reuse_btn = gr.Button("♻️ Reuse settings", elem_id="reuse", size="sm")
                    control_btn = gr.Button("🎛️ Use as control", elem_id="use-control", size="sm")
                    stop_btn = gr.Button("■ Stop", elem_id="stop", size="sm", variant="stop")
                with gr.Row(equal_height=True):
                    refine = gr.Checkbox(label="Refine: the next message edits the selected image (or --refine S)",
                                         value=False, scale=3)
                    strength = gr.Slider(0.05, 1.0, step=0.05, value=0.5, label="Refine strength", scale=2)
                gallery = gr.Gallery(label="This session's images: click to select; ⬇ downloads the PNG with its "
                                           "settings", columns=8, fit_columns=False, object_fit="contain", height=200,
                                     allow_preview=True, elem_id="gallery",
                                     buttons=["download", "fullscreen"])
            with gr.Column(scale=1, min_width=320):
                panel = Panel(studio, start, defaults, local_paths)
        # hidden inputs/outputs of the named API endpoint (gradio_client: api_name="/generate")
        with gr.Column(visible=False):
            api_in = [gr.Textbox(label="prompt"), gr.Textbox(label="negative"), gr.Textbox(label="model"),
                      gr.Number(0, label="steps", precision=0), gr.Number(-1, label="guidance"),
                      gr.Number(-1, label="seed", precision=0), gr.Number(0, label="width", precision=0),
                      gr.Number(0, label="height", precision=0), gr.Number(1, label="count", precision=0),
                      gr.Textbox("default", label="scheduler")]
            api_out = gr.File(file_count="multiple", label="images")

        # ------------------------------------------------------------------------------------ helpers
        panel_out = panel.persisted() + [c for row in panel.plugins for c in (row.box, row.toggle, row.weight)]
        panel_out += [panel.plugin_names, panel.plugin_note]
        chat_out = [chatbot, state, gallery, selected_md, box, status_md, *panel_out]
        inputs = panel.settings_inputs() | {state, box, refine, strength}

        def settings_of(values: dict) -> Settings:
            settings = panel.read(values)
            settings.refine, settings.strength = bool(values[refine]), float(values[strength])
            return settings

        def view(session) -> dict:
            return {chatbot: session.history, state: session, gallery: session.gallery(),
                    selected_md: handlers.selected_label(session)}

        def render(session, update: Update, values: dict) -> dict:
            out = view(session)
            if update.settings is not None:
                out.update(panel.show(update.settings, values[panel.plugin_names]))
                if update.settings.model != values[panel.model]:
                    try:
                        out.update(panel.show_model(studio, update.settings.model, keep=update.settings))
                    except UserError as e:
                        out[status_md] = f"⚠️ {e}"
            if update.prompt is not None:
                out[box] = {"text": update.prompt, "files": []}
            return out

        def streamed(work):
            """Wrap a generating handler: each Update becomes a redraw; nothing escapes as a raw error."""
            def event(values: dict):
                session = ensure(values[state])
                yield {**view(session), box: gr.MultimodalTextbox(value=None)}
                try:
                    for update in work(session, values):
                        yield render(session, update, values)
                except Exception as e:
                    session.say("assistant", runner.error_message(e))
                    yield view(session)
                if status and status.done:
                    yield {status_md: status.text}
            return event

        def on_send(session, values):
            message = values[box] or {}
            return handlers.send(studio, session, message.get("text", ""), settings_of(values),
                                 message.get("files") or [])

        engine_event = dict(concurrency_id=ENGINE_GROUP, concurrency_limit=1, api_visibility="private")
        box.submit(streamed(on_send), inputs, chat_out, **engine_event)
        reroll_btn.click(streamed(lambda s, v: handlers.reroll(studio, s, settings_of(v))), inputs, chat_out,
                         **engine_event)
        vary_btn.click(streamed(lambda s, v: handlers.vary(studio, s, settings_of(v))), inputs, chat_out,
                       **engine_event)

        def on_stop(session):
            if session is not None:
                handlers.stop(session)

        for trigger in (stop_btn.click, box.stop):
            trigger(on_stop, state, None, queue=False, api_visibility="private")

        def on_reuse(values: dict):
            session = ensure(values[state])
            return render(session, handlers.reuse(session, settings_of(values)), values)

        reuse_btn.click(on_reuse, inputs, chat_out, api_visibility="private")

        def on_control(session):
            session = ensure(session)
            path = handlers.use_as_control(session)
            out = view(session)
            if path:
                unit = panel.units[0]
                out.update({unit.enabled: True, unit.image: path, panel.control_box: gr.Accordion(open=True)})
            return out

        unit0 = panel.units[0]
        control_btn.click(on_control, state, [chatbot, state, gallery, selected_md, unit0.enabled, unit0.image,
                                              panel.control_box], api_visibility="private")

        def on_restore(values: dict):
            session = ensure(values[state])
            file = values[panel.restore_file]
            if not file:
                return view(session)
            return {**render(session, handlers.restore(studio, session, file, settings_of(values)), values),
                    panel.restore_file: None}

        panel.restore_file.upload(on_restore, inputs, chat_out + [panel.restore_file], api_visibility="private")

        def on_gallery_select(session, evt: gr.SelectData):
            session = ensure(session)
            return {state: session, selected_md: handlers.select(session, evt.index)}

        gallery.select(on_gallery_select, state, [state, selected_md], api_visibility="private")

        def on_chat_select(session, evt: gr.SelectData):
            session = ensure(session)
            index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            session.select_message(int(index))
            return {state: session, selected_md: handlers.selected_label(session)}

        chatbot.select(on_chat_select, state, [state, selected_md], api_visibility="private")

        wire_panel(demo, panel, studio, state, saved, status_md, status)

        # ------------------------------------------------------------------------------------ the API
        def api(prompt, negative, model, steps, guidance, seed, width, height, count, scheduler):
            try:
                return runner.api_generate(studio, api_dir, prompt, negative, model, steps, guidance, seed, width,
                                             height, count, scheduler)
            except UserError as e:
                raise gr.Error(str(e)) from None
            except Exception as e:
                log.exception("API generate failed")
                raise gr.Error(f"Generation failed inside the app ({type(e).__name__}); see the server log.") from None

        gr.Button(visible=False).click(api, api_in, api_out, api_name="generate", concurrency_id=ENGINE_GROUP,
                                       concurrency_limit=1)
    return demo


# ---------------------------------------------------------------------------------------------- serving

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD, e.g. --auth alice:correct-horse-battery")
    return user, password


def zero_gpu(engine):
    """On a Hugging Face ZeroGPU Space, run each generation inside `spaces.GPU` (no live preview there)."""
    import spaces

    @spaces.GPU(duration=120)
    def generate_on_gpu(request):
        return engine.generate(request)

    return generate_on_gpu


def serve(args) -> int:
    """`python app.py`: the chat on args.host:args.port (loopback by default), model loading in the background."""
    import os

    on_space = bool(os.environ.get("SPACE_ID"))
    has_spaces = importlib.util.find_spec("spaces") is not None
    if has_spaces:
        import spaces  # noqa: F401  (must come before torch touches CUDA on ZeroGPU)
    from engine.engine import Engine

    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0") if on_space else args.host
    auth = parse_auth(args.auth)
    engine = Engine(device=args.device, dtype=args.dtype, offload=args.offload,
                    compile=getattr(args, "compile", "off"), channels_last=getattr(args, "channels_last", "auto"))
    status = ModelStatus(args.model)
    if has_spaces and on_space:  # ZeroGPU: CUDA exists only inside spaces.GPU calls, so load on first use
        status.text, status.done = f"Model **{args.model}** loads with the first message.", True
    demo = build(engine, args.model, local_paths=host in LOOPBACK and not args.share and not on_space,
                 gpu=zero_gpu(engine) if has_spaces and on_space else None, status=status)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
    if args.share and auth is None:
        print("WARNING: --share makes a public link that anyone who has it can use (and spend your GPU on). "
              "Add --auth USER:PASSWORD.", flush=True)
    if host not in LOOPBACK and auth is None and not on_space:
        print(f"WARNING: listening on {host}: anyone on your network can use the app. Add --auth USER:PASSWORD.",
              flush=True)
    launch(demo, host, int(os.environ.get("GRADIO_SERVER_PORT", args.port)) if on_space else args.port,
           share=args.share, auth=auth)
    if not status.done:
        status.start(engine)  # after the page is up, so loading never delays it
    if args.share:
        print(f"Public link: {demo.share_url}" if demo.share_url else "The share link could not be created.",
              flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False, auth: tuple[str, str] | None = None) -> None:
    """Start serving without blocking; the one place that sets the server's safety options."""
    # ssr_mode=False: gradio 6.27-6.31 has an auth bypass through server-side rendering.
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=MAX_FILE_SIZE,
                show_error=False, ssr_mode=False, css=CSS, prevent_thread_lock=True, quiet=False,
                footer_links=["api"])
