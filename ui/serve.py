"""Launching the page: `launch` is the one place with the server's safety options, `LoginThrottle` slows password
guessing. The composer (serving.py) decides what to serve; whether users may name files and folders on the server
is decided once, in app.py, as `EngineConfig.local_paths`, and the page reads it from `engine.config`.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs

import gradio as gr

from engine.images.loading import MAX_BYTES
from studio.throttle import Throttle
from ui.layout import CSS, JS

MAX_FILE_SIZE = f"{MAX_BYTES // 2**20}mb"  # the page's uploads: the engine's one image limit
MAX_SESSIONS = 2000  # page states kept in memory (~0.37 MB each: 740 MB at most); an older one is dropped, and
# its tab's next event says the session was lost and starts over from the stored chat


class LoginThrottle:
    """ASGI wrapper of the app: wrong logins for one account from one client address make each further attempt
    wait longer before it is checked, parallel ones in turn (`studio.throttle.Throttle`); a success clears it.
    Gradio's auth callable is not told who is calling, hence a wrapper around the whole app rather than the
    callable."""

    def __init__(self, app, throttle: Throttle | None = None):
        self.app, self.throttle = app, throttle or Throttle()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/login"):
            return await self.app(scope, receive, send)
        body, replay = await read_small_body(receive)
        user = parse_qs(body.decode("latin-1")).get("username", [""])[0][:64]
        key = f"{(scope.get('client') or ('unknown',))[0]} {user}"
        await asyncio.sleep(self.throttle.reserve(key))
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(key)


async def read_small_body(receive, limit: int = 64 * 1024):
    """The request body (at most `limit` bytes kept: a login form is small) and a `receive` that replays it."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size <= limit:
            chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def launch(demo: gr.Blocks, host: str, port: int, share: bool = False, auth: tuple[str, str] | None = None,
           mcp: bool = False, max_file_size: str = MAX_FILE_SIZE, trusted_proxies: tuple[str, ...] = (),
           max_sessions: int = MAX_SESSIONS) -> None:
    """Start serving without blocking; the one place that sets the server's safety options. `mcp`: gradio's MCP
    server too (apis.add_tools added the tools). `trusted_proxies`: the addresses whose X-Forwarded-For uvicorn
    believes (none by default: a client on this machine could otherwise claim any address, and the login
    throttle counts by address). `max_sessions`: the sessions whose page state gradio keeps in memory, the oldest
    dropped beyond it (gradio copies every component's config into each session: 0.37 MB each here, so its default
    of 10000 let a script that opens sessions and sends one cheap event each take 3.7 GB)."""
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(trusted_proxies)  # read by uvicorn as gradio starts it
    # ssr_mode=False: gradio 6.27-6.31 has an auth bypass through server-side rendering.
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=max_file_size,
                show_error=False, ssr_mode=False, css=CSS, js=JS, prevent_thread_lock=True, quiet=True,
                footer_links=["api"], mcp_server=mcp, state_session_capacity=max_sessions)
    if auth is not None:  # gradio builds its app inside launch: wrap the built stack (add_middleware is too late)
        app = demo.server_app
        app.middleware_stack = LoginThrottle(app.middleware_stack or app.build_middleware_stack())
