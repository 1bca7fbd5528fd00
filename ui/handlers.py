"""Chat handlers: plain functions from (session, settings, message) to chat updates. No gradio here.

Each generating handler returns an iterator: it appends to `session.history` and yields an `Update` whenever the
chat should be redrawn (progress, preview, result); ui/runner.py runs the engine. The others return plain
values (an `Update`, a label, a path) that ui/app.py puts into components. Every failure becomes a chat
message: `UserError` text as it is, anything else a short apology while the traceback goes to the log. The
session, its history and the loaded model stay usable either way.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from pathlib import Path
from typing import Iterator

from engine.images import metadata
from engine.request import ImagePrompt, Request, UserError
from studio.quota import forget_oldest
from studio.requests import leave_to_engine
from studio.service import Studio, model_family, panel_defaults, prompt_texts
from ui import inline
from ui.marks import PROBLEM
from ui.runner import Update, run
from ui.state import MAX_MESSAGE, Session, Settings

log = logging.getLogger(__name__)
ANGLE_TAG = re.compile(r"(?<!`)<[^<>`\n]{1,200}>(?!`)")  # <lora:pastel:0.8>: HTML to the chat's sanitiser


def as_shown(text: str) -> str:
    """The user's message as the chat shows it: `<...>` tags as code, or the Markdown sanitiser drops them."""
    return ANGLE_TAG.sub(lambda m: f"`{m.group(0)}`", text)


# ------------------------------------------------------------------------------------------------ messages

def too_long(session: Session, text: str) -> Update:
    """A message past MAX_MESSAGE characters (a client that isn't the page: its box stops there) is refused, and
    only its start is kept in the chat: a 9 MB message stored whole slowed every page load."""
    session.say("user", as_shown(text[:200]) + f"… ({len(text):,} characters)")
    session.say("assistant", f"{PROBLEM} This message is {len(text):,} characters long; a message has at most "
                             f"{MAX_MESSAGE:,}. Shorten it (a prompt rarely needs more than a few hundred).")
    return Update()


def send(studio: Studio, session: Session, text: str, settings: Settings, files: list[str] | tuple = ()
         ) -> Iterator[Update]:
    """A chat message: dropped PNGs restore settings; text is a prompt (with inline flags) or /help."""
    for file in files or ():
        update = restore(studio, session, file, settings)
        settings = update.settings or settings
        yield update
    text = (text or "").strip()
    if len(text) > MAX_MESSAGE:
        yield too_long(session, text)
        return
    if not text:
        if not files:
            session.say("assistant", "Type what you'd like to see, e.g. *a red circle on a blue background*, "
                                     "then press Enter. Type /help for flags like `--seed 42 --ar 3:2`.")
            yield Update()
        return
    session.say("user", as_shown(text))
    try:
        asked = inline.parse_message(text)
        if asked.command == "help":
            session.say("assistant", inline.help_text(*prompt_texts(studio)))
            yield Update()
            return
        if asked.command in ("line", "stop-all"):
            session.say("assistant", admin_command(studio, session, asked.command))
            yield Update()
            return
        if asked.command == "forget-oldest":
            session.say("assistant", forget_oldest(studio.library, session.owner, int(asked.prompt)))
            yield Update()
            return
        if asked.command == "save-style":
            session.say("assistant", save_style(studio, session, asked.prompt))
            yield Update()
            return
        request = build_request(studio, session, asked, settings)
        if asked.xyz:  # one seed for every cell, so they differ only along the axes
            from studio.grid import cells

            plot = cells(dataclasses.replace(request, seed=request.seed if request.seed is not None
                                             else random.randrange(2**32)), asked.xyz)
    except UserError as e:
        session.say("assistant", f"{PROBLEM} {e}")
        yield Update()
        return
    if asked.xyz:
        from ui.plot import run_plot

        yield from run_plot(studio, session, plot, asked.xyz)
        return
    yield from run(studio, session, request)


