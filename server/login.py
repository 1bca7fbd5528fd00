"""`LoginThrottle`: an ASGI layer that slows password guessing at gradio's `/login` (gradio's auth callable is
not told who is calling). The composer puts it below the front when the server has `--auth`."""

from __future__ import annotations

import asyncio
import math
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

from server.asgi import read_all, replay


class LoginThrottle:
    """ASGI wrapper of the app: wrong logins for one account from one client address make each further attempt
    wait longer before it is checked, parallel ones in turn (`throttle`: a studio.throttle.Throttle, given by the
    composer); a success clears it."""

    def __init__(self, app, throttle):
        self.app, self.throttle = app, throttle

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/login"):
            return await self.app(scope, receive, send)
        body = await read_all(receive, keep=64 * 1024)  # a login form is small: more is not kept
        replayed = replay(body, receive)
        user = parse_qs(body.decode("latin-1")).get("username", [""])[0][:64]
        key = f"{(scope.get('client') or ('unknown',))[0]} {user}"
        wait = self.throttle.reserve(key)
        if wait == math.inf:  # guesses for this account already queue past the cap: refused unchecked
            return await JSONResponse({"detail": "Too many wrong logins for this account from your address. "
                                                 "Wait a minute, then log in again."}, 429)(scope, replayed, send)
        await asyncio.sleep(wait)
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replayed, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(key)
