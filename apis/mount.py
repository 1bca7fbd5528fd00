"""`mount(app, studio, ...)`: the A1111 and OpenAI APIs on the FastAPI app that serves the page.

Gradio builds its FastAPI app inside `demo.launch()`; routes included afterwards are served by it (Starlette reads
its route list on every request, and gradio has no catch-all route they could hide behind):

    launch(demo, host, port, auth=auth)
    apis.mount(demo.server_app, demo.studio, auth=auth, api_token=args.api_token)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from apis import a1111, openai_images
from apis.auth import Gate
from apis.jobs import Jobs
from ui.studio import Studio

log = logging.getLogger(__name__)


def mount(app: FastAPI, studio: Studio, auth: tuple[str, str] | None = None, api_token: str | None = None) -> Jobs:
    """Serve /sdapi/v1/* and /v1/images/* from `app`, their generations in `studio.line` with the chat's; behind
    `auth` (HTTP basic) or `api_token` (Bearer) when given. Returns the API's jobs (progress, interrupt)."""
    gate = Gate(auth, api_token or None)
    jobs = Jobs(studio)
    app.include_router(a1111.build_router(studio, jobs, gate))
    app.include_router(openai_images.build_router(studio, jobs, gate))
    log.info("APIs mounted: /sdapi/v1 (AUTOMATIC1111), /v1/images (OpenAI)%s",
             "" if gate.open else " behind " + ("--auth" if auth else "") + (" --api-token" if api_token else ""))
    return jobs
