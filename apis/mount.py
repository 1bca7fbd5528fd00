"""`mount(demo, ...)`: the A1111 and OpenAI APIs (and, with --mcp, the MCP tools) on the server of the page.

Gradio builds its FastAPI app inside `demo.launch()`; routes included afterwards are served by it (Starlette reads
its route list on every request, and gradio has no catch-all route they could hide behind). The MCP tools are
events of the page, so they are added before launch:

    demo = build(engine, model)
    if args.mcp:
        apis.add_tools(demo, demo.studio)
    launch(demo, host, port, auth=auth, mcp=args.mcp)           # demo.launch(..., mcp_server=args.mcp)
    apis.mount(demo, auth=auth, api_token=args.api_token)
"""

from __future__ import annotations

import logging

import gradio as gr
from starlette.responses import JSONResponse
from starlette.routing import Mount

from apis import a1111, openai_images
from apis.auth import Gate
from apis.mcp_calls import McpCalls
from apis.mcp_tools import keep_only_tools
from studio.accounts import Accounts
from studio.jobs import Jobs

log = logging.getLogger(__name__)

MCP_PATH = "/gradio_api/mcp"


def mount(demo: gr.Blocks, auth=None, api_token: str | None = None) -> Jobs:
    """Serve /sdapi/v1/* and /v1/images/* from the launched `demo`'s app, their generations in the studio's line
    with the chat's, behind `auth` (HTTP basic) or `api_token` (Bearer) when given; the MCP server, when on, keeps
    only the studio's tools, sits behind the same gate, and a client's cancel or hang-up stops its tool call
    (`apis.mcp_calls`). Returns the APIs' jobs (progress, interrupt)."""
    app, studio = demo.server_app, demo.studio
    gate = Gate(Accounts.of(auth), api_token or None)  # auth: Accounts, or one (user, password)
    jobs = studio.jobs  # one set for every programmatic door: A1111's /progress sees MCP's too
    app.include_router(a1111.build_router(studio, jobs, gate))
    app.include_router(openai_images.build_router(studio, jobs, gate))
    mcp = getattr(demo, "mcp_server_obj", None)
    if mcp is not None:
        keep_only_tools(mcp)
        around_mcp(app, lambda inner: McpCalls(inner, gate), "its tool calls could not be stopped")
        if not gate.open:
            around_mcp(app, lambda inner: GatedASGI(inner, gate), "the tools would be served unguarded")
    log.info("APIs mounted: /sdapi/v1 (AUTOMATIC1111), /v1/images (OpenAI)%s%s", ", MCP" if mcp else "",
             "" if gate.open else ", behind " + " or ".join(n for n, on in (("--auth", auth), ("--api-token",
                                                                                               api_token)) if on))
    return jobs


def around_mcp(app, layer, without: str) -> None:
    """Put `layer(gradio's MCP app)` in its place at MCP_PATH (the gate goes last, so it runs first: gradio
    serves MCP without its login, as an MCP client can't log in). `without`: what would go wrong unmounted."""
    for route in app.router.routes:
        if isinstance(route, Mount) and route.path == MCP_PATH:
            route.app = layer(route.app)
            return
    raise RuntimeError(f"gradio's MCP server is not mounted at {MCP_PATH}; {without}.")


class GatedASGI:
    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            client = (scope.get("client") or ("unknown",))[0]
            if not await self.gate.check(client, header):
                response = JSONResponse({"error": f"Incorrect or missing credentials. {self.gate.hint()}"}, 401,
                                        headers={"WWW-Authenticate": 'Basic realm="studio"'} if self.gate.auth
                                        else None)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
