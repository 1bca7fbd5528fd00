"""`guarded_route`: the FastAPI route class of one API: the caller's credentials checked before anything is read,
and that API's own error shape for a refused caller or an unreadable body (A1111's and OpenAI's differ)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated, Any, Callable, TypeVar

from fastapi import Body
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from apis.auth import Gate
from engine.images.loading import MAX_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")
WATCH_S = 0.5  # how often a waiting API call checks that its client is still there
MAX_BODY = MAX_BYTES * 4 // 3 + 2**20  # an image at the engine's one limit, base64-encoded, and the rest
JsonBody = Annotated[dict[str, Any], Body(default_factory=dict)]  # the request's JSON object, as it came
ErrorShape = Callable[[int, str, str], JSONResponse]  # (status, kind, message) -> response


def guarded_route(gate: Gate, error: ErrorShape) -> type[APIRoute]:
    class GuardedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def route(request):
                client = request.client.host if request.client else "unknown"
                if not await gate.check(client, request.headers.get("authorization")):
                    response = error(401, "Unauthorized", f"Incorrect or missing credentials. {gate.hint()}")
                    if gate.auth is not None:
                        response.headers["WWW-Authenticate"] = 'Basic realm="studio"'
                    return response
                size = request.headers.get("content-length", "")
                if size.isdigit() and int(size) > MAX_BODY:
                    return error(413, "PayloadTooLarge", f"The request is {int(size) / 2**20:.0f} MB; at most "
                                 f"{MAX_BODY // 2**20} MB are read (an image of up to {MAX_BYTES // 2**20} MB, "
                                 "base64-encoded).")
                try:
                    return await handler(request)
                except RequestValidationError as e:
                    where = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
                                      for err in e.errors())
                    return error(422, "RequestValidationError", f"The request body could not be read ({where}). "
                                 "Send a JSON object with the API's field names.")

            return route

    return GuardedRoute


def owner_of(http, gate: Gate) -> str:
    """The owner of the jobs this HTTP request starts (`Gate.owner`): only it may stop them."""
    return gate.owner(http.client.host if http.client else "unknown", http.headers.get("authorization"))


async def while_connected(http, work: Callable[[threading.Event], T]) -> T:
    """`work(cancel)` in a worker thread; when the HTTP client goes away before it is done, `cancel` is set, so a
    generation nobody waits for stops within a step and leaves the line (as a closed chat tab does)."""
    cancel = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(work, cancel))
    while True:
        done, _ = await asyncio.wait({task}, timeout=WATCH_S)
        if done:
            return task.result()
        if not cancel.is_set() and await http.is_disconnected():
            log.info("API client gone: its generation is cancelled")
            cancel.set()
