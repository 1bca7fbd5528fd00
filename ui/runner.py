"""Running one generation for the chat: the studio's stream (studio/stream.py) drawn into the session's chat.

`run` appends to the session's chat and yields an `Update` at each redraw; the engine's `check_request` judges
the request (its `UserError` text is the chat's reply), so nothing here re-checks settings. No gradio, no torch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.engine import Cancelled
from engine.request import Note, Request, SettingsError, UserError
from studio.jobs import keep
from studio.line import Busy
from studio.quota import library_owner
from studio.service import Studio
from studio.stream import stream
from ui.marks import BUSY, NOTE, PROBLEM, STOPPED
from ui.state import Session, Settings, Shot

log = logging.getLogger(__name__)



@dataclass
class Update:
    """A point to redraw the chat at (ui/app.py sends what changed, if anything); the panel and message box only
    when these are set."""

    settings: Settings | None = None
    prompt: str | None = None
    status: str | None = None  # a new status line: how the turn's model did (None: leave it)
    model: str | None = None  # put the panel back on this model (the last that worked, after one that failed)
    status_back: bool = False  # the status line as it was before the turn (a Stop, a full line, bad settings)


def run(studio: Studio, session: Session, request: Request) -> Iterator[Update]:
    """Generate `request`, streaming its place in line and progress into the chat, then show the images and one
    settings line. Closing this generator (the browser gone, a cancelled event) stops the engine too."""
    session.cancel.clear()
    timing = studio.timing
    pending = session.say("assistant", "Starting…" + "".join(f"\n\n{NOTE} {n}" for n in warnings(studio, request)))
    # the user's message at once, however long the first step takes (a model loading); the status line says the
    # model is at work (it said "ready (it made the last image)" during a run)
    yield Update(status=f"**{request.model}** is working on your message…")
    started = time.perf_counter()
    previews: list[Path] = []
    result, error, redrawn, yielded = None, None, 0.0, time.perf_counter()
    steps = stream(studio, request, session.cancel, owner=session.owner)

    def progress(text: str) -> list[dict]:
        """The run's messages: its text, and the latest preview until a newer one or the image comes."""
        shown = [{"role": "assistant", "content": text}]
        return shown + [{"role": "assistant", "content": {"path": str(previews[-1])}}] if previews else shown

    try:
        while True:
            try:
                what, step, total, preview = next(steps)
            except StopIteration as done:
                result = done.value
                break
            now = time.perf_counter()
            if what == "waiting":
                soon = studio.usage.estimate(step) if getattr(studio, "usage", None) is not None else None
                about = f" (about {soon:.0f} s)" if soon is not None and soon >= 1 else ""
                text = (f"Waiting for the engine: {step} ahead of you{about} · Stop (■ in the message box) leaves "
                        "the line")
            elif step >= 0:
                text = f"Step {step}/{total} · {now - started:.1f}s · Stop (■ in the message box) cancels"
            else:  # loading, decoding: nothing new to show
                text = None
            # every redraw costs gradio a pass over the whole history (~1 ms an image, beside the sampling) and
            # the browser a render of it: the step counter once a run is first_redraw_s old, then every redraw_s;
            # a waiting place at once, then every place_redraw_s; else a yield with nothing new every
            # idle_yield_s, so a closed tab's event ends
            counter_waits = (what == "step" and (now - started < timing.first_redraw_s
                                                 or now - redrawn < timing.redraw_s)) or \
                (what == "waiting" and now - redrawn < timing.place_redraw_s)
            if text is None or (preview is None and (counter_waits or session.history[pending:] == progress(text))):
                if now - yielded >= timing.idle_yield_s:
                    yielded = now
                    yield Update()  # nothing new: ui/app.py sends nothing for it
                continue
            redrawn = yielded = now
            if preview is not None:
                path = session.workdir / f"preview-{len(previews)}.jpg"
                preview.save(path, quality=85)
                previews.append(path)
            session.history[pending:] = progress(text)
            yield Update()
    except Exception as e:  # Busy, Cancelled, a UserError, a failure: the chat says it
        error = e
    finally:
        steps.close()  # a no-op when it finished; else it stops the engine before the previews go
        for path in previews:
            path.unlink(missing_ok=True)
        if previews:  # closed mid-run (the tab gone): no broken preview image left in the chat
            shown = {str(path) for path in previews}
            session.history[:] = [m for m in session.history
                                  if not (isinstance(m["content"], dict) and m["content"].get("path") in shown)]
    del session.history[pending:]
    operator = studio.local_paths  # a chat on the app's own machine: its user runs the app
    back = None
    if error is None:
        show_result(session, result, studio.library, operator)
        session.good_model = request.model
    else:
        reply = error_message(error, operator)
        if model_fault(error) and session.good_model not in (None, request.model):
            back = session.good_model  # else every next message fails the same way until the user switches
            reply += (f"\n\nThe panel is back on **{back}**, the last model that worked here; pick "
                      f"**{request.model}** again once that is fixed.")
        session.say("assistant", reply)
    status = model_status(request.model, error, isinstance(error, SettingsError))
    if back is not None:
        status = f"{PROBLEM} **{request.model}** failed; back on **{back}**."
    yield Update(status=status, model=back, status_back=status is None)


def warnings(studio: Studio, request: Request) -> list:
    """What to say before a run starts, not after it: a size the model was not trained for (a 512x512 on the
    built-in model ran for minutes and gave noise). Nothing when the engine can't plan here (the run says why)."""
    plan = getattr(studio.engine, "plan", None)
    if plan is None:
        return []
    try:
        return [n for n in plan(request).notes if getattr(n, "kind", "") == "size"]
    except Exception:  # the run itself words any problem
        return []


