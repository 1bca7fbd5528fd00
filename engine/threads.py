"""How many CPU threads torch samples with when the user does not say: the cores that are free now.

Torch takes every core by default. On a machine that is busy with other work that oversubscribes it: on this
project's 2-core machine under load, torch's default ran 3x slower than one thread (4.8 s vs 13.2 s for three
images). So the default is the cores this process may use less the load already on them (the one-minute load
average), at least one; `--threads N` overrides it. Asked once, at start, by app.py.
"""

from __future__ import annotations

import os


def free_cores() -> tuple[int, int, float]:
    """(cores this process may use, of them free now, the one-minute load average)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cores, max(1, min(cores, round(cores - load))), load


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The torch threads to use and a line saying why (for the start of a server or a CLI run)."""
    if requested:
        return requested, f"{requested} torch thread(s) (--threads)"
    cores, free, load = free_cores()
    return free, (f"{free} torch thread(s): {cores} core(s), load {load:.1f} (--threads N to choose; torch's own "
                  "default takes every core, which a busy machine runs several times slower)")
