"""`Front`: one ASGI layer in front of every route of the server (the page, gradio's own routes, the APIs, MCP).
It refuses, before any route reads a byte:

- a `Host` the server was not started for, on a loopback server (DNS rebinding would otherwise hand a web page
  the loopback-only powers: models and LoRAs from local paths, importing any folder);
- a write (POST, PUT, PATCH, DELETE) sent by a browser from another site (`Origin` other than the server's own,
  or `Sec-Fetch-Site: cross-site`): a plain form post needs no CORS preflight, so CORS alone does not stop it;
- a body over the limit, whether it says its length (`Content-Length`) or not (`Transfer-Encoding: chunked`,
  read here up to the limit and no further);
- uploads from one client address beyond a byte budget per window (gradio keeps uploaded files for hours);
- with `--api-token`, a call of a programmatic endpoint through gradio's own routes (`/gradio_api/call/...`, or
  `queue/join` and `run/...` naming a public API endpoint) without the token. The page's own events stay as
  open as the page (`--auth` closes both).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from server.asgi import replay
from server.gone import Gone

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Limits:
    """What one request and one client may send (bytes), set by the composer from the engine's image limit."""

    body: int  # any request's body
    upload: int  # one request to gradio's /upload (a message may carry a few images)
    upload_window: int  # one client address's uploads per `window_s`
    window_s: float = 600.0


@dataclass
class Front:
    """See the module docstring. `app`: the server's ASGI stack; `loopback`: the server answers only to this
    machine; `token`: --api-token; `public`: gradio's public API endpoints (name and fn index) the token guards."""

    app: object
    limits: Limits
    loopback: bool = True
    token: str | None = None
    public_names: frozenset = frozenset()
    public_fns: frozenset = frozenset()
    trusted: frozenset = frozenset()  # --trusted-proxy addresses ("*": any): only their X-Forwarded-Host counts
    uploads: UploadBudget = field(default_factory=lambda: UploadBudget())

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self.refuse_host(headers) or self.refuse_origin(scope, headers)
        if refusal is None and scope["type"] == "http":
            refusal, receive = await self.read_body(scope, headers, receive)
        if refusal is not None:
            status, text = refusal
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await JSONResponse({"error": text, "detail": text}, status)(scope, receive, send)
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------------------------------ who may ask
    def refuse_host(self, headers: dict) -> tuple[int, str] | None:
        if not self.loopback:
            return None
        host = hostname(headers.get("host", ""))
        if host in LOOPBACK_NAMES:
            return None
        return 421, (f"This server answers only to localhost (it was started on a loopback address), not to "
                     f"the host name {host[:100]!r}. Open it as http://127.0.0.1:<port>, or start it with "
                     "--host 0.0.0.0 (and --auth) to serve other names.")

    def refuse_origin(self, scope, headers: dict) -> tuple[int, str] | None:
        if scope["type"] == "http" and scope.get("method") not in WRITES:
            return None
        origin = headers.get("origin")
        cross = headers.get("sec-fetch-site") == "cross-site"
        if origin is None and not cross:
            return None  # not from a browser page (curl, the SDKs): the token or login guards those
        client = (scope.get("client") or ("unknown",))[0]
        proxied = "*" in self.trusted or client in self.trusted  # else any client could name its own site here
        own = {headers.get("host", ""), headers.get("x-forwarded-host", "") if proxied else ""} - {""}
        if not cross and origin != "null" and urlsplit(origin).netloc in own:
            return None
        return 403, (f"A page of another site ({(origin or 'unknown')[:100]}) may not send requests that change "
                     "anything here. Use the studio's own page, or call the API from a program (no Origin header). "
                     "Behind a reverse proxy, start the app with --trusted-proxy <its address> so the host it "
                     "forwards (X-Forwarded-Host) counts as this server's.")

    # ------------------------------------------------------------------------------------------ what it sends
    async def read_body(self, scope, headers: dict, receive):
        """(refusal, receive): the body checked against the limits. It is read here (and `receive` replays it)
        when it came without a length, or when it names the endpoint it calls and the token is missing."""
        path, method = scope.get("path", "").rstrip("/"), scope.get("method")
        upload = method == "POST" and path.endswith("/upload")
        limit = self.limits.upload if upload else self.limits.body
        # a Transfer-Encoding beside a Content-Length: the length is not what the server will read
        length = "" if "transfer-encoding" in headers else headers.get("content-length", "")
        client = (scope.get("client") or ("unknown",))[0]
        if length.isdigit() and int(length) > limit:
            return too_large(int(length), limit), receive
        if upload and length.isdigit() and not self.uploads.take(client, int(length), self.limits):
            return self.over_budget(), receive
        guarded = self.token and not self.has_token(headers)
        if guarded and self.names_public(path):
            return self.needs_token(), receive
        # gradio takes `fn_index` from the body of queue/join and of any /run/NAME or /api/NAME (before the name)
        by_index = guarded and method == "POST" and (path.endswith("/queue/join")
                                                     or bool({"run", "api"} & set(path.split("/"))))
        if method not in WRITES or (length.isdigit() and not by_index):
            return None, receive
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return (400, "The request ended before its body did."), receive
            body += message.get("body", b"")
            if len(body) > limit:
                return too_large(len(body), limit, counted=True), receive
            more = message.get("more_body", False)
        if upload and not length.isdigit() and not self.uploads.take(client, len(body), self.limits):
            return self.over_budget(), receive
        if by_index and self.calls_public(bytes(body)):
            return self.needs_token(), receive
        return None, replay(bytes(body), receive)

    def over_budget(self) -> tuple[int, str]:
        mb, minutes = self.limits.upload_window // 2**20, self.limits.window_s / 60
        return 429, (f"Uploads from your address passed {mb} MB in {minutes:.0f} minutes. Wait a few minutes, "
                     "or send smaller images.")

    # ------------------------------------------------------------------------------------ --api-token, gradio
    def has_token(self, headers: dict) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and secrets.compare_digest(
            value.strip().encode(), self.token.encode())

    def names_public(self, path: str) -> bool:
        """/gradio_api/call/NAME[/EVENT], /call/v2/NAME, /run/NAME, /api/NAME with NAME a public endpoint."""
        parts = path.split("/")
        return any(part in ("call", "v2", "run", "api") and i + 1 < len(parts) and parts[i + 1] in
                   self.public_names for i, part in enumerate(parts))

    def calls_public(self, body: bytes) -> bool:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return False  # gradio answers an unreadable body itself
        if not isinstance(payload, dict):
            return False
        index = payload.get("fn_index")
        try:  # gradio's model reads "7" and 7.0 as 7
            index = int(index) if index is not None and not isinstance(index, bool) else None
        except (TypeError, ValueError, OverflowError):
            index = None
        return index in self.public_fns or payload.get("api_name") in self.public_names

    @staticmethod
    def needs_token() -> tuple[int, str]:
        return 401, ("This endpoint is part of the server's API, which needs the header 'Authorization: Bearer "
                     "<the server's --api-token>' (gradio_client: Client(url, headers={'Authorization': "
                     "'Bearer ...'})).")


