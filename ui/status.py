"""The page's status line: the default model loading in the background, then ready or the error. No gradio."""

from __future__ import annotations

import logging
import threading
import time

from engine.request import UserError
from ui.marks import PROBLEM

log = logging.getLogger(__name__)


class ModelStatus:
    """The status line: the default model loading in the background, then ready or the error."""

    def __init__(self, model: str):
        self.model, self.text, self.done = model, f"Loading **{model}** in the background…", False

    def load(self, engine) -> None:
        started = time.perf_counter()
        try:
            engine.warm(self.model)  # under the engine's own lock: never beside a generation
            self.text = f"**{self.model}** ready (loaded in {time.perf_counter() - started:.1f}s)"
        except UserError as e:
            self.text = f"{PROBLEM} {e}"
        except Exception as e:
            log.exception("loading %s failed", self.model)
            self.text = (f"{PROBLEM} Loading {self.model} failed ({type(e).__name__}); see the server log. Pick "
                         "another model.")
        self.done = True

    def start(self, engine) -> None:
        threading.Thread(target=self.load, args=(engine,), name="load-model", daemon=True).start()
