"""Serving the page: `serve(args, config)` is `python app.py`; `launch` is the one place with the server's safety
options; `parse_auth` reads --auth.

Whether users may name files and folders on the server is decided once, in app.py, as
`EngineConfig.local_paths`; the page reads it from `engine.config`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections import OrderedDict

import gradio as gr

from engine.request import UserError
from ui.app import build
from ui.layout import CSS, JS
from ui.studio import ModelStatus

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_FILE_SIZE = "20mb"


class LoginThrottle:
    """ASGI wrapper of the app: after `free` wrong logins from one client address, each further attempt waits
    `base_s * 2**(n - free)` seconds (at most `cap_s`) before it is checked; a success clears the count.

    An attempt counts as failed until it succeeds, so parallel guesses slow each other down too. Gradio's auth
    callable is not told who is calling, hence a wrapper around the whole app rather than the callable."""

    def __init__(self, app, free: int = 3, base_s: float = 0.5, cap_s: float = 30.0, clients: int = 10000):
        self.app, self.free, self.base_s, self.cap_s, self.clients = app, free, base_s, cap_s, clients
        self.failures: OrderedDict[str, int] = OrderedDict()

    def delay(self, failures: int) -> float:
        return 0.0 if failures < self.free else min(self.cap_s, self.base_s * 2 ** (failures - self.free))

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/login"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        before = self.failures.get(client, 0)
        self.failures[client] = before + 1  # until it succeeds
        self.failures.move_to_end(client)
        while len(self.failures) > self.clients:
            self.failures.popitem(last=False)
        await asyncio.sleep(self.delay(before))
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.failures.pop(client, None)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """--auth USER:PASSWORD as gradio's (user, password); None when not given."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD, e.g. --auth alice:correct-horse-battery")
    return user, password


def zero_gpu(engine):
    """On a Hugging Face ZeroGPU Space, run each generation inside `spaces.GPU` (no live preview there)."""
    import spaces

    @spaces.GPU(duration=120)
    def generate_on_gpu(request):
        return engine.generate(request)

    return generate_on_gpu


def serve(args, config, library=None) -> int:
    """The chat on args.host:args.port (loopback by default) for an `EngineConfig`, the model loading in the
    background."""
    on_space = bool(os.environ.get("SPACE_ID"))
    has_spaces = importlib.util.find_spec("spaces") is not None
    if has_spaces:
        import spaces  # noqa: F401  (must come before torch touches CUDA on ZeroGPU)
    import apis
    from engine.engine import Engine

    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0") if on_space else args.host
    auth = parse_auth(args.auth)
    if getattr(args, "ray", None) is None:
        engine = Engine(config)
    else:  # --ray [ADDRESS]: every generation on Ray Serve replicas (apis/ray_serve.py)
        from apis.ray_serve import remote_engine

        engine = remote_engine(config, args.model, args.replicas, args.gpus_per_replica, address=args.ray or None)
    status = ModelStatus(args.model)
    if has_spaces and on_space:  # ZeroGPU: CUDA exists only inside spaces.GPU calls, so load on first use
        status.text, status.done = f"Model **{args.model}** loads with the first message.", True
    demo = build(engine, args.model, gpu=zero_gpu(engine) if has_spaces and on_space else None, status=status,
                 max_queue=args.max_queue, library=library, on_space=on_space)
    mcp = bool(getattr(args, "mcp", False))
    if mcp:
        apis.add_tools(demo, demo.studio)  # before launch: gradio's MCP server reads the page's endpoints there
    # generations wait in the studio's own line (bounded by --max-queue, with a "busy" reply); gradio's queue
    # holds only what is left, so its bound is a backstop that a full line of generations never reaches
    demo.queue(max_size=max(64, 4 * args.max_queue), default_concurrency_limit=1)
    if args.share and auth is None:
        print("WARNING: --share makes a public link that anyone who has it can use (and spend your GPU on). "
              "Add --auth USER:PASSWORD.", flush=True)
    if host not in LOOPBACK and auth is None and not on_space:
        print(f"WARNING: listening on {host}: anyone on your network can use the app. Add --auth USER:PASSWORD.",
              flush=True)
    launch(demo, host, int(os.environ.get("GRADIO_SERVER_PORT", args.port)) if on_space else args.port,
           share=args.share, auth=auth, mcp=mcp)
    apis.mount(demo, auth=auth, api_token=getattr(args, "api_token", None))  # A1111, OpenAI (and MCP's guard)
    if not status.done:
        status.start(engine)  # after the page is up, so loading never delays it
    if args.share:
        print(f"Public link: {demo.share_url}" if demo.share_url else "The share link could not be created.",
              flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False, auth: tuple[str, str] | None = None,
           mcp: bool = False) -> None:
    """Start serving without blocking; the one place that sets the server's safety options. `mcp`: gradio's MCP
    server too (apis.add_tools added the tools)."""
    # ssr_mode=False: gradio 6.27-6.31 has an auth bypass through server-side rendering.
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=MAX_FILE_SIZE,
                show_error=False, ssr_mode=False, css=CSS, js=JS, prevent_thread_lock=True, quiet=False,
                footer_links=["api"], mcp_server=mcp)
    if auth is not None:  # gradio builds its app inside launch: wrap the built stack (add_middleware is too late)
        app = demo.server_app
        app.middleware_stack = LoginThrottle(app.middleware_stack or app.build_middleware_stack())
