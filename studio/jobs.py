"""The programmatic doors' generations (A1111, OpenAI, MCP, gradio's /generate) in the studio's own line: each
waits and runs exactly like a chat message (`studio.stream`), so every door shares one queue and one
`--max-queue`. `Jobs` also keeps what A1111's /progress shows and what its /interrupt stops (each job has an
owner: a client stops only its own), and keeps each image in the library like the chat's. Images go out as PNG bytes
with the studio's metadata.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

from engine.request import Request
from studio.quota import library_owner
from studio.stream import stream

log = logging.getLogger(__name__)


@dataclass
class Job:
    number: int
    request: Request
    owner: str  # who may stop it: the door's caller (apis.auth.Gate.owner), e.g. 'user:alice', '127.0.0.1 token'
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None  # when it reached the engine
    step: int = 0
    total: int = 0
    user: str = ""  # whose turn in the line it takes
    place: int = 0  # its place in the line while it waits (1: next), 0 once it runs


class Jobs:
    """The API's generations: waiting in `studio.line`, then running on the engine (one at a time, or one per
    Ray Serve replica)."""

    def __init__(self, studio, source: str = "api"):
        self.studio, self.source = studio, source  # studio.service.Studio; `source`: what the library records
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._jobs: list[Job] = []

    def run(self, request: Request, cancel: threading.Event | None = None, owner: str = "",
            user: str | None = None, told=None):
        """The engine's Result for `request` after its turn in the line, as `owner`'s job (`user`'s turn in the
        line: `owner` unless given); `told(what, step, total)` hears ("waiting", place, 0) and ("step", i, n) as
        they come. Raises `Busy` at once when the line is full, `Cancelled` after the owner's
        /interrupt or `cancel`, the engine's `UserError` for bad settings."""
        job = Job(next(self._numbers), request, owner, cancel or threading.Event(), user=user or owner)
        with self._lock:
            self._jobs.append(job)
        work = stream(self.studio, request, job.cancel, previews=False, owner=job.user or None)
        try:
            while True:
                try:
                    what, step, total, _ = next(work)
                except StopIteration as done:
                    keep_all(self.studio.library, done.value, self.source, owner=library_owner(job.user))
                    return done.value
                if told is not None:
                    told(what, step, total)
                if what == "waiting":
                    job.place = step
                elif what == "step":
                    job.place = 0
                    job.started_at = job.started_at or time.time()
                    if step >= 0:
                        job.step, job.total = step, total
        finally:
            work.close()  # a no-op when it finished; else it stops the engine before the line moves on
            with self._lock:
                self._jobs.remove(job)

    def mine(self, owner: str) -> list[Job]:
        """`owner`'s jobs (`Job.owner`, or their line's user), oldest first: what a client asks its progress of."""
        with self._lock:
            return [job for job in self._jobs if owner and owner in (job.owner, job.user)]

    def interrupt(self, owner: str, everyone: bool = False) -> bool:
        """Stop `owner`'s generations running on the engine now (within a step); False when none is running.
        Only the owner's: a client may stop only its own work; `everyone` (an admin, --admin) stops them all."""
        with self._lock:
            started = [job for job in self._jobs if job.started_at is not None and (everyone or job.owner == owner)]
        for job in started:
            job.cancel.set()
        return bool(started)


def keep(library, result, i: int, source: str, conversation: str | None = None, init_image=None, owner: str = ""):
    """Keep image `i` of `result` in the library (outputs/, searchable), as every door does: (the entry, None), or
    (None, the disk's refusal as a note for the user) when the disk refused; (None, None) with no library. A full
    disk costs the record, never the answer."""
    if library is None or not library.enabled or result is None:
        return None, None
    from store.outputs import DiskError

    try:
        return library.keep(result, i, source, conversation=conversation, init_image=init_image, owner=owner), None
    except DiskError as e:
        log.warning("image not kept: %s", e)
        return None, str(e)


def keep_all(library, result, source: str, init_image=None, owner: str = "") -> tuple[list, str | None]:
    """Keep every image of `result` (see `keep`) as `owner`'s (a library owner, studio.quota.library_owner): the
    entries, and the refusal note if the disk refused."""
    entries = []
    for i in range(len(result.images) if result is not None else 0):
        entry, refused = keep(library, result, i, source, init_image=init_image, owner=owner)
        if refused:
            return entries, refused
        if entry is not None:
            entries.append(entry)
    return entries, None


def png_bytes(result, i: int) -> bytes:
    """Image i of an engine Result as PNG bytes, with the A1111 `parameters` text and the studio's JSON."""
    buffer = io.BytesIO()
    result.save_png(i, buffer)
    return buffer.getvalue()


def png_base64(result, i: int) -> str:
    return base64.b64encode(png_bytes(result, i)).decode("ascii")
