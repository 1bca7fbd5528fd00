"""Load test: N concurrent sessions of mixed traffic against `python app.py` in a subprocess.

    python benchmarks/load.py [--sessions 20] [--minutes 2] [--max-queue 16] [--cancel-storm 4]

Each session is one browser tab over HTTP (gradio's queue/join + SSE stream, as the page does it) that loops for
the given time with a short think time between requests: chat messages (most), `/generate` API calls, control
image uploads (a map for ControlNet unit 1) and cancels (a long message stopped with Stop after half a second).
Reports completed / refused ("server is busy") / errored (an error or a lost reply), the median / p90 / max
latency per kind, fairness (pairs of chat generations that started their first step in the opposite order of
their sending) and the server's RSS over time. Appends a section to benchmarks/RESULTS.md unless --no-write.

`--cancel-storm N` adds N clients that only start long `/generate` jobs (512x512, 200 steps, 4 images) and cancel
them 0.5-3 s after they start,
alternately through gradio's `/gradio_api/cancel` and by hanging up, while a probe times `GET /` twice a second
(issue #27: a cancel used to block the event loop until the step and the decode ended, 65-96 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402

KINDS = {"chat": 0.6, "api": 0.2, "upload": 0.1, "cancel": 0.1}


class Tab:
    """One browser tab: a session hash, events joined through gradio's queue, its SSE stream read to the end."""

    def __init__(self, url: str, account: tuple[str, str] | None = None):
        self.http = httpx.Client(base_url=url, timeout=300)
        if account is not None:  # signed in as the page does it: gradio's /login sets the session cookie
            self.http.post("/login", data={"username": account[0], "password": account[1]}).raise_for_status()
        self.session = uuid.uuid4().hex[:11]
        self.config = self.http.get("/config").json()
        self.components = {c["id"]: c for c in self.config["components"]}

    def find(self, **props) -> int:
        key, value = next(iter(props.items()))
        return next(c["id"] for c in self.config["components"] if c.get("props", {}).get(key) == value)

    def dependency(self, target: int, event: str) -> tuple[int, dict]:
        for i, dep in enumerate(self.config["dependencies"]):
            if [target, event] in [list(t) for t in dep["targets"]]:
                return dep.get("id", i), dep
        raise KeyError((target, event))

    def api_button(self) -> int:
        return next(d["targets"][0][0] for d in self.config["dependencies"] if d.get("api_name") == "generate")

    def body(self, target: int, event: str, given: dict) -> dict:
        fn, dep = self.dependency(target, event)
        data = [given[i] if i in given else self.components[i].get("props", {}).get("value") for i in dep["inputs"]]
        return {"data": data, "fn_index": fn, "session_hash": self.session, "trigger_id": target, "event_data": None}

    def upload(self, name: str, data: bytes) -> dict:
        [path] = self.http.post("/gradio_api/upload", files={"files": (name, data)}).json()
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def run(self, target: int, event: str, given: dict, on_message=None) -> list[dict]:
        """Join the event and read this tab's stream until it completes; `on_message(m)` sees each message."""
        self.http.post("/gradio_api/queue/join", json=self.body(target, event, given)).raise_for_status()
        messages = []
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session}) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                m = json.loads(line[5:])
                messages.append(m)
                if on_message:
                    on_message(m)
                if m.get("msg") in ("process_completed", "close_stream", "unexpected_error"):
                    break
        return messages

    def predict(self, target: int, event: str, given: dict) -> httpx.Response:
        return self.http.post("/gradio_api/run/predict", json=self.body(target, event, given))


@dataclass
class Outcome:
    kind: str
    result: str  # completed | refused | errored | cancelled
    sent: float
    seconds: float
    started: float | None = None  # chat: when its first "Step" arrived (fairness)
    detail: str = ""
    who: int = -1  # the session (with --accounts: the user)


@dataclass
class Stats:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, o: Outcome) -> None:
        with self.lock:
            self.outcomes.append(o)


def classify(messages: list[dict], seen: dict | None = None) -> tuple[str, str]:
    """What one turn got. The page's whole chat comes back in each stream (earlier replies too), so with `seen`
    (the tab's counts so far) only what is new counts: the tab's next image number, one more "Stopped"."""
    text = json.dumps([m.get("output") for m in messages], ensure_ascii=False)
    if not messages or messages[-1].get("msg") != "process_completed":
        return "errored", "lost reply"
    seen = seen if seen is not None else {"images": 0, "stopped": 0}
    stopped = text.count("Stopped")
    if "server is busy" in text:
        return "refused", ""
    if stopped > seen["stopped"]:
        seen["stopped"] = stopped
        return "cancelled", ""
    if not messages[-1].get("success"):
        return "errored", json.dumps(messages[-1])[:200]
    if f"studio-{seen['images'] + 1:04d}" not in text:
        return "errored", "no image: " + text[-300:]
    while f"studio-{seen['images'] + 1:04d}" in text:
        seen["images"] += 1
    return "completed", ""


