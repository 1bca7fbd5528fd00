"""What every benchmark script shares: flags, thread setup, A/B alternation, medians and the RESULTS.md section.

Each script measures its baseline in the same run as the thing it compares, alternating the two so that
drift (other work on the machine, thermal changes) falls on both sides alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def parser(doc: str, parts: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The flags every script has; `parts` are the sections `--skip` may leave out."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--model", default="builtin", help="builtin, or a diffusers folder (a tiny one for trials)")
    p.add_argument("--runs", type=int, default=7, help="timed runs per side (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="width and height (default: the model's)")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    if parts:
        p.add_argument("--skip", default="", help=f"comma list of sections to leave out: {','.join(parts)}")
    return p


def setup(args) -> None:
    """Quiet libraries, set torch's thread count and say so."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(args.threads)
    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    print(f"torch threads: {torch.get_num_threads()} (--threads {args.threads}); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)


def child_env(threads: int) -> dict:
    """Environment for subprocesses: offline, no analytics, the same thread count."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH", "")) if x)
    return env


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def alternate(sides: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Time each side `runs` times, round-robin; the starting side rotates every round (A B, B A, ...)."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(sides[name])[0])
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f}"


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def verdict(value: float, goal: float, lower_is_better: bool = True) -> str:
    ok = value <= goal if lower_is_better else value >= goal
    return f"{'met' if ok else 'NOT met'} (goal {'<=' if lower_is_better else '>='} {goal:g})"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return f"{names[0]} ({platform.machine()})" if names else ""


def header(title: str, args, extra: str = "") -> str:
    import diffusers
    import torch

    machine = platform.processor() or cpu_name() or platform.machine()
    lines = [f"## {title}", "",
             f"- date: {datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine}, {os.cpu_count()} CPUs; "
             f"torch threads {args.threads}; commit {commit()}",
             f"- torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}; "
             f"model `{args.model}`; {args.runs} timed runs per side, alternating; times are medians"]
    if extra:
        lines.append(f"- {extra}")
    return "\n".join(lines) + "\n"


def report(section: str, args, echo: bool = True, latest: str | None = None) -> None:
    """Print the Markdown section (unless already printed part by part); append it to RESULTS.md unless --no-write,
    and then also write it alone to benchmarks/`latest` (the file the model card is made from) when given."""
    if echo:
        print("\n" + section, flush=True)
    if args.no_write:
        print("(--no-write: RESULTS.md not changed)")
        return
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n" + section.rstrip() + "\n")
    print(f"appended to {RESULTS.relative_to(ROOT)}")
    if latest:
        (ROOT / "benchmarks" / latest).write_text(section)


def run_sections(title: str, args, sections: list[tuple[str, Callable[[], str]]]) -> None:
    """Print the header, run each section not in --skip and print it as it ends, then append all to RESULTS.md."""
    skip = set(filter(None, getattr(args, "skip", "").split(",")))
    head = header(title, args)
    print(head, flush=True)
    parts = []
    for name, run in sections:
        if name not in skip:
            print(f"running {name} ...", flush=True)
            parts.append(run())
            print(parts[-1], flush=True)
    report(head + "\n" + "\n".join(parts), args, echo=False)


def model_folder(model: str) -> Path:
    """The folder a `--model` string loads from (benchmarks need a diffusers folder: builtin or a path)."""
    from engine.sources.resolve import Resolver

    source = Resolver(local_paths=True).resolve(model)
    if source.kind not in ("builtin", "folder"):
        sys.exit(f"--model {model}: the benchmarks need a local diffusers folder (or builtin), got a {source.kind}.")
    return Path(source.location)


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def mean_abs_diff(a, b) -> float:
    """Mean absolute difference of two PIL images in 0-255 pixel units."""
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())
