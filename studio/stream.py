"""One generation run in its turn: wait in the studio's line, run the engine in a worker thread, and stream
("waiting", place) and ("step", step, total, preview) out to whichever door asked. No gradio, no torch.

Closing the stream (a Stop, a cancelled event, a client gone) sets the run's cancel switch and returns at once:
the engine stops at its next step in its own thread, and the line moves on when it has. Nothing waits on the
caller's thread for a step or a VAE decode to finish, so a door's event loop is never held by a cancel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from engine.engine import Cancelled
from engine.request import Request, UserError
from studio.line import RIDING, Busy
from studio.work import check_work

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """How often a run reports in and the chat redraws, in seconds (tests and benchmarks pass their own)."""

    line_poll_s: float = 1.0  # a generation waiting in line yields this often (a Stop while waiting takes this long)
    wait_poll_s: float = 0.25  # a running one reports in this often while loading or decoding (no step to report)
    redraw_s: float = 0.5  # the chat redraws its step counter at most this often (a preview always is drawn)
    first_redraw_s: float = 1.0  # and not before a run is this old: a faster reply goes from "Starting…" to its image
    idle_yield_s: float = 3.0  # the chat yields with nothing new this often, so a closed tab's event ends
    place_redraw_s: float = 3.0  # a waiting message redraws its place at most this often (the first at once)
    # (each yield costs gradio a rebuild of every output left out, ~1-4 ms each under the GIL the sampling needs
    # too: 50 waiting tabs redrawing every second took more of it than the engine, benchmarks/load.py)
    abandon_s: float = 20.0  # a run whose caller stopped pulling its stream this long stops (see Switch)


class Switch:
    """A run's stop switch: set by the run itself, through the caller's `cancel` (a Stop button, /interrupt), or
    by the caller going quiet. A door's event loop may drop a stream without closing it (gradio's cancel while the
    stream is inside a step: the close fails as "generator already executing" and is not retried); every pull of
    the stream is a heartbeat, and a run nobody has pulled for `abandon_s` stops at its next step."""

    def __init__(self, cancel: threading.Event, abandon_s: float = 20.0):
        self.cancel, self.own, self.abandon_s = cancel, threading.Event(), abandon_s
        self.pulled = time.monotonic()

    def beat(self) -> None:
        self.pulled = time.monotonic()

    def set(self) -> None:
        self.own.set()

    def is_set(self) -> bool:
        if time.monotonic() - self.pulled > self.abandon_s:
            self.own.set()
        return self.own.is_set() or self.cancel.is_set()


def generate(studio, request: Request, **live):
    """The engine's Result for `request`: in the ZeroGPU worker when there is one (no live preview there)."""
    if studio.gpu is not None:
        return studio.gpu(request)
    return studio.engine.generate(request, **live)


def capped(studio, request: Request) -> None:
    """SettingsError when `request` asks for more work than the server's --max-work (studio/work.py); a model the
    engine can't resolve is left for the run to report in its turn."""
    cap = getattr(studio, "max_work", None)
    if not cap:
        return
    try:
        defaults = studio.engine.defaults(request.model)
    except UserError:
        return
    check_work(request, defaults, cap)


class AllStopped:
    """A batch's stop switch: set when every request in it was stopped (one user's Stop leaves the others')."""

    def __init__(self, switches: list):
        self.switches = [s for s in switches if s is not None]

    def is_set(self) -> bool:
        return all(s.is_set() for s in self.switches)


def ridden(line, ticket, cancel: threading.Event, timing):
    """A generation's wait inside another's batch: its Ride's progress, then its Result (or the batch's error);
    `Cancelled` at once when its own switch is set (the batch goes on for the others)."""
    ride = line.ride(ticket)
    try:
        while not ride.done.wait(timing.wait_poll_s):
            if cancel.is_set():
                raise Cancelled()
            yield "step", -1, 0, None
        if cancel.is_set():
            raise Cancelled()
        if ride.error is not None:
            raise ride.error
        return ride.result
    finally:
        line.done_riding(ticket)


def waited(line, ticket, timeout: float, cancel: threading.Event) -> int:
    """`line.wait`; a ticket the line dropped because its run was stopped is `Cancelled`, not `Busy`."""
    try:
        return line.wait(ticket, timeout)
    except Busy:
        if cancel.is_set():
            raise Cancelled() from None
        raise


