"""Running a generation for the chat: the engine in a worker thread, progress and previews streamed into the
session's history, results saved as PNGs with metadata. Also the shared `Studio` (engine + serving policy),
the model checks every handler uses, and the named API endpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.engine import Cancelled
from engine.request import DEFAULTS, Request, UserError, valid_schedulers
from ui.state import Session, Settings, Shot

log = logging.getLogger(__name__)

HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PREVIEWS_PER_RUN = 4
API_FILES_TTL_S = 3600


@dataclass
class Studio:
    """What all sessions share: the one engine, the server's default model and its serving policy."""

    engine: Any  # engine.engine.Engine
    default_model: str = "builtin"
    local_paths: bool = True  # may users name files and folders on the server as models?
    gpu: Callable[[Request], Any] | None = None  # ZeroGPU: request -> Result, run in a GPU worker (no live preview)


@dataclass
class Update:
    """One redraw: the chat always; the panel and message box only when these are set."""

    settings: Settings | None = None
    prompt: str | None = None


# --------------------------------------------------------------------------------------------- running

def run(studio: Studio, session: Session, request: Request) -> Iterator[Update]:
    """Generate `request`, streaming progress into the chat, then show the images and one settings line."""
    session.cancel.clear()
    if request.init_image is not None and request.steps and int(request.steps * request.strength) < 1:
        session.say("assistant", f"⚠️ Image-to-image runs steps × strength = {request.steps} × {request.strength:g} "
                                 f"steps, which is less than one. Use at least {int(1 / request.strength) + 1} "
                                 "steps or a higher strength.")
        yield Update()
        return
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
            if studio.gpu is not None:
                outcome["result"] = studio.gpu(request)
            else:
                outcome["result"] = studio.engine.generate(request, progress=progress, cancel=session.cancel)
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
    if isinstance(error, Cancelled):
        return "⏹️ Stopped. Nothing was saved; send the message again when you're ready."
    if isinstance(error, UserError):
        return f"⚠️ {error}"
    log.error("generation failed", exc_info=error)
    return (f"⚠️ Something went wrong inside the app ({type(error).__name__}); the details are in the server "
            "log. Your conversation and settings are kept: try again, or change the model or settings.")


# ---------------------------------------------------------------------------------------------- models

def check_model_allowed(studio: Studio, model: str) -> None:
    """On a shared server, users may pick known and Hub models, not files on the server's disk."""
    if studio.local_paths or model in (studio.default_model, "builtin"):
        return
    if not HUB_ID_RE.fullmatch(model or "") or Path(model).exists():
        raise UserError(f"{model!r} looks like a file or folder on the server; on this shared server only the "
                        "listed models and Hugging Face Hub ids (owner/name) can be used. The operator can start "
                        "the app with --model PATH.")


def model_family(studio: Studio, model: str) -> tuple[str, str]:
    """(family, name) of a model without loading it; UserError when it can't be used."""
    d = studio.engine.defaults(model)
    return d["family"], model


def panel_defaults(studio: Studio, model: str) -> dict:
    """Steps, guidance, size and scheduler for a model family, plus the scheduler choices, for the panel."""
    check_model_allowed(studio, model)
    d = dict(studio.engine.defaults(model))
    d["schedulers"] = ["default"] + valid_schedulers(d["family"])
    d["multiple"] = DEFAULTS[d["family"]].multiple
    return d


# ------------------------------------------------------------------------------------------------- API

def api_generate(studio: Studio, folder: Path, prompt: str, negative: str = "", model: str = "", steps: int = 0,
                 guidance: float = -1, seed: int = -1, width: int = 0, height: int = 0, count: int = 1,
                 scheduler: str = "default") -> list[str]:
    """The named `generate` endpoint: PNG paths (with metadata). 0 / -1 / "" mean the model's default."""
    model = (model or "").strip() or studio.default_model
    check_model_allowed(studio, model)
    request = Request(prompt=prompt or "", negative=negative or "", model=model,
                      steps=int(steps) if steps and steps > 0 else None,
                      guidance=float(guidance) if guidance is not None and guidance >= 0 else None,
                      seed=int(seed) if seed is not None and seed >= 0 else None,
                      width=int(width) if width else None, height=int(height) if height else None,
                      scheduler=None if scheduler in (None, "", "default") else scheduler, count=int(count or 1))
    result = studio.gpu(request) if studio.gpu is not None else studio.engine.generate(request)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("studio-*.png"):  # gradio has served (copied) them long since
        if time.time() - old.stat().st_mtime > API_FILES_TTL_S:
            old.unlink(missing_ok=True)
    paths = []
    for i, s in enumerate(result.seeds):
        path = folder / f"studio-{time.strftime('%Y%m%d-%H%M%S')}-{i}-seed{s}.png"
        result.save_png(i, path)
        paths.append(str(path))
    return paths