def build_request(studio: Studio, session: Session, asked: inline.Inline, settings: Settings) -> Request:
    """The panel's settings with the message's inline overrides; refine makes it image-to-image, and so does any
    message to an editing model once the chat has an image (it edits the selected one; --images picks several,
    --new draws anew). A message of flags only ("--seed 5", "--refine") applies them to the selected image's
    prompt."""
    prompt = asked.prompt
    if not prompt:
        shot = session.selected_shot()
        if shot is None:
            raise UserError("This message has only flags and no prompt. Write what to draw before them, e.g. "
                            "'a big red circle on the left --cfg 3'; after a first image, flags alone re-use its "
                            "prompt.")
        prompt = shot.request.prompt
    request = settings.request(prompt)
    for name, value in asked.overrides.items():
        setattr(request, name, value)
    if asked.negative:
        request.negative = ", ".join(x for x in (request.negative, asked.negative) if x)
    if asked.styles:
        request.styles = list(request.styles) + asked.styles
    for name in asked.srefs:
        path = studio.library.style_ref(session.browser, name) if studio.library is not None else None
        if path is None:
            have = ", ".join(studio.library.style_refs(session.browser)) if studio.library is not None else ""
            raise UserError(f"There is no style reference {name!r}. Save one with /save-style {name} on a selected "
                            f"image. Yours: {have or 'none yet'}.")
        request.image_prompts = list(request.image_prompts) + [ImagePrompt(path)]
    if asked.loras:
        chosen = {x.name for x in asked.loras}
        request.loras = [x for x in request.loras if x.name not in chosen] + asked.loras
    if asked.aspect:
        d = panel_defaults(studio, request.model)
        request.width, request.height = inline.size_for_ratio(asked.aspect, d["width"], d["multiple"])
    try:
        shown = panel_defaults(studio, request.model)
    except UserError:  # the model itself can't be used: the run says so, and the status line with it
        shown = None
    edits = shown["edit_images"] if shown else 0
    if asked.images:
        _edit_these(session, request, asked, shown)
    elif asked.refine is not None or settings.refine or (edits and not asked.new and session.shots):
        shot = session.selected_shot()
        if shot is None:
            raise UserError("There is no image to refine yet. Send a prompt first, then refine its image "
                            "(--refine 0.5, or the Refine switch).")
        request.init_image = shot.path
        request.strength = asked.refine if asked.refine is not None else settings.strength
        if "width" not in asked.overrides and not asked.aspect:
            request.width, request.height = shot.request.width, shot.request.height
    elif shown and not shown["text_to_image"]:
        raise UserError(f"{request.model} edits images and draws none from text alone. Make an image first (with "
                        "another model, or send one from the Library), select it, then write the change, e.g. "
                        "'make the sky purple'.")
    # the panel shows the model's defaults: where they are as shown and the message did not set them, they are
    # left to the engine (a LoRA plugin's own sampling, else the model's), as every door leaves them
    if shown is None:
        return request
    return leave_to_engine(request, shown, typed=set(asked.overrides))


def _edit_these(session: Session, request: Request, asked: inline.Inline, shown: dict | None) -> None:
    """--images 2,5: an editing model edits chat images #2 and #5 together (image 1 and image 2)."""
    by_number = {shot.number: shot for shot in session.shots}
    missing = [n for n in asked.images if n not in by_number]
    if missing:
        have = f"#1 to #{len(session.shots)}" if session.shots else "none yet"
        raise UserError(f"--images: this chat has no image #{missing[0]} (it has {have}).")
    most = shown["edit_images"] if shown else 0
    if not most:
        raise UserError(f"--images is for editing models (Qwen-Image-Edit, FLUX.2, Kontext); {request.model} is not "
                        "one. Pick one in the panel, or refine one image with --refine.")
    shots = [by_number[n] for n in asked.images]
    request.init_image, request.references = shots[0].path, [shot.path for shot in shots[1:]]
    if "width" not in asked.overrides and not asked.aspect:
        request.width, request.height = shots[0].request.width, shots[0].request.height


def reroll(studio: Studio, session: Session, settings: Settings) -> Iterator[Update]:
    """The selected image's turn again with new seeds."""
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "Nothing to reroll yet: send a prompt first.")
    session.say("user", f"Reroll #{shot.number}")
    return run(studio, session, dataclasses.replace(shot.turn, seed=None))