def stream(studio, request: Request, cancel: threading.Event, previews: bool = True, owner: str | None = None
           ) -> Iterator[tuple[str, int, int, Any]]:
    """Run `request` when its turn comes, yielding ("waiting", place, 0, None) while it waits and
    ("step", step, total, preview) as it samples (step -1: loading or decoding); the Result is the generator's
    return value. `Busy` when the line is full, before anything runs; `Cancelled` after `cancel`. `owner`: whose
    generation it is (the line takes owners in turn)."""
    line, timing = studio.line, studio.timing
    capped(studio, request)
    usage = getattr(studio, "usage", None)
    if usage is not None:
        usage.admit(owner)  # --rate: a user's generations a minute, through every door
    quota = getattr(studio, "quota", None)
    if quota:  # --quota: a user whose library is full is told so (with their oldest to delete) before it runs
        try:
            quota.check(studio.library, owner)
        except UserError:
            if usage is not None:
                usage.refused("quota")
            raise
    sent = time.perf_counter()
    batching = getattr(studio, "batch", 1) > 1 and studio.gpu is None
    key = studio.engine.batch_key(request) if batching else None
    # a cancel that reaches only the switch (studio/stops.py) still frees its place
    try:
        ticket = line.join(cancel, owner, request, key)
    except Busy:
        if usage is not None:
            usage.refused("busy")
        raise
    riders: list = []
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    plan = None  # the run's previews (studio/previews.py), planned when it starts
    stop = Switch(cancel, timing.abandon_s)  # this run's own: a later run clearing `cancel` can't revive it

    def progress(step: int, total: int, latents) -> None:
        preview = None
        if previews and step < total and plan is not None and plan.due(step, total):
            try:
                started = time.perf_counter()
                preview = studio.engine.preview(request.model, latents)
                plan.measured(time.perf_counter() - started)
            except Exception:  # a preview is a nicety; never fail the generation for it
                log.debug("preview failed", exc_info=True)
        events.put((step, total, preview))

    def work() -> None:
        nonlocal plan
        began = time.perf_counter()
        plan = studio.previews.plan(request.model) if not riders else None  # a batch shows no previews
        try:
            if riders:
                results = studio.engine.generate_batch([request] + [r for _, r, _, _ in riders], progress=progress,
                                                       cancel=AllStopped([stop] + [rs for *_, rs in riders]))
                outcome["result"] = results[0]
                for (_, _, ride, _), result in zip(riders, results[1:]):
                    ride.finish(result)
            else:
                outcome["result"] = generate(studio, request, progress=progress, cancel=stop)
            if usage is not None:
                usage.ran(time.perf_counter() - began)
        except BaseException as e:  # handed to the caller's thread, which decides what the user sees
            outcome["error"] = e
            for _, _, ride, _ in riders:
                ride.finish(error=e)
        finally:
            line.leave(ticket)  # the engine is free: the next in line may start
            events.put(None)

    started = False
    try:
        while (place := waited(line, ticket, timing.line_poll_s, cancel)) > 0:
            if cancel.is_set():
                raise Cancelled()
            yield "waiting", place, 0, None
        if place == RIDING:  # taken into another's pipeline call: its result comes from there
            started = True
            return (yield from ridden(line, ticket, cancel, timing))
        if cancel.is_set():
            raise Cancelled()
        stop.beat()
        if usage is not None:
            usage.served(time.perf_counter() - sent)
        if key is not None:
            riders = line.take_riders(ticket, key, studio.batch - 1)  # the keys were worked out as each joined
        threading.Thread(target=work, name="generate", daemon=True).start()
        started = True
        while True:
            try:
                item = events.get(timeout=timing.wait_poll_s)
            except queue.Empty:  # loading, decoding: yield anyway, so a close is never kept waiting
                yield "step", -1, 0, None
                stop.beat()
                continue
            if item is None:
                break
            yield "step", *item
            stop.beat()  # the caller pulled again: it is still there
    finally:
        if not started:
            line.leave(ticket)
        elif "result" not in outcome and "error" not in outcome:
            stop.set()  # closed mid-run: the worker stops the engine at its next step, then frees the line
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
