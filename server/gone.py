"""`Gone`: tells the studio at once when a page session's client cancels (`POST /gradio_api/cancel`) or hangs up
(its event stream `GET /gradio_api/queue/data` disconnects before the server ended it), by calling
`on_gone(session_hash)` (the composer passes `studio.stops.stop`). gradio's own handling of both can leave the
run going (studio/stops.py says why). An ASGI layer inside `server.front.Front` (which installs it): what
reaches it passed the front.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from server.asgi import read_all, replay

log = logging.getLogger(__name__)


class Gone:
    def __init__(self, app, on_gone):
        self.app, self.on_gone = app, on_gone

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        if scope.get("method") == "POST" and path.endswith("/gradio_api/cancel"):
            body = await read_all(receive)
            self.tell(session_of_body(body), "cancelled")
            return await self.app(scope, replay(body, receive), send)
        if scope.get("method") == "GET" and path.endswith("/gradio_api/queue/data"):
            return await self.watch_stream(scope, receive, send)
        return await self.app(scope, receive, send)

    async def watch_stream(self, scope, receive, send):
        session = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash") or [""])[0]
        ended = False

        async def sending(message):
            nonlocal ended
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        async def receiving():
            message = await receive()
            if message["type"] == "http.disconnect" and not ended:
                self.tell(session, "hung up")
            return message

        await self.app(scope, receiving, sending)

    def tell(self, session: str, why: str) -> None:
        if session:
            stopped = self.on_gone(session[:100])
            if stopped:
                log.info("session %s %s: %d generation(s) stopped", session[:12], why, stopped)


def session_of_body(body: bytes) -> str:
    """The session of a cancel gradio will accept (a session hash, an event id and a function index), else ''."""
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(payload, dict) or not isinstance(payload.get("event_id"), str) \
            or not isinstance(payload.get("fn_index"), int):
        return ""
    value = payload.get("session_hash")
    return value if isinstance(value, str) else ""
