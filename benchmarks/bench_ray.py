"""Throughput of the built-in model on Ray Serve: one replica busy against two, in the same run, alternately.

    python benchmarks/bench_ray.py [--images 8] [--rounds 3] [--steps 10]

Starts a local Ray with 2 engine replicas (one torch thread each, studio/ray_serve.py) and, each round, makes
`--images` images one at a time (so one replica works: "1 replica") and then `--images` images two at a time
(both work: "2 replicas"), each through `RemoteEngine.generate` as the chat and the APIs call it. Prints images/s
of each and their ratio (goal >= 1.6x on 2 idle cores). Numbers depend on what else the machine's cores do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    import ray

    from benchmarks import common
    from engine.config import EngineConfig
    from engine.engine import Engine
    from engine.request import Request
    from studio import ray_serve

    config = EngineConfig(device="cpu")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    handle = ray_serve.start(config, "builtin", replicas=2)
    remote = ray_serve.RemoteEngine(Engine(config), handle, replicas=2)
    prompt = "a big red circle on the left, blue background"

    def make(seed: int) -> None:
        remote.generate(Request(prompt=prompt, seed=seed, steps=args.steps))

    def rate(workers: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(make, range(args.images)))
        return args.images / (time.perf_counter() - started)

    try:
        rate(2)  # warm-up: both replicas have run once
        one, two = [], []
        for r in range(args.rounds):
            one.append(rate(1))
            two.append(rate(2))
            print(f"round {r + 1}: 1 replica {one[-1]:.2f} images/s, 2 replicas {two[-1]:.2f} images/s "
                  f"({two[-1] / one[-1]:.2f}x)", flush=True)
        a, b = statistics.median(one), statistics.median(two)
        rows = [[r + 1, f"{x:.2f}", f"{y:.2f}", f"{y / x:.2f}x"] for r, (x, y) in enumerate(zip(one, two))]
        rows.append(["median", f"{a:.2f}", f"{b:.2f}", f"**{b / a:.2f}x**"])
        common.report(f"\n## Ray Serve, 1 vs 2 replicas of the built-in model (bench_ray.py, {date.today()}, commit "
                      f"{common.commit()})\n\n{args.images} images per measurement, {args.steps} steps, one torch "
                      f"thread per replica, alternately in one run; load average at the end "
                      f"{os.getloadavg()[0]:.1f}; generations per replica {sorted(remote.served.values())}. "
                      f"Goal >= 1.6x on 2 idle cores: {common.verdict(b / a, 1.6, lower_is_better=False)}.\n\n"
                      + common.table(["round", "1 replica (images/s)", "2 replicas (images/s)", "ratio"], rows)
                      + "\n", args)
    finally:
        ray_serve.stop()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
