"""engine/malloc.py: after `tune()` a process with many allocating threads uses two glibc arenas, not one each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import ctypes, sys, threading
sys.path.insert(0, {root!r})
from engine import malloc
tuned = malloc.tune() if sys.argv[1] == "tune" else False
barrier = threading.Barrier(12)
def work():
    barrier.wait()  # all at once: each would take an arena of its own
    keep = [bytearray(4096) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in threads]; [t.join() for t in threads]
print(tuned, flush=True)
ctypes.CDLL("libc.so.6").malloc_stats()  # to stderr: one "Arena N:" block per arena
"""


def arenas(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT)), mode], capture_output=True,
                         text=True, env=env, timeout=60)
    return out.stdout.strip(), sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_tune_keeps_a_threaded_process_to_two_arenas():
    tuned, count = arenas("tune")
    assert tuned == "True" and count == 2, (tuned, count)
    _, untuned = arenas("plain")
    assert untuned > 2  # without it, threads that allocate at once get arenas of their own
