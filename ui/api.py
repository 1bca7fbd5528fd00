"""The named API endpoint `/generate` for gradio_client and scripts: plain values in, PNG files out.

    Client(url).predict("a red fox", "", "", 0, -1, 42, 0, 0, 1, "default", api_name="/generate")

The values are the panel's own (0 / -1 / "" / "default" mean the model's default), so they become a
`Request` through the same `studio.requests.make_request` as a chat message, and the engine's checks word every
error.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import gradio as gr

from engine.request import UserError
from engine.result import Cancelled
from studio.files import LinkedFiles
from studio.jobs import keep_all
from studio.quota import library_owner
from studio.requests import make_request
from studio.service import Studio
from studio.stream import stream

log = logging.getLogger(__name__)


def generate(studio: Studio, folder: Path, prompt: str, *args, **kwargs) -> list[str]:
    """The endpoint's work in one call (scripts, tests): PNG paths with metadata in `folder`."""
    work = generate_steps(studio, folder, prompt, *args, **kwargs)
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value


def generate_steps(studio: Studio, folder: Path, prompt: str, negative: str = "", model: str = "", steps: int = 0,
                   guidance: float = -1, seed: int = -1, width: int = 0, height: int = 0, count: int = 1,
                   scheduler: str = "default", cancel: threading.Event | None = None,
                   owner: str | None = None) -> Iterator[None]:
    """The endpoint's work, as a generator that yields while it waits or samples and returns the PNG paths
    (with metadata) in `folder`. Closing it (the client cancelled or went away) stops the engine within a step
    and writes nothing. Files older than an hour are removed; each image is kept in the library like the chat's."""
    request = make_request(prompt or "", (model or "").strip() or studio.default_model, form=True,
                           negative=negative, steps=steps, guidance=guidance, seed=seed, width=width, height=height,
                           count=count, scheduler=scheduler)
    result = yield from stream(studio, request, cancel or threading.Event(), previews=False, owner=owner)
    files = LinkedFiles(folder=folder)
    paths = [str(files.save(result, i)) for i in range(len(result.images))]
    keep_all(studio.library, result, "api", owner=library_owner(owner))
    return paths


def wire_api(studio: Studio) -> Path:
    """Add the hidden inputs, output and the `/generate` event (call inside the gr.Blocks context); returns the
    folder the endpoint writes its PNGs to."""
    folder = Path(tempfile.mkdtemp(prefix="studio-api-"))
    with gr.Column(visible=False):
        inputs = [gr.Textbox(label="prompt"), gr.Textbox(label="negative"), gr.Textbox(label="model"),
                  gr.Number(0, label="steps", precision=0), gr.Number(-1, label="guidance"),
                  gr.Number(-1, label="seed", precision=0), gr.Number(0, label="width", precision=0),
                  gr.Number(0, label="height", precision=0), gr.Number(1, label="count", precision=0),
                  gr.Textbox("default", label="scheduler")]
        output = gr.File(file_count="multiple", label="images")

    def endpoint(prompt, negative, model, steps, guidance, seed, width, height, count, scheduler,
                 request: gr.Request = None):
        # a generator, so that gradio's cancel (job.cancel()) and a lost client close it: a plain function
        # would run on in its thread after the event was cancelled; `stop` is also set by the server's front
        # when gradio can't close it (studio/stops.py)
        stop = threading.Event()
        # whose turn in the line: the signed-in user (as in the chat), else this gradio client's session
        user = getattr(request, "username", None)
        client = getattr(request, "session_hash", None)
        owner = f"user:{user}" if user else (f"client:{client}" if client else None)
        work = generate_steps(studio, folder, prompt, negative, model, steps, guidance, seed, width, height, count,
                              scheduler, cancel=stop, owner=owner)
        with studio.stops.watching(getattr(request, "session_hash", None), stop):
            try:
                while True:
                    try:
                        next(work)
                    except StopIteration as done:
                        yield done.value
                        return
                    yield gr.skip()
            except UserError as e:
                raise gr.Error(str(e)) from None
            except Cancelled:  # the caller's cancel or hang-up: nobody is left to answer
                raise gr.Error("The generation was stopped.") from None
            except Exception as e:
                log.exception("API generate failed")
                raise gr.Error(f"Generation failed inside the app ({type(e).__name__}); see the server log.") from None
            finally:
                work.close()

    gr.Button(visible=False).click(endpoint, inputs, output, api_name="generate", concurrency_limit=None)
    return folder
