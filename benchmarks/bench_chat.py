"""Chat round trip: a gradio_client call to the app's `/generate` endpoint, minus the engine's own time.

    python benchmarks/bench_chat.py --model builtin
    python benchmarks/bench_chat.py --model /tmp/tiny-sd15 --size 64 --steps 4 --runs 3 --no-write   # a trial

Method: the app (`ui.app.build(engine, model)`, launched with `ui.serve.launch` as `app.py` does) serves on a free
loopback port in this process. The engine instance's `generate` and the API handler `ui.api.generate` are
wrapped to time each call inside the server, so every round trip (send to files received by the client) is paired
with the engine time of that very generation: overhead = round trip - Engine.generate. Alternating with it, in the
same run: a direct `Engine.generate` of the same request, and gradio's floor: a minimal Blocks app served by a
child process, whose endpoint only saves a PNG of the same size and returns it (queue, HTTP/SSE, download).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import med, ms, spread, table, timed

PROMPT = "a big red circle on the left, blue background"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(fn, times: list[float]):
    """`fn`, recording the duration of each call in `times` (the benchmark's own probe; nothing else changes)."""
    def wrapped(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            times.append(time.perf_counter() - t0)

    return wrapped


def floor_app(size: int):
    """The least a gradio endpoint that returns one PNG file can cost."""
    import gradio as gr
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="bench-chat-floor-"))

    def one_png(prompt: str) -> list[str]:
        path = folder / f"floor-{time.perf_counter_ns()}.png"
        Image.new("RGB", (size, size), "gray").save(path)
        return [str(path)]

    with gr.Blocks() as demo:
        box, files = gr.Textbox(), gr.File(file_count="multiple")
        gr.Button().click(one_png, box, files, api_name="floor", concurrency_limit=1)
    return demo


def floor_server(port: int, size: int) -> None:
    """Serve the floor app in this (child) process until it is terminated."""
    floor_app(size).queue(max_size=16, default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, quiet=True, ssr_mode=False)


def connect(url: str, proc, timeout: float = 120.0):
    """A client for `url`, waiting for the server process `proc` to come up."""
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet: connection refused or an empty reply
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-server":
        return floor_server(int(sys.argv[2]), int(sys.argv[3]))
    args = common.parser(__doc__).parse_args()
    common.setup(args)

    from gradio_client import Client

    from engine.engine import Engine
    from engine.request import Request
    from ui import api as ui_api
    from ui import app as ui_app
    from ui import serve as ui_serve

    engine = Engine(device="cpu", local_paths=True)
    engine.load(args.model)
    generate, inside, handler = engine.generate, [], []
    engine.generate = probe(generate, inside)
    ui_api.generate = probe(ui_api.generate, handler)
    request = Request(prompt=PROMPT, model=args.model, seed=7, steps=args.steps, width=args.size, height=args.size)
    size = generate(request).images[0].width
    demo = ui_app.build(engine, args.model)
    demo.queue(max_size=16, default_concurrency_limit=1)
    port, floor_port = free_port(), free_port()
    floor = subprocess.Popen([sys.executable, __file__, "--floor-server", str(floor_port), str(size)],
                             cwd=common.ROOT, env=common.child_env(args.threads), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    start_s, _ = timed(lambda: ui_serve.launch(demo, "127.0.0.1", port))
    try:
        connect_s, client = timed(lambda: Client(f"http://127.0.0.1:{port}/", verbose=False))
        floor_client = connect(f"http://127.0.0.1:{floor_port}/", floor)
        engine_s, handler_s = [], []

        def call():  # the README's call: prompt, negative, model ("" = the server's), steps, guidance, seed, w, h, n
            n = len(inside)
            files = client.predict(PROMPT, "", "", args.steps or 0, -1, 7, args.size or 0, args.size or 0, 1,
                                   "default", api_name="/generate")
            assert len(files) == 1 and len(inside) == n + 1, "expected one image from one generation"
            engine_s.append(inside[-1])
            handler_s.append(handler[-1])

        first_s, _ = timed(call)  # warm-up: the first request of a session
        floor_client.predict(PROMPT, api_name="/floor")
        engine_s.clear(), handler_s.clear()
        times = common.alternate({"app": call, "direct": lambda: generate(request),
                                  "floor": lambda: floor_client.predict(PROMPT, api_name="/floor")}, args.runs)
    finally:
        demo.close()
        floor.terminate()
        floor.wait(timeout=30)
    trip = times["app"]
    conservative = med(trip) - med(times["direct"])
    overhead = [t - e for t, e in zip(trip, engine_s)]
    in_app = [h - e for h, e in zip(handler_s, engine_s)]
    transport = [t - h for t, h in zip(trip, handler_s)]
    rows = [["client round trip to `/generate` (send to files received)", ms(med(trip)), spread(trip)],
            ["Engine.generate inside the server, same calls", ms(med(engine_s)), spread(engine_s)],
            ["**overhead** = round trip - engine time, per call", f"**{ms(med(overhead))}**", spread(overhead)],
            ["of which the API handler outside the engine (request, PNG save)", ms(med(in_app)), spread(in_app)],
            ["of which gradio and the client (queue, HTTP/SSE, download)", ms(med(transport)), spread(transport)],
            ["gradio's floor: a minimal endpoint returning one PNG (child process)", ms(med(times["floor"])),
             spread(times["floor"])],
            ["Engine.generate direct in this process (reference)", ms(med(times["direct"])), spread(times["direct"])],
            ["round trip - direct Engine.generate (medians)", ms(conservative), ""]]
    section = (common.header("Chat round trip (bench_chat.py)", args)
               + f"\nThe `/generate` endpoint through gradio_client on loopback, {size}x{size}; app start "
               f"{start_s:.2f} s, client connect {connect_s:.2f} s, first call {first_s:.2f} s (warm-up, not "
               "counted). Engine and handler times are measured inside the server for each call (wrapped "
               "`Engine.generate` and `ui.api.generate`), so the overhead is exactly what the app and gradio add "
               "to that generation.\n\n" + table(["what", "median ms", "range ms"], rows)
               + f"\n\noverhead {ms(med(overhead))} ms: {common.verdict(med(overhead) * 1e3, 150)} ms. Counted "
               f"against the direct engine time instead: {ms(conservative)} ms: "
               f"{common.verdict(conservative * 1e3, 150)} ms. Part of gradio's work overlaps the generation (so the "
               "floor can exceed the overhead), and the engine runs slower inside the server when gradio's threads "
               "share the cores with it: the first figure is what the app adds on top of its own generation, the "
               "second what a user waits beyond a bare engine call.\n")
    common.report(section, args)


if __name__ == "__main__":
    main()
