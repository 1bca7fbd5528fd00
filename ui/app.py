"""The page: `build(engine, default_model)` lays out ui/layout.py's components and wires their events: the
chat's in ui/chat_events.py, lasting work's in ui/history_events.py, the side panel's in ui/panel_events.py, the
`/generate` endpoint's in ui/api.py. Launching (the server's safety options) is ui/serve.py; putting the page
beside the APIs is the composer's (serving.py).
"""

from __future__ import annotations

import logging

import gradio as gr

from engine.request import UserError
from studio.line import Line
from studio.quota import Quota
from studio.service import Studio, builtin_defaults, model_choices, panel_defaults
from studio.usage import Usage
from studio.work import MAX_WORK
from ui import api, handlers
from ui.chat_events import wire_chat
from ui.history_events import wire_history
from ui.layout import SESSION_TTL_S, TITLE, build_page
from ui.marks import PROBLEM
from ui.panel_events import wire_panel
from ui.state import Settings
from ui.status import ModelStatus

log = logging.getLogger(__name__)


def build(engine, default_model: str = "builtin", *, gpu=None, status: ModelStatus | None = None,
          max_queue: int = 16, session_ttl: float = SESSION_TTL_S, library=None, on_space: bool = False,
          max_work: float | None = MAX_WORK, max_per_user: int = 0, batch: int = 1, rate: int = 0,
          admins: tuple = (), quota: Quota | None = None, hf_login: bool = False) -> gr.Blocks:
    """The page for `engine`; users may name server paths as models when `engine.config.local_paths`; `on_space`:
    served on a Hugging Face Space (the chat's Share button works only there).

    At most `max_queue` generations wait for the engine (later ones are told the server is busy); a session
    idle for `session_ttl` seconds is closed and its files deleted; one request may ask for at most `max_work`
    megapixel-steps (studio/work.py; None: no cap); the line takes users in turn, each with at most `max_per_user`
    generations waiting (0: no cap), and keeps at most `quota` images of each (studio/quota.py)."""
    studio = Studio(engine, default_model, gpu, Line(max_queue, getattr(engine, "replicas", 1),
                                                     max_per_owner=max_per_user), library,
                    max_work=max_work, batch=max(1, batch), usage=Usage(rate=max(0, rate)),
                    admins=frozenset(f"user:{name}" for name in admins), quota=quota or Quota())
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
                          on_space=on_space, hf_login=hf_login)
        wire_chat(page, studio)
        wire_history(demo, page, studio)
        wire_panel(demo, page, studio, status)
        api.wire_api(studio)
    demo.studio = studio  # the engine, default model and line behind this page (benchmarks read the line)
    return demo
