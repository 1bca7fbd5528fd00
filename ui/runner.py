"""Running one generation for the chat: the engine in a worker thread, progress and previews streamed in.

`run` appends to the session's chat and yields an `Update` at each redraw; the engine's `check_request` judges
the request (its `UserError` text is the chat's reply), so nothing here re-checks settings. No gradio, no torch.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from engine.engine import Cancelled
from engine.request import Request, UserError
from ui.state import Session, Settings, Shot
from ui.studio import Studio

log = logging.getLogger(__name__)

ENGINE_GROUP = "engine"  # the gradio concurrency group of every event that runs the engine (one GPU: one at a time)
PREVIEWS_PER_RUN = 4


@dataclass
class Update:
    """One redraw: the chat always; the panel and message box only when these are set."""

    settings: Settings | None = None
    prompt: str | None = None


def generate(studio: Studio, request: Request, **live):
    """The engine's Result for `request`: in the ZeroGPU worker when there is one (no live preview there)."""
    if studio.gpu is not None:
        return studio.gpu(request)
    return studio.engine.generate(request, **live)


def run(studio: Studio, session: Session, request: Request) -> Iterator[Update]:
    """Generate `request`, streaming progress into the chat, then show the images and one settings line."""
    session.cancel.clear()
    pending = session.say("assistant", "⏳ Starting…")
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def progress(step: int, total: int, latents) -> None:
        every = max(1, total // PREVIEWS_PER_RUN)
        preview = None
        if step < total and step % every == 0:
            try:
                preview = studio.engine.preview(request.model, latents)
            except Exception:  # a preview is a nicety; never fail the generation for it
                log.debug("preview failed", exc_info=True)
        events.put((step, total, preview))

    def work() -> None:
        try:
            outcome["result"] = generate(studio, request, progress=progress, cancel=session.cancel)
        except BaseException as e:  # handed to the chat thread, which decides what the user sees
            outcome["error"] = e
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="generate", daemon=True)
    started = time.perf_counter()
    worker.start()
    previews: list[Path] = []
    try:
        while (item := events.get()) is not None:
            step, total, preview = item
            text = f"⏳ Step {step}/{total} · {time.perf_counter() - started:.1f}s · press ■ Stop to cancel"
            if preview is not None:
                path = session.workdir / f"preview-{len(previews)}.jpg"
                preview.save(path, quality=85)
                previews.append(path)
                session.history[pending:] = [{"role": "assistant", "content": text},
                                             {"role": "assistant", "content": {"path": str(path)}}]
            else:
                session.history[pending]["content"] = text
            yield Update()
    finally:
        if worker.is_alive():  # the browser went away mid-run: stop the engine too
            session.cancel.set()
            worker.join()
        for path in previews:
            path.unlink(missing_ok=True)
    del session.history[pending:]
    error = outcome.get("error")
    if error is None:
        show_result(session, outcome["result"])
    else:
        session.say("assistant", error_message(error))
        if not isinstance(error, Exception):
            raise error
    yield Update()


def show_result(session: Session, result) -> None:
    """Save each image as a PNG with its metadata into the session folder and add it to the chat."""
    turn = dataclasses.replace(result.request)
    for i, seed in enumerate(result.seeds):
        number = len(session.shots) + 1
        own = result.image_request(i)
        path = session.workdir / f"studio-{number:04d}-seed{seed}.png"
        result.save_png(i, path)
        index = session.say("assistant", {"path": str(path), "alt_text": f"#{number}: {own.prompt}"})
        session.shots.append(Shot(number, str(path), own, turn, result.model_name, index))
    for cmap in result.control_maps:
        path = session.workdir / f"control-{len(session.shots):04d}-{id(cmap)}.png"
        cmap.save(path)
        session.say("assistant", {"path": str(path), "alt_text": "the control map the model was given"})
    numbers = ", ".join(f"#{s.number}" for s in session.shots[-len(result.images):])
    notes = "".join(f"\n\nℹ️ {n}" for n in result.notes)
    session.say("assistant", f"{numbers} · `{result.settings_line()}`{notes}")
    session.selected = None  # actions follow the newest image


def error_message(error: BaseException) -> str:
    """The chat's reply to a failed run: a stop, the engine's own `UserError` text, or a short apology."""
    if isinstance(error, Cancelled):
        return "⏹️ Stopped. Nothing was saved; send the message again when you're ready."
    if isinstance(error, UserError):
        return f"⚠️ {error}"
    log.error("generation failed", exc_info=error)
    return (f"⚠️ Something went wrong inside the app ({type(error).__name__}); the details are in the server "
            "log. Your conversation and settings are kept: try again, or change the model or settings.")