def vary(studio: Studio, session: Session, settings: Settings) -> Iterator[Update]:
    """Close variations of the selected image: image-to-image from it at a low strength."""
    shot = session.selected_shot()
    if shot is None:
        return nothing_yet(session, "Nothing to vary yet: send a prompt first.")
    session.say("user", f"Vary #{shot.number} (strength {settings.vary_strength:g})")
    return run(studio, session, dataclasses.replace(shot.request, seed=None, init_image=shot.path,
                                                    strength=settings.vary_strength, count=shot.turn.count))


def nothing_yet(session: Session, reply: str) -> Iterator[Update]:
    """An action on the selected image before there is one: the reply, and one redraw."""
    session.say("assistant", reply)
    return iter([Update()])


def reuse(session: Session, settings: Settings) -> Update:
    """Load the selected image's settings into the panel and its prompt into the message box."""
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", "No image yet whose settings could be reused.")
        return Update()
    restored = Settings.from_request(shot.request, settings)
    session.say("assistant", f"Settings of #{shot.number} are in the panel (seed {shot.request.seed}) and its "
                             "prompt is in the message box: edit and press Enter.")
    return Update(settings=restored, prompt=shot.request.prompt)


def admin_command(studio: Studio, session: Session, command: str) -> str:
    """/line (who waits, how many each; no prompts) and /stop-all, for the server's admins (--admin NAME)."""
    if not session.user or f"user:{session.user}" not in studio.admins:
        return f"{PROBLEM} /{command} is for the server's admin (started with --admin NAME, signed in as NAME)."
    if command == "stop-all":
        return f"Stopped {studio.stop_all()} generation(s), waiting or running, through every door."
    waiting = studio.line.owners_waiting()
    if not waiting:
        return "Nobody is waiting for the engine."
    rows = "\n".join(f"| {owner} | {n} |" for owner, n in sorted(waiting.items(), key=lambda x: -x[1]))
    return f"{sum(waiting.values())} waiting for the engine:\n\n| who | waiting |\n|---|---|\n{rows}"


def save_style(studio: Studio, session: Session, name: str) -> str:
    """/save-style NAME: the selected image kept as a style reference of this browser's, for --sref NAME."""
    shot = session.selected_shot()
    if shot is None:
        return "No image yet to save as a style: make one first, select it, then /save-style NAME."
    if studio.library is None or not studio.library.enabled:
        return "Nothing is kept on this server (--outputs none), so style references can't be saved here."
    try:
        studio.library.save_style_ref(session.browser, name, shot.path)
    except (ValueError, OSError) as e:
        return f"{PROBLEM} {e}"
    return (f"Saved #{shot.number} as the style reference **{name}**: add `--sref {name}` to a message, in this chat "
            "or a later one, to use it as the image prompt.")


def use_as_image_prompt(session: Session) -> str | None:
    """The selected image's path for the panel's image prompt (None when there is no image yet)."""
    return _use_selected(session, "an image prompt", "is now the image prompt (in the panel, with its scale). Your "
                         "next messages follow its look (the built-in model: its colour and shape); say the rest, "
                         "e.g. 'a small one at the top, white background'. Clear it in the panel to stop.")


def use_as_control(session: Session) -> str | None:
    """The selected image's path for ControlNet unit 1 (None when there is no image yet)."""
    return _use_selected(session, "a control image", "is now the image of ControlNet unit 1 (turned on, type "
                         "edge; change type and preprocessor in the panel). Your next message uses it.")


def _use_selected(session: Session, what: str, said: str) -> str | None:
    shot = session.selected_shot()
    if shot is None:
        session.say("assistant", f"No image yet to use as {what}.")
        return None
    session.say("assistant", f"#{shot.number} {said}")
    return shot.path


def select(session: Session, index: int) -> str:
    """Select image `index` (gallery order); returns the label shown above the action buttons."""
    if 0 <= index < len(session.shots):
        session.selected = index
    return selected_label(session)


def select_message(session: Session, index) -> str:
    """Select the image of the clicked chat message (gradio gives its index, or [index, ...]); the label."""
    index = index[0] if isinstance(index, (list, tuple)) else index
    session.select_message(int(index))
    return selected_label(session)


