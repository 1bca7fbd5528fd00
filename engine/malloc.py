"""glibc's malloc for a long-running server: two arenas, so memory stays flat over thousands of generations.

glibc gives a thread its own heap ("arena") whenever another holds the one it would use, up to 8 per core. A
server samples in a fresh worker thread each generation while gradio's pool threads serialise replies, so
tensors and buffers of one generation are spread over many arenas, and the holes they leave are reused poorly:
bench_memory.py saw RSS grow 0.15-0.19 MB a chat generation and never level off, though no Python object was
kept (tracemalloc: ~11 KB a generation, the sessions' own history). With two arenas the same traffic grew
4 MB from 100 to 300 generations where it had grown ~35, and sampling was no slower; a fixed 64 KiB mmap
threshold (the other usual cure) held memory too, but made a 128x128 generation 75% slower (a page fault per
tensor). `tune()` is what `MALLOC_ARENA_MAX=2` in the environment does, applied from inside the process before
its threads start; it does nothing off glibc or where the user set MALLOC_ARENA_MAX.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
ARENAS = 2


def tune() -> bool:
    """Limit glibc to ARENAS arenas; True when applied. Call it before the process starts threads."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc, nothing to tune
        return False
    return mallopt(M_ARENA_MAX, ARENAS) == 1
