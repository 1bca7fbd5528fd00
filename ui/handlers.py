"""Chat handlers: plain functions from (session, settings, message) to chat updates. No gradio here.

Each generating handler is a generator: it appends to `session.history` and yields an `Update` whenever the
chat should be redrawn (progress, preview, result). The engine runs in a worker thread so progress can stream;
`session.cancel` stops it within a step. Every failure becomes a chat message: `UserError` text as it is,
anything else a short apology while the traceback goes to the log. The session stays usable either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL.PngImagePlugin import PngInfo

from engine import metadata
from engine.engine import Cancelled
from engine.request import DEFAULTS, Request, UserError, defaults_for, valid_schedulers
from ui import inline
from ui.state import Session, Settings, Shot

log = logging.getLogger(__name__)

HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PREVIEWS_PER_RUN = 4


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


# ------------------------------------------------------------------------------------------------ messages

def send(studio: Studio, session: Session, text: str, settings: Settings, files: list[str] | tuple = ()
         ) -> Iterator[Update]:
    """A chat message: dropped PNGs restore settings; text is a prompt (with inline flags) or /help."""
    for file in files or ():
        update = restore(studio, session, file, settings)
        settings = update.settings or settings
        yield update
    text = (text or "").strip()
    if not text:
        if not files:
            session.say("assistant", "Type what you'd like to see, e.g. *a red circle on a blue background*, "
                                     "then press Enter. Type /help for flags like `--seed 42 --ar 3:2`.")
            yield Update()
        return
    session.say("user", text)
    try:
        asked = inline.parse_message(text)
        if asked.command == "help":
            session.say("assistant", inline.help_text())
            yield Update()
            return
        request = build_request(studio, session, asked, settings)
    except UserError as e:
        session.say("assistant", f"⚠️ {e}")
        yield Update()
        return
    yield from run(studio, session, request)


def build_request(studio: Studio, session: Session, asked: inline.Inline, settings: Settings) -> Request:
    """The panel's settings with the message's inline overrides; refine makes it image-to-image."""
    check_model_allowed(studio, settings.model)
    request = settings.request(asked.prompt)
    for name, value in asked.overrides.items():
        setattr(request, name, value)
    if asked.negative:
        request.negative = ", ".join(x for x in (request.negative, asked.negative) if x)
    if asked.loras:
        chosen = {x.name for x in asked.loras}
        request.loras = [x for x in request.loras if x.name not in chosen] + asked.loras
    if asked.aspect:
        family, name = model_family(studio, request.model)
        d = defaults_for(family, name)
        request.width, request.height = inline.size_for_ratio(asked.aspect, d.size, d.multiple)
    if asked.refine is not None or settings.refine:
        shot = session.selected_shot()
        if shot is None:
            raise UserError("There is no image to refine yet. Send a prompt first, then refine its image "
                            "(--refine 0.5, or the Refine switch).")
        request.init_image = shot.path
        request.strength = asked.refine if asked.refine is not None else settings.strength
        if "width" not in asked.overrides and not asked.aspect:
            request.width, request.height = shot.request.width, shot.request.height
    return request


def reroll(studio: Studio, session: Session, settings: Settings) -> Iterator[Update]:
    """The selected image's turn again with new seeds."""
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", "Nothing to reroll yet: send a prompt first.")
        yield Update()
        return
    session.say("user", f"🎲 Reroll #{shot.number}")
    yield from run(studio, session, dataclasses.replace(shot.turn, seed=None))


def vary(studio: Studio, session: Session, settings: Settings) -> Iterator[Update]:
    """Close variations of the selected image: image-to-image from it at a low strength."""
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", "Nothing to vary yet: send a prompt first.")
        yield Update()
        return
    session.say("user", f"🌀 Vary #{shot.number} (strength {settings.vary_strength:g})")
    request = dataclasses.replace(shot.request, seed=None, init_image=shot.path, strength=settings.vary_strength,
                                  count=shot.turn.count)
    yield from run(studio, session, request)


def reuse(session: Session, settings: Settings) -> Update:
    """Load the selected image's settings into the panel and its prompt into the message box."""
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", "No image yet whose settings could be reused.")
        return Update()
    restored = Settings.from_request(shot.request, settings)
    session.say("assistant", f"♻️ Settings of #{shot.number} are in the panel (seed {shot.request.seed}) and its "
                             "prompt is in the message box: edit and press Enter.")
    return Update(settings=restored, prompt=shot.request.prompt)