def selected_label(session: Session | None) -> str:
    """The line above the action buttons: which image they act on."""
    shot = session.selected_shot() if session is not None else None
    if shot is None:
        return "Actions apply to the selected image (none yet)."
    latest = " (latest)" if shot is session.shots[-1] else ""
    return f"Selected: **#{shot.number}**{latest} · seed {shot.request.seed}"


def restore(studio: Studio, session: Session, file: str, settings: Settings) -> Update:
    """Settings from a dropped PNG's metadata into the panel; a chat message says what came back."""
    name = Path(str(file)).name
    try:
        request, source = metadata.read_png_settings(file)
    except UserError as e:
        session.say("assistant", f"{PROBLEM} {name}: {e}")
        return Update()
    except Exception:
        log.exception("reading settings from %s failed", name)
        session.say("assistant", f"{PROBLEM} {name}: its settings could not be read. Is it a PNG made by this app or "
                                 "AUTOMATIC1111/SD.Next/Fooocus?")
        return Update()
    notes = []
    if request.model and request.model != settings.model:
        try:
            model_family(studio, request.model)  # can it be used here at all?
        except UserError:
            notes.append(f"its model {request.model!r} isn't available here, so {settings.model!r} is kept")
            request = dataclasses.replace(request, model=settings.model)
    restored = Settings.from_request(request, settings)
    try:
        d = panel_defaults(studio, restored.model)
        if restored.scheduler != "default" and restored.scheduler not in d["schedulers"]:
            notes.append(f"its scheduler {restored.scheduler} doesn't fit {d['label']} models, so the default is "
                         "used")
            restored.scheduler = "default"
        size = fitted_size(restored.width, restored.height, d)
        if size != (restored.width, restored.height):
            notes.append(f"its size {restored.width}x{restored.height} is outside what this {d['label']} model "
                         f"draws well, so {size[0]}x{size[1]} (the same shape) is used")
            restored.width, restored.height = size
    except UserError:
        pass
    loras = ", ".join(f"{x.name} {x.weight:g}" for x in request.loras)
    parts = [f"{restored.width}x{restored.height}" if restored.width else "",
             f"{restored.steps} steps" if restored.steps else "",
             f"cfg {restored.guidance:g}" if restored.guidance is not None else "",
             f"seed {restored.seed}" if restored.seed >= 0 else "random seed",
             restored.scheduler, f"LoRAs {loras}" if loras else ""]
    session.say("user", {"path": str(file), "alt_text": f"dropped {name}"})
    session.say("assistant", f"Restored from {source}: {' · '.join(p for p in parts if p)}. The prompt is in "
                             f"the message box; press Enter to make it again."
                             + (f" Note: {'; '.join(notes)}." if notes else ""))
    return Update(settings=restored, prompt=request.prompt)


def fitted_size(width: int | None, height: int | None, defaults: dict) -> tuple:
    """A restored size mapped onto what the model draws well (its trained sides, else its limits), keeping the
    shape: the shorter side at the model's native size, the longer within range. (512x512 from an SD1.5 PNG ran
    for minutes on the built-in model and gave noise.)"""
    if not width or not height:
        return width, height
    multiple, native = defaults["multiple"], defaults["width"]
    low, high = defaults.get("trained_sides") or (multiple, defaults["max_size"])
    if low <= min(width, height) and max(width, height) <= high:
        return width, height
    scale = min(native / min(width, height), high / max(width, height))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))


def last_seed(session: Session | None) -> int | None:
    """The selected image's seed, for the panel's "Last image's" seed button (None when there is no image yet)."""
    shot = session.selected_shot() if session is not None else None
    return shot.request.seed if shot else None


def stop(session: Session | None) -> None:
    """Stop (the message box's button): the running generation of this session ends at its next step."""
    if session is not None:
        session.cancel.set()


def clear(session: Session) -> None:
    """The chat's Clear (its trash icon): empty the chat, the gallery and the selection, not only the view."""
    session.history.clear()
    session.shots.clear()
    session.kept.clear()
    session.selected = None