def too_large(size: int, limit: int, counted: bool = False) -> tuple[int, str]:
    said = "more than " if counted else ""
    return 413, (f"The request body is {said}{size / 2**20:.1f} MB; this server reads at most "
                 f"{limit / 2**20:.0f} MB per request. Send a smaller image.")


def hostname(host: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:7860' -> '::1' (lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class UploadBudget:
    """Bytes uploaded per client address over a sliding window (at most `clients` addresses remembered)."""

    def __init__(self, clients: int = 10000):
        self.clients = clients
        self._sent: OrderedDict[str, list[tuple[float, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, size: int, limits: Limits) -> bool:
        with self._lock:
            now = time.monotonic()
            recent = [(t, n) for t, n in self._sent.get(client, []) if now - t < limits.window_s]
            if sum(n for _, n in recent) + size > limits.upload_window:
                self._sent[client] = recent
                return False
            recent.append((now, size))
            self._sent[client] = recent
            self._sent.move_to_end(client)
            while len(self._sent) > self.clients:
                self._sent.popitem(last=False)
            return True


def install(demo, *, limits: Limits, loopback: bool, token: str | None = None, on_gone=None,
            trusted_proxies: tuple[str, ...] = ()) -> Front:
    """Put a `Front` before the launched `demo`'s whole app (after gradio built it in launch: add_middleware is
    too late there); the public API endpoints it guards with `token` are read from the page's events. `on_gone`
    (session hash -> None): called when a page session cancels or hangs up (server/gone.py), behind the front."""
    public = [(i, fn.api_name) for i, fn in demo.fns.items() if getattr(fn, "api_visibility", "") == "public"]
    app = demo.server_app
    inner = app.middleware_stack or app.build_middleware_stack()
    front = Front(Gone(inner, on_gone) if on_gone else inner, limits, loopback, token,
                  frozenset(name for _, name in public), frozenset(i for i, _ in public), frozenset(trusted_proxies))
    app.middleware_stack = front
    return front