def model_fault(error: BaseException | None) -> bool:
    """Did the model itself fail (missing, not loadable, out of memory, a crash), not the settings, a Stop or a
    full line?"""
    return error is not None and not isinstance(error, (SettingsError, Busy, Cancelled))


def model_status(model: str, error: BaseException | None, settings_fault: bool = False) -> str | None:
    """The status line after a turn on `model`: ready, or that it failed (so the line never says another model is
    ready while the picker shows this one); None after a Stop, a full line or refused settings (`settings_fault`:
    "--steps 999"), which say nothing about the model."""
    if error is None:
        return f"**{model}** ready (it made the last image)"
    if isinstance(error, (Busy, Cancelled)) or settings_fault:
        return None
    return f"{PROBLEM} **{model}** could not make the last message's image: the chat says why."


def show_result(session: Session, result, library=None, operator: bool = False) -> None:
    """Save each image as a PNG with its metadata into the session folder and add it to the chat; keep it in
    the library too (outputs/, studio/jobs.py), saying so when the disk refuses. `operator`: the chat's user runs
    the app, so notes carry the operator's advice too (a start flag)."""
    turn = dataclasses.replace(result.request)
    for i, seed in enumerate(result.seeds):
        number = len(session.shots) + 1
        own = result.image_request(i)
        path = session.workdir / f"studio-{number:04d}-seed{seed}.png"
        result.save_png(i, path)
        index = session.say("assistant", {"path": str(path), "alt_text": f"#{number}: {own.prompt}"})
        session.shots.append(Shot(number, str(path), own, turn, result.model_name, index))
        entry, refused = keep(library, result, i, "chat", conversation=session.conversation,
                              init_image=_init_image(result.request), owner=library_owner(session.owner))
        if entry is not None:
            session.kept[str(path)] = entry.path  # the kept file the chat's copy stands for
        if refused and refused not in result.notes:
            result.notes.append(refused)
    for cmap in result.control_maps:
        path = session.workdir / f"control-{len(session.shots):04d}-{id(cmap)}.png"
        cmap.save(path)
        session.say("assistant", {"path": str(path), "alt_text": "the control map the model was given"})
    numbers = ", ".join(f"#{s.number}" for s in session.shots[-len(result.images):])
    black = [s.number for s, image in zip(session.shots[-len(result.images):], result.images) if is_black(image)]
    if result.broken:
        black = []  # the engine saw the invalid values themselves and said so
    said = result.notes + ([black_note(black, result.request)] if black else [])
    notes = "".join(f"\n\n{NOTE} {note_text(n, operator)}" for n in said)
    beside = _sources(session, result.request)
    if result.control_maps:  # in the images' grid (ui/page.css), beside the image they shaped
        beside = f" · beside it: the control map{'s' if len(result.control_maps) > 1 else ''} the model was given"
    session.say("assistant", f"{numbers} · `{result.settings_line()}`{beside}{notes}")
    session.selected = None  # actions follow the newest image


def _sources(session: Session, request: Request) -> str:
    """" · from #3" (" · from #3 and #5": an edit of several) when the turn started from this chat's images."""
    paths = [request.init_image, *request.references] if request.init_image is not None else []
    numbers = {shot.path: shot.number for shot in session.shots}
    found = [f"#{numbers[p]}" for p in paths if isinstance(p, str) and p in numbers]
    return f" · from {' and '.join(found)}" if found else ""


def _init_image(request: Request):
    """The init image an edit started from, to keep beside its result (a path or an image in the request)."""
    if request.init_image is None:
        return None
    from engine.images.loading import load_image

    try:
        return load_image(request.init_image, "The init image")
    except UserError:
        return None


def is_black(image) -> bool:
    """Every pixel 0: what NaN or infinite values in the decoded output become in a PNG."""
    extrema = image.getextrema()
    return all(high == 0 for _, high in (extrema if isinstance(extrema[0], tuple) else [extrema]))


def black_note(numbers: list[int], request: Request) -> Note:
    """The note for all-black images, naming the likely causes."""
    which = ", ".join(f"#{n}" for n in numbers)
    loras = ", ".join(x.name for x in request.loras)
    causes = [f"a broken LoRA ({loras}: turn it off and try again)"] if loras else []
    causes += ["fp16 overflow", "a broken model file"]
    return Note(f"{which} came out entirely black: the model most likely produced NaN or infinite values. Usual "
                f"causes: {'; '.join(causes)}.", kind="black",
                operator="For fp16 overflow, start the app with --dtype bf16 or fp32.")


def note_text(note, operator: bool) -> str:
    """A note as the chat shows it: with the operator's advice only to the operator (logged for the others)."""
    if isinstance(note, Note) and note.operator:
        if operator:
            return note.for_operator()
        log.info("operator advice for a note: %s", note.operator)
    return str(note)


def error_message(error: BaseException, operator: bool = False) -> str:
    """The chat's reply to a failed run: a stop, busy, the engine's own `UserError` text (with the operator's advice
    when the chat's user runs the app), or a short apology."""
    if isinstance(error, Busy):
        return f"{BUSY} {error}"
    if isinstance(error, Cancelled):
        return f"{STOPPED} Nothing was saved; send the message again when you're ready."
    if isinstance(error, UserError):
        if error.operator and not operator:
            log.info("operator advice for a user's error: %s", error.operator)
        return f"{PROBLEM} {error.for_operator() if operator else error}"
    log.error("generation failed", exc_info=error)
    return (f"{PROBLEM} Something went wrong inside the app ({type(error).__name__}); the details are in the server "
            "log. Your conversation and settings are kept: try again, or change the model or settings.")
