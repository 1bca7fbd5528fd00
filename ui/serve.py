"""Launching the page: `launch` is the one place with gradio's safety options (the login throttle and the HTTP
front are the server package's, put in front by the composer, serving.py, which also decides what to serve).
Whether users may name files and folders on the server is decided once, in app.py, as
`EngineConfig.local_paths`, and the page reads it from `engine.config`.
"""

from __future__ import annotations

import os

import gradio as gr

from engine.images.loading import MAX_BYTES
from ui.layout import CSS, JS

MAX_FILE_SIZE = f"{MAX_BYTES // 2**20}mb"  # the page's uploads: the engine's one image limit
MAX_SESSIONS = 2000  # page states kept in memory (~0.37 MB each: 740 MB at most); an older one is dropped, and
# its tab's next event says the session was lost and starts over from the stored chat


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