def use_as_control(session: Session) -> str | None:
    """The selected image's path for ControlNet unit 1 (None when there is no image yet)."""
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", "No image yet to use as a control image.")
        return None
    session.say("assistant", f"🎛️ #{shot.number} is now the image of ControlNet unit 1 (turned on, type edge; "
                             "change type and preprocessor in the panel). Your next message uses it.")
    return shot.path


def select(session: Session, index: int) -> str:
    """Select image `index` (gallery order); returns the label shown above the action buttons."""
    if 0 <= index < len(session.shots):
        session.selected = index
    return selected_label(session)


def selected_label(session: Session | None) -> str:
    shot = session.selected_shot() if session is not None else None
    if shot is None:
        return "Actions apply to the selected image (none yet)."
    latest = " (latest)" if shot is session.shots[-1] else ""
    return f"Selected: **#{shot.number}**{latest} · seed {shot.request.seed} · click another image to change"


def restore(studio: Studio, session: Session, file: str, settings: Settings) -> Update:
    """Settings from a dropped PNG's metadata into the panel; a chat message says what came back."""
    name = Path(str(file)).name
    try:
        request, source = metadata.read_png_settings(file)
    except UserError as e:
        session.say("assistant", f"⚠️ {name}: {e}")
        return Update()
    except Exception:
        log.exception("reading settings from %s failed", name)
        session.say("assistant", f"⚠️ {name}: its settings could not be read. Is it a PNG made by this app or "
                                 "AUTOMATIC1111/SD.Next/Fooocus?")
        return Update()
    notes = []
    if request.model and request.model != settings.model:
        try:
            check_model_allowed(studio, request.model)
            model_family(studio, request.model)
        except UserError:
            notes.append(f"its model {request.model!r} isn't available here, so {settings.model!r} is kept")
            request = dataclasses.replace(request, model=settings.model)
    restored = Settings.from_request(request, settings)
    loras = ", ".join(f"{x.name} {x.weight:g}" for x in request.loras)
    parts = [f"{restored.width}x{restored.height}" if restored.width else "",
             f"{restored.steps} steps" if restored.steps else "",
             f"cfg {restored.guidance:g}" if restored.guidance is not None else "",
             f"seed {restored.seed}" if restored.seed >= 0 else "random seed",
             restored.scheduler, f"LoRAs {loras}" if loras else ""]
    session.say("user", {"path": str(file), "alt_text": f"dropped {name}"})
    session.say("assistant", f"📥 Restored from {source}: {' · '.join(p for p in parts if p)}. The prompt is in "
                             f"the message box; press Enter to make it again."
                             + (f" Note: {'; '.join(notes)}." if notes else ""))
    return Update(settings=restored, prompt=request.prompt)


def stop(session: Session) -> None:
    session.cancel.set()


# --------------------------------------------------------------------------------------------- running

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
    for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
        number = len(session.shots) + 1
        own = dataclasses.replace(result.request, seed=seed, count=1)
        path = session.workdir / f"studio-{number:04d}-seed{seed}.png"
        save_png(image, path, own, seed, result.model_name, result.infotexts[i] if i < len(result.infotexts) else "")
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


def save_png(image, path: Path, request: Request, seed: int, model_name: str, infotext: str) -> None:
    """The PNG with the engine's own infotext (it knows LoRA hashes and control details) and our JSON chunk."""
    if not infotext:
        metadata.save_png(image, path, request, seed, model_name)
        return
    info = PngInfo()
    info.add_text(metadata.PARAMETERS_KEY, infotext)
    info.add_text(metadata.STUDIO_KEY, json.dumps(metadata.studio_json(request, seed, model_name)))
    image.save(path, format="PNG", pnginfo=info)


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
    paths = []
    for i, (image, s) in enumerate(zip(result.images, result.seeds)):
        path = folder / f"studio-{time.strftime('%Y%m%d-%H%M%S')}-{i}-seed{s}.png"
        own = dataclasses.replace(result.request, seed=s, count=1)
        save_png(image, path, own, s, result.model_name, result.infotexts[i] if i < len(result.infotexts) else "")
        paths.append(str(path))
    return paths
