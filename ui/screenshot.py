"""Drive the app in a real browser for a few turns and save a screenshot (the README's assets/screenshot.png).

    python -m ui.screenshot                       # starts `python app.py` on the built-in model, then drives it
    python -m ui.screenshot --url http://127.0.0.1:7860 --out assets/screenshot.png
    python -m ui.screenshot --size 390x844 --out assets/screenshot_phone.png   # a phone's viewport

Prints the time from Enter to image for each prompt. Needs Debian's Chromium and the playwright package
(`apt-get install -y chromium && pip install playwright`; no `playwright install`, no emoji font: the page draws
none). The app it starts keeps its images in a temporary folder, so the page has its Library tab and chat list.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPTS = ["a big red circle on a blue background",
           "a small yellow triangle on the left, green background --seed 42",
           "a purple square on a yellow background --n 4"]
ROOT = Path(__file__).resolve().parent.parent


def start_app(model: str, outputs: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port),
                             "--outputs", outputs], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"app.py exited with code {proc.returncode}") from None
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the app did not answer on {url} within 2 minutes")


def drive(url: str, out: Path, prompts: list[str], size: tuple[int, int] = (1440, 1000)) -> list[float]:
    from playwright.sync_api import sync_playwright

    timings = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        page.wait_for_selector("#prompt textarea", timeout=60_000)
        page.wait_for_function("!document.querySelector('#status').innerText.includes('Loading')", timeout=300_000)
        count = 0
        for prompt in prompts:
            page.fill("#prompt textarea", prompt)
            started = time.perf_counter()
            page.press("#prompt textarea", "Enter")
            asked = re.search(r"--n (\d+)", prompt)
            count += int(asked.group(1)) if asked else 1
            page.wait_for_selector(f"#chat img[src*='studio-{count:04d}']", timeout=300_000)
            page.wait_for_selector("#prompt button.submit-button", timeout=60_000)  # the turn has ended
            timings.append(time.perf_counter() - started)
            print(f"{timings[-1]:6.2f}s  Enter to image: {prompt}")
        page.wait_for_timeout(800)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an app that is already running; default: start one")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshot.png"))
    parser.add_argument("--size", default="1440x1000", help="the browser's viewport, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    size = tuple(int(n) for n in args.size.lower().split("x"))
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:  # a developer's tool: not in requirements.txt
        raise SystemExit("ui.screenshot drives Chromium with playwright, which is not installed: pip install "
                         "playwright (or pip install -r requirements-test.txt)")
    with tempfile.TemporaryDirectory(prefix="screenshot-outputs-") as outputs:
        proc, url = (None, args.url) if args.url else start_app(args.model, outputs)
        try:
            drive(url, Path(args.out), PROMPTS, size)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
