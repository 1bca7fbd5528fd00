"""Serving the page: `serve(args, config)` is `python app.py`; `launch` is the one place with the server's safety
options; `parse_auth` reads --auth.

Whether users may name files and folders on the server is decided once, in app.py, as
`EngineConfig.local_paths`; the page reads it from `engine.config`.
"""

from __future__ import annotations

import importlib.util
import os

import gradio as gr

from engine.request import UserError
from ui.app import build
from ui.layout import CSS
from ui.studio import ModelStatus

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_FILE_SIZE = "20mb"


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """--auth USER:PASSWORD as gradio's (user, password); None when not given."""
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


def serve(args, config) -> int:
    """The chat on args.host:args.port (loopback by default) for an `EngineConfig`, the model loading in the
    background."""
    on_space = bool(os.environ.get("SPACE_ID"))
    has_spaces = importlib.util.find_spec("spaces") is not None
    if has_spaces:
        import spaces  # noqa: F401  (must come before torch touches CUDA on ZeroGPU)
    from engine.engine import Engine

    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0") if on_space else args.host
    auth = parse_auth(args.auth)
    engine = Engine(config)
    status = ModelStatus(args.model)
    if has_spaces and on_space:  # ZeroGPU: CUDA exists only inside spaces.GPU calls, so load on first use
        status.text, status.done = f"Model **{args.model}** loads with the first message.", True
    demo = build(engine, args.model, gpu=zero_gpu(engine) if has_spaces and on_space else None, status=status)
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
