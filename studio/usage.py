"""What a shared server's host needs to know and cap: per-user rates (`--rate N`: generations a minute, through every
door), and a summary in the log now and then (users, images, waits, refusals). No gradio, no torch."""

from __future__ import annotations

import collections
import logging
import threading
import time

from engine.request import UserError

log = logging.getLogger("studio.usage")
WINDOW_S = 60.0


class RateLimited(UserError):
    """A user sent more generations in the last minute than the server allows."""


class Usage:
    """Counts per owner: the rate window, and what the next summary reports."""

    def __init__(self, rate: int = 0, summary_every_s: float = 600.0, owners: int = 10000):
        self.rate, self.summary_every_s, self.owners = rate, summary_every_s, owners
        self._sent: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._period = self._fresh()
        self.run_s = collections.deque(maxlen=20)  # the last runs' seconds on the engine, for waiting estimates

    @staticmethod
    def _fresh() -> dict:
        return {"users": set(), "images": 0, "waits": [], "refused": collections.Counter()}

    def admit(self, owner: str | None) -> None:
        """Count one generation of `owner`; RateLimited (saying when to send again) past `rate` a minute."""
        if owner is None:
            return
        now = time.monotonic()
        with self._lock:
            self._period["users"].add(owner)
            if not self.rate:
                return
            sent = self._sent.setdefault(owner, collections.deque())
            self._sent.move_to_end(owner)
            while sent and now - sent[0] > WINDOW_S:
                sent.popleft()
            if len(sent) >= self.rate:
                self._period["refused"]["rate"] += 1
                again = WINDOW_S - (now - sent[0])
                raise RateLimited(f"You sent {len(sent)} generations in the last minute; this server allows "
                                  f"{self.rate} a minute per user. Send again in {again:.0f} s.")
            sent.append(now)
            while len(self._sent) > self.owners:  # the oldest idle owners go first
                self._sent.popitem(last=False)

    def served(self, waited_s: float) -> None:
        with self._lock:
            self._period["images"] += 1
            self._period["waits"].append(waited_s)
        self.maybe_summarize()

    def ran(self, seconds: float) -> None:
        with self._lock:
            self.run_s.append(seconds)

    def estimate(self, place: int) -> float | None:
        """About how long `place` generations ahead take (the recent runs' median); None before any ran."""
        with self._lock:
            runs = sorted(self.run_s)
        return place * runs[len(runs) // 2] if runs else None

    def refused(self, why: str) -> None:
        with self._lock:
            self._period["refused"][why] += 1

    def maybe_summarize(self, force: bool = False) -> str | None:
        """The period's summary line, logged (and returned) once `summary_every_s` has passed."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._since < self.summary_every_s:
                return None
            p, minutes = self._period, (now - self._since) / 60
            self._period, self._since = self._fresh(), now
        waits = sorted(p["waits"])
        mid = f"{waits[len(waits) // 2]:.1f} s" if waits else "-"
        p90 = f"{waits[int(len(waits) * 0.9)]:.1f} s" if waits else "-"
        refused = ", ".join(f"{k} {v}" for k, v in sorted(p["refused"].items())) or "none"
        line = (f"last {minutes:.0f} min: {len(p['users'])} users, {p['images']} generations, wait p50 {mid} "
                f"p90 {p90}, refused: {refused}")
        log.warning("usage %s", line)
        return line
