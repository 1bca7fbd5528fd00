"""Enter -> image in a real browser against `/generate` through gradio_client, on a quiet and on a loaded machine.

    python benchmarks/bench_chat_browser.py                 # built-in model, 15 runs a side a phase, 1 load process
    python benchmarks/bench_chat_browser.py --runs 5 --no-write   # a trial

Method: `python app.py` serves on a free loopback port in a child process (the built-in model at its defaults).
Chromium (Playwright) opens the chat; each chat run types a prompt with its own `--seed`, presses Enter and waits
until the reply's image has loaded; the page's own clock times it (keydown of Enter to the image element's load),
and the same clock notes the first live preview (an observer in the page; the benchmark only asks for the result
every 200 ms, so it adds no work of its own to the page). Each API run calls `/generate` with the same prompt, settings
and seed through gradio_client (send to files received). The two alternate in one run, first on a quiet machine,
then with `--load` busy processes (one core each) running beside them. Goals (issue #15): loaded, chat p90 within
1.5x the API's p90; quiet, chat median within 1.2x the API's median. Chromium, the client and the server share the
machine's cores with the load, as they would on a user's laptop.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import med, table

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPT = "a big red circle on the left, blue background"
BUSY = "import numpy as np\na = np.random.rand(256, 256)\nwhile True:\n    a = (a @ a) / 256.0\n"
WATCH = """() => {  // the page's own clock: Enter's keydown, the first preview, the wanted image loaded
  const box = document.querySelector('#prompt textarea');
  window.__bench = {};
  box.addEventListener('keydown', e => { if (e.key === 'Enter') window.__bench.enter = performance.now(); }, true);
  new MutationObserver(() => {
    const b = window.__bench;
    if (!b.enter) return;
    if (!b.preview && document.querySelector('#chat img[src*="preview-"]')) b.preview = performance.now();
    const img = b.want && !b.image && document.querySelector(`#chat img[src*="${b.want}"]`);
    if (!img) return;
    const loaded = () => { b.image = b.image || performance.now(); };
    if (img.complete && img.naturalWidth) loaded(); else img.addEventListener('load', loaded, {once: true});
  }).observe(document.querySelector('#chat'), {subtree: true, childList: true, attributes: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def start_app(port: int, threads: int, outputs: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(common.ROOT / "app.py"), "--port", str(port), "--threads", str(threads),
           "--outputs", str(outputs)]
    return subprocess.Popen(cmd, cwd=common.ROOT, env=common.child_env(threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def connect(url: str, proc: subprocess.Popen, timeout: float = 180.0):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Chat:
    """One Chromium tab on the chat; `send` returns (Enter -> image, Enter -> first preview or None) in seconds."""

    def __init__(self, browser, url: str):
        self.page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        self.page.goto(url)
        self.page.wait_for_selector("#prompt textarea", timeout=60_000)
        self.page.evaluate(WATCH)
        self.images = 0

    def send(self, seed: int) -> tuple[float, float | None]:
        page = self.page
        self.images += 1
        page.evaluate("want => { window.__bench = {want}; }", f"studio-{self.images:04d}")
        page.fill("#prompt textarea", f"{PROMPT} --seed {seed}")
        page.press("#prompt textarea", "Enter")
        try:  # the page notes the time itself; this only asks now and then (a user's browser runs no poll)
            page.wait_for_function("() => !!window.__bench.image", polling=200,
                                   timeout=int(os.environ.get("BENCH_TIMEOUT_MS", 120_000)))
        except Exception:
            box = page.evaluate("() => document.querySelector('#prompt textarea').value")
            sys.exit(f"no image #{self.images} in the chat; the box holds {box!r}; the chat ends with:\n"
                     + page.locator("#chat").inner_text()[-800:])
        b = page.evaluate("() => window.__bench")
        preview = (b["preview"] - b["enter"]) / 1e3 if b.get("preview") else None
        return (b["image"] - b["enter"]) / 1e3, preview


def phase(chat: Chat, client, runs: int, seed0: int) -> dict[str, list]:
    """`runs` chat and API generations, alternately (the side that goes first rotates), same seeds on both."""
    out: dict[str, list] = {"chat": [], "api": [], "preview": []}
    for r in range(runs):
        seed = seed0 + r

        def by_chat():
            image, preview = chat.send(seed)
            out["chat"].append(image)
            out["preview"].append(preview)

        def by_api():
            t0 = time.perf_counter()
            files = client.predict(PROMPT, "", "", 0, -1, seed, 0, 0, 1, "default", api_name="/generate")
            out["api"].append(time.perf_counter() - t0)
            assert len(files) == 1, "expected one image from /generate"

        for side in ((by_chat, by_api) if r % 2 == 0 else (by_api, by_chat)):
            side()
    return out


def row(name: str, xs: list[float]) -> list[str]:
    return [name, f"{med(xs):.3f}", f"{percentile(xs, 0.9):.3f}", f"{min(xs):.3f}-{max(xs):.3f}"]


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--load", type=int, default=1, help="busy processes in the loaded phase (default 1)")
    p.set_defaults(runs=15)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    port, outputs = free_port(), Path(tempfile.mkdtemp(prefix="bench-chat-browser-"))
    app = start_app(port, args.threads, outputs)
    busy: list[subprocess.Popen] = []
    results = {}
    try:
        client = connect(f"http://127.0.0.1:{port}/", app)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            chat = Chat(browser, f"http://127.0.0.1:{port}/")
            phase(chat, client, 2, 900)  # warm-up: model load, first session, page's first reply
            results["quiet"] = phase(chat, client, args.runs, 1000)
            busy = [subprocess.Popen([sys.executable, "-c", BUSY], env=common.child_env(1))
                    for _ in range(args.load)]
            time.sleep(2)
            results["loaded"] = phase(chat, client, args.runs, 2000)
            browser.close()
    finally:
        for proc in busy + [app]:
            proc.terminate()
            proc.wait(30)
    rows, verdicts = [], []
    for name, r in results.items():
        previews = [x for x in r["preview"] if x is not None]
        rows += [row(f"{name}: chat, Enter -> image loaded (Chromium)", r["chat"]),
                 row(f"{name}: `/generate`, send -> file received (gradio_client)", r["api"])]
        if previews:
            rows.append(row(f"{name}: chat, Enter -> first live preview", previews))
    quiet, loaded = results["quiet"], results["loaded"]
    q_ratio = med(quiet["chat"]) / med(quiet["api"])
    l_ratio = percentile(loaded["chat"], 0.9) / percentile(loaded["api"], 0.9)
    verdicts = [f"- quiet, median chat / API: **{q_ratio:.2f}x**, {common.verdict(q_ratio, 1.2)}",
                f"- loaded ({args.load} busy process(es)), p90 chat / API: **{l_ratio:.2f}x**, "
                f"{common.verdict(l_ratio, 1.5)}",
                f"- replies with a live preview: {sum(x is not None for x in quiet['preview'] + loaded['preview'])}"
                f" of {len(quiet['preview'] + loaded['preview'])}"]
    section = (common.header("Chat in a real browser against the API (bench_chat_browser.py)", args)
               + f"\nBuilt-in model at its defaults, 64x64, one image; {args.runs} runs a side a phase, "
               "chat and API alternately in one run (seconds).\n\n"
               + table(["what", "median s", "p90 s", "range s"], rows) + "\n\n" + "\n".join(verdicts) + "\n")
    common.report(section, args)


if __name__ == "__main__":
    main()
