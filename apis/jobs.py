"""API generations in the studio's own line: each waits and runs exactly like a chat message (`ui.runner.stream`),
so the chat, the A1111, OpenAI and MCP doors share one queue and one `--max-queue`. `Jobs` also keeps what
A1111's /progress shows and what its /interrupt stops. Images go out as PNG bytes with the studio's metadata.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from starlette.concurrency import run_in_threadpool

from engine.request import Request, UserError
from ui import runner
from ui.studio import Studio

log = logging.getLogger(__name__)

T = TypeVar("T")
WATCH_S = 0.5  # how often a waiting API call checks that its client is still there


@dataclass
class Job:
    number: int
    request: Request
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None  # when it reached the engine
    step: int = 0
    total: int = 0


class Jobs:
    """The API's generations: waiting in `studio.line`, then running on the engine (one at a time, or one per
    Ray Serve replica)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._jobs: list[Job] = []

    def run(self, request: Request, cancel: threading.Event | None = None):
        """The engine's Result for `request` after its turn in the line. Raises `runner.Busy` at once when the
        line is full, `Cancelled` after an /interrupt or `cancel`, the engine's `UserError` for bad settings."""
        job = Job(next(self._numbers), request, cancel or threading.Event())
        with self._lock:
            self._jobs.append(job)
        work = runner.stream(self.studio, request, job.cancel, previews=False)
        try:
            while True:
                try:
                    what, step, total, _ = next(work)
                except StopIteration as done:
                    keep(self.studio, done.value)
                    return done.value
                if what == "step":
                    job.started_at = job.started_at or time.time()
                    if step >= 0:
                        job.step, job.total = step, total
        finally:
            work.close()  # a no-op when it finished; else it stops the engine before the line moves on
            with self._lock:
                self._jobs.remove(job)

    def running(self) -> Job | None:
        with self._lock:
            return next((job for job in self._jobs if job.started_at is not None), None)

    def count(self) -> int:
        with self._lock:
            return len(self._jobs)

    def interrupt(self) -> bool:
        """Stop the API generations running on the engine now (within a step); False when none is running."""
        with self._lock:
            started = [job for job in self._jobs if job.started_at is not None]
        for job in started:
            job.cancel.set()
        return bool(started)


async def while_connected(http, work: Callable[[threading.Event], T]) -> T:
    """`work(cancel)` in a worker thread; when the HTTP client goes away before it is done, `cancel` is set, so a
    generation nobody waits for stops within a step and leaves the line (as a closed chat tab does)."""
    cancel = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(work, cancel))
    while True:
        done, _ = await asyncio.wait({task}, timeout=WATCH_S)
        if done:
            return task.result()
        if not cancel.is_set() and await http.is_disconnected():
            log.info("API client gone: its generation is cancelled")
            cancel.set()


def keep(studio: Studio, result) -> None:
    """Keep the API's images in the library like the chat's (outputs/, searchable); a full disk costs the record,
    never the answer."""
    library = getattr(studio, "library", None)
    if library is None or not library.enabled or result is None:
        return
    from store.outputs import DiskError

    for i in range(len(result.images)):
        try:
            library.keep(result, i, "api")
        except DiskError as e:
            log.warning("API image not kept: %s", e)
            return


def png_bytes(result, i: int) -> bytes:
    """Image i of an engine Result as PNG bytes, with the A1111 `parameters` text and the studio's JSON."""
    buffer = io.BytesIO()
    result.save_png(i, buffer)
    return buffer.getvalue()


def png_base64(result, i: int) -> str:
    return base64.b64encode(png_bytes(result, i)).decode("ascii")


def decode_base64_image(text, what: str) -> bytes:
    """The bytes of a base64 image as A1111 clients send it (raw, or a `data:image/png;base64,` URL)."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{what} must be a base64-encoded image (PNG or JPEG), got {type(text).__name__}.")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise UserError(f"{what} is not valid base64. Send the image file's bytes base64-encoded, optionally as "
                        "'data:image/png;base64,...'.") from None


def fit_canvas(init, mask, width: int | None, height: int | None, multiple: int):
    """An image and its mask brought to one size the model can draw: (width, height) when given, else the image's
    own size rounded down to `multiple`. Clients send a mask at the image's size, and the target size separately,
    as A1111's UI does; the engine wants them equal."""
    from PIL import Image

    from engine.images.loading import fit_to, load_image, open_image

    init = load_image(init, "The init image")
    mask = open_image(mask, "The mask")
    if mask.size != init.size:
        raise UserError(f"The mask is {mask.width}x{mask.height} but the image is {init.width}x{init.height}; "
                        "they must be the same size (white = repaint, black = keep).")
    mask = load_image(mask, "The mask", background="black").convert("L")
    w = width or max(multiple, init.width // multiple * multiple)
    h = height or max(multiple, init.height // multiple * multiple)
    return (fit_to(init, w, h), fit_to(mask, w, h, resample=Image.Resampling.NEAREST), w, h)


def whole_number(name: str, value, low: int, high: int) -> int:
    """A field that must be a whole number in [low, high], named as the client spelled it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if not low <= value <= high:
        raise UserError(f"{name} = {value} is out of range; use {low} to {high}.")
    return int(value)