def session_loop(url: str, until: float, stats: Stats, seed: int, control_png: bytes, accounts: bool = False) -> None:
    rng = random.Random(seed)
    tab = Tab(url, (f"user{seed}", f"pass-of-user{seed}") if accounts else None)
    box = tab.find(elem_id="prompt")  # its own Stop button is the page's one Stop
    unit_on, unit_image = tab.find(label="Unit 1 on"), tab.find(label="Unit 1 image")
    preprocessor = tab.find(label="Preprocessor")
    button = tab.api_button()
    _, api_dep = tab.dependency(button, "click")
    colours = ["red", "blue", "green", "yellow"]
    seen = {"images": 0, "stopped": 0}
    while time.time() < until:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        prompt = (f"a {rng.choice(['big', 'small'])} {rng.choice(colours)} {rng.choice(['circle', 'square'])} "
                  f"on the left, {rng.choice(colours)} background --seed {rng.randrange(10**6)}")
        sent, started = time.time(), {}

        def first_step(m):
            if "started" not in started and "Step " in json.dumps(m.get("output", ""), ensure_ascii=False):
                started["started"] = time.time()

        try:
            if kind == "chat":
                messages = tab.run(box, "submit", {box: {"text": prompt, "files": []}}, first_step)
            elif kind == "upload":
                given = {box: {"text": prompt, "files": []}, unit_on: True, preprocessor: "none",
                         unit_image: tab.upload("map.png", control_png)}
                messages = tab.run(box, "submit", given, first_step)
            elif kind == "api":
                values = dict(zip(api_dep["inputs"], (prompt.split(" --")[0], "", "", 0, -1, -1, 0, 0, 1, "default")))
                messages = tab.run(button, "click", values)
                if messages and messages[-1].get("msg") == "process_completed" and not messages[-1].get("success"):
                    busy = "server is busy" in json.dumps(messages[-1])
                    stats.add(Outcome(kind, "refused" if busy else "errored", sent, time.time() - sent,
                                      detail="" if busy else json.dumps(messages[-1])[:200], who=seed))
                    continue
                result = "completed" if messages and messages[-1].get("success") else "errored"
                stats.add(Outcome(kind, result, sent, time.time() - sent, detail="" if result == "completed"
                                  else json.dumps(messages[-1:])[:200], who=seed))
                time.sleep(rng.uniform(0.5, 2.0))
                continue
            else:  # cancel: a long message, stopped half a second after it starts sampling
                def stop_soon(m):
                    first_step(m)
                    if "started" in started and "stopped" not in started:
                        started["stopped"] = True
                        threading.Timer(0.5, lambda: tab.predict(box, "stop", {})).start()

                messages = tab.run(box, "submit", {box: {"text": prompt + " --steps 200", "files": []}}, stop_soon)
            result, detail = classify(messages, seen)
            if kind == "cancel" and result == "cancelled":
                result = "completed"  # the stop worked
            stats.add(Outcome(kind, result, sent, time.time() - sent, started.get("started"), detail, seed))
        except Exception as e:  # a client-side failure is an error of the run too
            stats.add(Outcome(kind, "errored", sent, time.time() - sent, detail=f"{type(e).__name__}: {e}",
                              who=seed))
        time.sleep(rng.uniform(0.5, 2.0))


def storm_loop(url: str, until: float, stats: Stats, seed: int) -> None:
    """Start a long /generate job, cancel it once it runs (gradio's cancel route, or hanging up), again."""
    rng = random.Random(seed)
    n = 0
    while time.time() < until:
        tab = Tab(url)
        button = tab.api_button()
        _, dep = tab.dependency(button, "click")
        # 512x512 x 200 steps x 4: 210 megapixel-steps (under --max-work's 256), a step of a second or more here
        values = dict(zip(dep["inputs"], ("a blue square on the right", "", "", 200, -1, -1, 512, 512, 4, "default")))
        sent, n = time.time(), n + 1
        try:
            body = tab.body(button, "click", values)
            event = tab.http.post("/gradio_api/queue/join", json=body).json()["event_id"]
            hold = rng.uniform(0.5, 3.0)  # how long after its start it is cancelled: waiting, or mid-step
            with tab.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": tab.session}) as r:
                began = None
                for line in r.iter_lines():
                    msg = json.loads(line[5:]).get("msg") if line.startswith("data:") else None
                    if msg == "process_completed":
                        break
                    if msg == "process_starts":
                        began = time.time()
                    if began is not None and time.time() - began >= hold:
                        break
                if n % 2:  # gradio's cancel, from another connection, as gradio_client's job.cancel() does
                    httpx.post(url + "/gradio_api/cancel", json={"session_hash": tab.session, "event_id": event,
                                                                 "fn_index": body["fn_index"]}, timeout=300)
            stats.add(Outcome("storm", "completed", sent, time.time() - sent))  # leaving the block hangs up
        except Exception as e:
            stats.add(Outcome("storm", "errored", sent, time.time() - sent, detail=f"{type(e).__name__}: {e}"))
        finally:
            tab.http.close()
        time.sleep(rng.uniform(0.1, 0.5))


