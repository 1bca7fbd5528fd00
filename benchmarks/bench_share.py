"""A shared server under many users: images a second and waits, with batching and without, and how fair the line is.

    python benchmarks/bench_share.py [--users 8,32] [--each 3] [--batch 8] [--threads 1]   # appends to RESULTS.md

Each simulated user sends `--each` text-to-image requests at once (same settings, their own prompts and seeds) to one
studio (its fair line and jobs, as the page and the APIs use them) on the built-in model; all users start together.
Measured per setting: images a second over the whole run, each request's wait from sending to its image (p50, p90),
and fairness: the slowest user's mean wait over the fastest's (1.0 = equal). `--batch 1` is the baseline, each
request its own pipeline call; `--batch N` lets up to N waiting requests share one.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the center"]


def prompt(user: int, k: int) -> str:
    return (f"a big {COLORS[(user + k) % 6]} {SHAPES[(user * 7 + k) % 3]} {PLACES[(user + 3 * k) % 5]}, "
            f"{'white' if (user + k) % 2 else 'black'} background")


def run(engine, users: int, each: int, batch: int) -> dict:
    from engine.request import Request
    from studio.jobs import Jobs
    from studio.line import Line
    from studio.service import Studio

    studio = Studio(engine, "builtin", line=Line(max_waiting=users * each + 4), batch=batch)
    jobs = Jobs(studio)
    waits: dict[int, list[float]] = {u: [] for u in range(users)}
    batches: list[int] = []
    lock = threading.Lock()
    start = threading.Event()

    def one(user: int, k: int):
        start.wait()
        sent = time.perf_counter()
        result = jobs.run(Request(prompt=prompt(user, k), seed=1000 * user + k), owner=f"user:{user}")
        with lock:
            waits[user].append(time.perf_counter() - sent)
            batches.append(result.batch)

    threads = [threading.Thread(target=one, args=(u, k)) for u in range(users) for k in range(each)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    every = sorted(w for ws in waits.values() for w in ws)
    means = [statistics.mean(ws) for ws in waits.values()]
    return {"images_s": len(every) / seconds, "p50": every[len(every) // 2], "p90": every[int(len(every) * 0.9)],
            "fairness": max(means) / min(means), "batch": statistics.mean(batches), "seconds": seconds}


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--users", default="8,32")
    p.add_argument("--each", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    args.runs = 1  # one run of each setting (the header would name --runs)
    common.setup(args)
    from engine.engine import Engine

    engine = Engine(device="cpu")
    from engine.request import Request

    engine.generate(Request(prompt="a red circle", seed=1))  # loaded and warm before timing
    rows = []
    for users in [int(x) for x in args.users.split(",")]:
        base = run(engine, users, args.each, 1)
        shared = run(engine, users, args.each, args.batch)
        for name, r in (("each alone (--batch 1)", base), (f"--batch {args.batch}", shared)):
            rows.append([users, name, f"{r['images_s']:.2f}", f"{r['p50']:.2f} s", f"{r['p90']:.2f} s",
                         f"{r['fairness']:.2f}", f"{r['batch']:.1f}"])
        rows.append([users, "**ratio**", f"**{shared['images_s'] / base['images_s']:.2f}x**",
                     f"{shared['p50'] / base['p50']:.2f}x", f"{shared['p90'] / base['p90']:.2f}x", "", ""])
        print(rows[-3:], flush=True)
    text = common.header("Shared server: batching and the fair line (bench_share.py)", args,
                         f"{args.each} requests per user sent at once, built-in model at its defaults (64x64, 10 "
                         "steps); fairness = slowest user's mean wait / fastest's")
    text += "\n" + common.table(["users", "setting", "images/s", "wait p50", "wait p90", "fairness",
                                 "mean batch"], rows)
    common.report(text, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
