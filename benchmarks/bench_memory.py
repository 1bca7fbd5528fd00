"""Server memory over many chat generations: is it bounded?

    python benchmarks/bench_memory.py [--generations 1000] [--sessions 20]

Starts `python app.py` in a subprocess, warms it with one message, then sends `--generations` chat messages on the
built-in model round-robin over `--sessions` tabs (gradio's queue/join + SSE, as the page does), two at a time,
and reads the server's RSS at 0, 1/4, 1/2, 3/4 and all of them. Goal: flat after warm-up, within 50 MB.
Appends a section to benchmarks/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402
from benchmarks.load import Tab, classify, rss_mb, start_server  # noqa: E402

GOAL_MB = 50


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--port", type=int, default=7872)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    proc = start_server(args.port, 16, args.threads)
    url = f"http://127.0.0.1:{args.port}"
    tabs = [Tab(url) for _ in range(args.sessions)]
    box = tabs[0].find(elem_id="prompt")
    marks = {round(args.generations * q) for q in (0, 0.25, 0.5, 0.75, 1)}
    rss, failed, done = {0: rss_mb(proc.pid)}, [], [0]
    print(f"    0 generations       0s  RSS {rss[0]:.0f} MB (after one warm-up message)", flush=True)
    lock = threading.Lock()
    t0 = time.time()

    def worker(offset: int) -> None:
        for n in range(offset, args.generations, 2):  # two clients: one waits in line while the other runs
            tab = tabs[n % len(tabs)]
            text = f"a big red circle on the left, blue background --seed {n}"
            result, detail = classify(tab.run(box, "submit", {box: {"text": text, "files": []}}))
            with lock:
                if result != "completed":
                    failed.append(detail)
                done[0] += 1
                if done[0] in marks:
                    rss[done[0]] = rss_mb(proc.pid)
                    print(f"{done[0]:5d} generations  {time.time() - t0:6.0f}s  RSS {rss[done[0]]:.0f} MB",
                          flush=True)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proc.terminate()
    proc.wait(30)

    points = sorted(rss.items())
    after_warm = [m for n, m in points if n >= args.generations // 4]
    growth = max(after_warm) - min(after_warm) if after_warm else float("nan")
    section = "\n".join([
        f"## Server memory over {args.generations} chat generations, {args.sessions} sessions (bench_memory.py)", "",
        f"- date {time.strftime('%Y-%m-%d %H:%M')}; commit {common.commit()}; built-in model at its defaults, "
        f"`python app.py --threads {args.threads}`, two clients at a time; {time.time() - t0:.0f} s; "
        f"{len(failed)} failed", "",
        common.table(["generations", *[str(n) for n, _ in points]], [["RSS MB", *[f"{m:.0f}" for _, m in points]]]),
        "",
        f"- from {args.generations // 4} on (after warm-up): {growth:+.0f} MB range, goal within {GOAL_MB} MB: "
        f"{'met' if growth <= GOAL_MB else 'not met'}; from 0: {points[-1][1] - points[0][1]:+.0f} MB",
    ])
    common.report(section, args)  # prints it, appends it to RESULTS.md unless --no-write


if __name__ == "__main__":
    main()
