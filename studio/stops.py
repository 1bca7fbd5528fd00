"""`Stops`: the stop switches of the generations each page session is running, by gradio's session hash, so the
server's front (server/gone.py) can stop them the moment their client cancels or goes away. No gradio, no torch.

gradio stops a generating event by closing its generator, which fails while the generator is inside a `next()`
in its worker thread ("generator already executing", not retried), and a client that hangs up only marks its
event dead: the run then went on until `studio.stream.Switch` gave it up as abandoned (20 s of engine time
after each cancel, under load a minute-long tail for everyone in line). Here the cancel reaches the run itself.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager


class Stops:
    def __init__(self):
        self._switches: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()

    @contextmanager
    def watching(self, key: str | None, switch: threading.Event):
        """While the block runs, `stop(key)` sets `switch` (no key: nothing to watch)."""
        if not key:
            yield
            return
        with self._lock:
            self._switches[key].append(switch)
        try:
            yield
        finally:
            with self._lock:
                switches = self._switches.get(key, [])
                if switch in switches:
                    switches.remove(switch)
                if not switches:
                    self._switches.pop(key, None)

    def stop(self, key: str) -> int:
        """Set the switches of `key`'s running generations; how many there were."""
        with self._lock:
            switches = list(self._switches.get(key, ()))
        for switch in switches:
            switch.set()
        return len(switches)

    def watched(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._switches.values())