def probe_loop(url: str, until: float, stats: Stats) -> None:
    """GET / (a new visitor's page) twice a second: does anything block the server's event loop?"""
    with httpx.Client(base_url=url, timeout=300) as http:
        while time.time() < until:
            sent = time.time()
            try:
                ok = http.get("/").status_code == 200
                stats.add(Outcome("GET /", "completed" if ok else "errored", sent, time.time() - sent))
            except httpx.HTTPError as e:
                stats.add(Outcome("GET /", "errored", sent, time.time() - sent, detail=f"{type(e).__name__}"))
            time.sleep(max(0.0, 0.5 - (time.time() - sent)))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, max_queue: int, threads: int, extra: tuple = ()) -> subprocess.Popen:
    cmd = [sys.executable, str(common.ROOT / "app.py"), "--port", str(port), "--max-queue", str(max_queue),
           "--threads", str(threads), *extra]
    proc = subprocess.Popen(cmd, cwd=common.ROOT, env=common.child_env(threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/config", timeout=5).status_code in (200, 401):  # 401: up, behind its sign-in
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        proc.kill()
        sys.exit("the app did not come up within 3 minutes")
    tab = Tab(url, ("user0", "pass-of-user0") if "--auth-file" in extra else None)  # warm-up: loads the model
    box = tab.find(elem_id="prompt")
    tab.run(box, "submit", {box: {"text": "a red circle on the left, blue background", "files": []}})
    return proc


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def out_of_order(outcomes: list[Outcome]) -> tuple[int, int]:
    """(pairs started in the opposite order of sending, pairs compared) over chat generations that ran."""
    ran = sorted((o for o in outcomes if o.started is not None and o.kind in ("chat", "upload")), key=lambda o: o.sent)
    inversions = pairs = 0
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            if b.sent - a.sent < 0.05:  # sent at the same moment: no order to keep
                continue
            pairs += 1
            inversions += b.started < a.started
    return inversions, pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--cancel-storm", type=int, default=0, metavar="N",
                   help="N more clients that start long jobs and cancel them, and a probe timing GET /")
    p.add_argument("--accounts", action="store_true",
                   help="each session signs in as its own user (--auth-file), so the line takes them in turn")
    p.add_argument("--batch", type=int, default=1, help="the server's --batch")
    p.add_argument("--max-per-user", type=int, default=0, help="the server's --max-per-user")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    from PIL import Image, ImageDraw

    control = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(control).ellipse((8, 8, 40, 40), outline="white", width=2)
    buf = io.BytesIO()
    control.save(buf, "PNG")

    print(f"starting the app (port {args.port}) ...", flush=True)
    extra: tuple = ("--batch", str(args.batch)) if args.batch > 1 else ()
    if args.max_per_user:
        extra += ("--max-per-user", str(args.max_per_user))
    if args.accounts:
        users = Path(common.ROOT / "runs" / "load-users.txt")
        users.parent.mkdir(exist_ok=True)
        users.write_text("".join(f"user{i}:pass-of-user{i}\n" for i in range(args.sessions)))
        extra += ("--auth-file", str(users), "--outputs", str(common.ROOT / "runs" / "load-outputs"))
    proc = start_server(args.port, args.max_queue, args.threads, extra)
    url = f"http://127.0.0.1:{args.port}"
    stats, rss = Stats(), [(0.0, rss_mb(proc.pid))]
    t0 = time.time()
    until = t0 + args.minutes * 60
    workers = [threading.Thread(target=session_loop, args=(url, until, stats, i, buf.getvalue(), args.accounts),
                                daemon=True) for i in range(args.sessions)]
    if args.cancel_storm:
        workers += [threading.Thread(target=storm_loop, args=(url, until, stats, 1000 + i), daemon=True)
                    for i in range(args.cancel_storm)]
        workers.append(threading.Thread(target=probe_loop, args=(url, until, stats), daemon=True))
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        time.sleep(5)
        rss.append((time.time() - t0, rss_mb(proc.pid)))
        with stats.lock:
            done = len(stats.outcomes)
        print(f"{time.time() - t0:5.0f}s  {done} requests  RSS {rss[-1][1]:.0f} MB", flush=True)
    for w in workers:
        w.join()
    proc.terminate()
    proc.wait(30)

    outcomes = stats.outcomes
    rows = []
    for kind in [*KINDS, *(["storm", "GET /"] if args.cancel_storm else []), "all"]:
        mine = [o for o in outcomes if kind == o.kind or (kind == "all" and o.kind in KINDS)]
        times = [o.seconds for o in mine if o.result == "completed"]
        count = {r: sum(o.result == r for o in mine) for r in ("completed", "refused", "errored")}
        rows.append([kind, len(mine), count["completed"], count["refused"], count["errored"],
                     f"{statistics.median(times):.2f}" if times else "-", f"{percentile(times, 0.9):.2f}",
                     f"{max(times):.2f}" if times else "-"])
    inversions, pairs = out_of_order(outcomes)
    chats = {}
    for o in outcomes:
        if o.kind == "chat" and o.result == "completed":
            chats.setdefault(o.who, []).append(o.seconds)
    means = [statistics.mean(v) for v in chats.values() if v]
    fair = max(means) / min(means) if len(means) > 1 else float("nan")
    # per user: turns, every request that completed, a stopped one too (it had its turn on the engine; what a fair
    # line evens out, whatever the requests were), and images (a stopped one is none: a user who drew more cancels
    # got fewer)
    turns, served = {i: 0 for i in range(args.sessions)}, {i: 0 for i in range(args.sessions)}
    for o in outcomes:
        if o.kind in KINDS and o.result == "completed" and o.who in turns:
            turns[o.who] += 1
            served[o.who] += o.kind != "cancel"
    most, least = max(served.values()), min(served.values())
    most_turns, least_turns = max(turns.values()), min(turns.values())
    half = [m for t, m in rss if t >= args.minutes * 30]
    lost = sum(o.detail == "lost reply" for o in outcomes)
    marks = [rss[0]] + [r for r in rss if r[0] > 0][::max(1, len(rss) // 8)] + [rss[-1]]
    errors = sorted({o.detail for o in outcomes if o.result == "errored"})[:5]
    shown = " ".join(x if "runs" not in x else "FILE" for x in extra)
    section = "\n".join([
        f"## Load: {args.sessions} {'signed-in users' if args.accounts else 'sessions'} of mixed traffic for "
        f"{args.minutes:g} min (load.py)", "",
        f"- date {time.strftime('%Y-%m-%d %H:%M')}; commit {common.commit()}; `python app.py --max-queue "
        f"{args.max_queue} --threads {args.threads} {shown}` on the built-in model, {os.cpu_count()} CPUs shared; "
        "think time "
        f"0.5-2 s; mix {', '.join(f'{k} {v:.0%}' for k, v in KINDS.items())} (cancel = a 200-step message stopped "
        "0.5 s into sampling, counted completed when the reply says Stopped)"
        + (f"; cancel storm: {args.cancel_storm} clients starting 512x512 200-step x4 `/generate` jobs and "
           "cancelling each 0.5-3 s after it starts (gradio's cancel route and hanging up, alternately); `GET /` "
           "probed twice a second"
           if args.cancel_storm else ""), "",
        common.table(["kind", "requests", "completed", "refused (busy)", "errored", "median s", "p90 s", "max s"],
                     rows), "",
        f"- fairness: {inversions} of {pairs} pairs of chat generations started out of their sending order"
        + (" (by design: the line takes users in turn)" if args.accounts else ""),
        f"- per-user fairness: the most served user got {most_turns} turns, the least {least_turns} "
        f"({most_turns / least_turns if least_turns else float('inf'):.2f}x; goal within 1.5x); images (a stopped "
        f"one is none): most {most}, least {least} ({most / least if least else float('inf'):.2f}x); the slowest "
        "user's mean chat latency "
        f"is {fair:.2f}x the fastest's ({len(means)} users with a completed chat); lost replies: {lost}",
        "- server RSS: " + ", ".join(f"{t:.0f}s {m:.0f} MB" for t, m in marks)
        + (f"; second half: {half[0]:.0f} -> {half[-1]:.0f} MB ({half[-1] - half[0]:+.0f} MB)" if half else ""),
        f"- errors: {'; '.join(errors) if errors else 'none'}",
    ])
    common.report(section, args)  # prints it, appends it to RESULTS.md unless --no-write


if __name__ == "__main__":
    main()
