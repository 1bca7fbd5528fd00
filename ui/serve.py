"""Launching the page: `launch` is the one place with the server's safety options, `LoginThrottle` slows password
guessing. The composer (serving.py) decides what to serve; whether users may name files and folders on the server
is decided once, in app.py, as `EngineConfig.local_paths`, and the page reads it from `engine.config`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import gradio as gr

from engine.images.loading import MAX_BYTES
from ui.layout import CSS, JS

MAX_FILE_SIZE = f"{MAX_BYTES // 2**20}mb"  # the page's uploads: the engine's one image limit


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


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False, auth: tuple[str, str] | None = None,
           mcp: bool = False, max_file_size: str = MAX_FILE_SIZE) -> None:
    """Start serving without blocking; the one place that sets the server's safety options. `mcp`: gradio's MCP
    server too (apis.add_tools added the tools)."""
    # ssr_mode=False: gradio 6.27-6.31 has an auth bypass through server-side rendering.
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=max_file_size,
                show_error=False, ssr_mode=False, css=CSS, js=JS, prevent_thread_lock=True, quiet=True,
                footer_links=["api"], mcp_server=mcp)
    if auth is not None:  # gradio builds its app inside launch: wrap the built stack (add_middleware is too late)
        app = demo.server_app
        app.middleware_stack = LoginThrottle(app.middleware_stack or app.build_middleware_stack())
