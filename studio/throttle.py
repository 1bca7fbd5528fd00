"""`Throttle`: slows down guessing of passwords and tokens, per client address and account. No HTTP here: the
page's /login (ui/serve.py) and the APIs' gate (apis/auth.py) ask it how long an attempt must wait."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class Throttle:
    """After `free` wrong attempts for one key (client address and the account tried), each further attempt waits
    `base_s * 2**(n - free)` seconds (at most `cap_s`) and starts only after the attempt before it has: parallel
    guesses queue behind each other instead of all waiting the same few seconds. An attempt counts as wrong from
    the moment it is reserved until it succeeds; a success clears the key.

    The key holds the account name, so one account's attacker does not lock out users of other accounts behind
    the same address; the same account from the same address does wait (that is what a guess looks like)."""

    def __init__(self, free: int = 3, base_s: float = 0.5, cap_s: float = 30.0, keys: int = 10000):
        self.free, self.base_s, self.cap_s, self.keys = free, base_s, cap_s, keys
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._next: dict[str, float] = {}  # key -> when its latest reserved attempt starts (time.monotonic)
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        return 0.0 if failures < self.free else min(self.cap_s, self.base_s * 2 ** (failures - self.free))

    def reserve(self, key: str) -> float:
        """Seconds this attempt must wait before its credentials are checked; it counts as wrong until
        `succeeded`. `math.inf` when the attempts already queued for `key` would make it wait past `cap_s`: refuse
        it at once, uncounted (each queued attempt holds a connection while it waits; hundreds of them would lock
        the account out for hours)."""
        with self._lock:
            now = time.monotonic()
            n = self._failures.get(key, 0)
            start = now if n < self.free else max(now, self._next.get(key, now)) + self.delay(n)
            if start - now > self.cap_s:
                return math.inf
            self._failures[key] = n + 1
            self._failures.move_to_end(key)
            self._next[key] = start
            while len(self._failures) > self.keys:
                old, _ = self._failures.popitem(last=False)
                self._next.pop(old, None)
            return start - now

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
            self._next.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)
