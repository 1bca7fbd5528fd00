"""`McpCalls`: a stop switch for each MCP tool call, so a client's cancel or a dropped connection stops the engine.

Gradio's MCP server is stateless streamable HTTP: one HTTP POST carries one `tools/call`, and gradio runs the tool in
a worker thread while the POST's response stream waits for its answer. Neither way a client stops a call reached
that thread: `notifications/cancelled` arrives in another POST (to a fresh server instance that knows nothing of the
call), and a dropped connection cancels only the asyncio side. So the engine ran on (a 200-step job, to its end).

This ASGI layer sits around gradio's MCP mount (`apis.mount`, always). It gives each tools/call POST a `Call` (its
owner and a `threading.Event`), hands it to the tool through the request's state (`call_of`), and sets the event

- on `notifications/cancelled` naming the call's JSON-RPC id, from the same owner (address and account, see
  `Gate.owner`: JSON-RPC ids are only unique per client, so one owner's cancel never reaches another's call);
- on the call's `http.disconnect`, and when its HTTP exchange ends (answered, or the client gone: a tool that runs
  on then has nobody to answer).

The generation then stops within a step and keeps no image (`studio.jobs.Jobs.run`). Gradio's legacy SSE transport
(`/gradio_api/mcp/sse`) answers on another stream than the POST: its calls are not tracked here.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from apis.auth import Gate
from apis.routes import MAX_BODY

log = logging.getLogger(__name__)

STATE_KEY = "studio_mcp_call"  # the request state's key the tool finds its Call under
STREAMABLE_PATHS = ("/gradio_api/mcp", "/gradio_api/mcp/http")  # where gradio serves streamable HTTP (no '/')


@dataclass
class Call:
    owner: str  # 'mcp ADDRESS ACCOUNT': A1111's /interrupt from the same client does not stop MCP calls
    user: str = ""  # Gate.owner: whose turn in the line it takes (a signed-in user's, as in the chat)
    cancel: threading.Event = field(default_factory=threading.Event)


def call_of(request) -> Call | None:
    """The `Call` of the MCP tool call `request` (the tool's gr.Request) carries; None when the tool was called
    some other way (gradio's own API routes)."""
    return getattr(getattr(request, "state", None), STATE_KEY, None)


class McpCalls:
    """See the module docstring. `app`: gradio's MCP app; `gate`: the APIs' gate, for the caller's owner."""

    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate
        self._calls: dict[tuple[str, int | str], list[Call]] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        streamable = scope.get("path", "").rstrip("/").endswith(STREAMABLE_PATHS)
        if scope["type"] != "http" or scope.get("method") != "POST" or not streamable:
            return await self.app(scope, receive, send)
        body, receive = await read_body(receive)
        if body is None:
            return await JSONResponse({"error": f"An MCP message has at most {MAX_BODY // 2**20} MB."}, 413)(
                scope, receive, send)
        message = json_rpc(body)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        client = (scope.get("client") or ("unknown",))[0]
        owner = f"mcp {client} {self.gate.who(header)}".rstrip()
        if message.get("method") == "notifications/cancelled":
            self.cancel(owner, (message.get("params") or {}).get("requestId"))
        if message.get("method") != "tools/call" or not is_id(message.get("id")):
            return await self.app(scope, receive, send)
        call, key = Call(owner, self.gate.owner(client, header)), (owner, message["id"])
        scope.setdefault("state", {})[STATE_KEY] = call
        with self._lock:
            self._calls.setdefault(key, []).append(call)

        async def watched():
            received = await receive()
            if received["type"] == "http.disconnect" and not call.cancel.is_set():
                log.info("MCP client gone: its tool call is cancelled")
                call.cancel.set()
            return received

        try:
            await self.app(scope, watched, send)
        finally:
            call.cancel.set()  # answered (a no-op then), or the client gone
            with self._lock:
                calls = self._calls.get(key, [])
                calls.remove(call)
                if not calls:
                    self._calls.pop(key, None)

    def cancel(self, owner: str, request_id) -> None:
        """`notifications/cancelled` for `request_id` from `owner`: stop that call (unknown ids are ignored, as
        the MCP spec asks: the call may have finished already)."""
        if not is_id(request_id):
            return
        with self._lock:
            calls = list(self._calls.get((owner, request_id), []))
        for call in calls:
            log.info("MCP client cancelled its tool call %r", request_id)
            call.cancel.set()


def is_id(value) -> bool:
    """A JSON-RPC request id: a string or an integer (never a bool, which Python counts as one)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def json_rpc(body: bytes) -> dict:
    """The JSON-RPC message in a POST body; {} for anything else (the MCP server answers that itself)."""
    try:
        message = json.loads(body or b"{}")
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


async def read_body(receive):
    """(body, a `receive` that gives it again and then what the client sends next); body None past MAX_BODY (the
    server's front cuts bodies at its limit before this; this bound holds without it)."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive  # the client left mid-body: the MCP server reads the disconnect itself
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None, receive
        more = message.get("more_body", False)
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    return bytes(body), again


def progress_teller(usage=None):
    """A `told(what, step, total)` for `Jobs.run` that sends MCP progress notifications for the tool call running
    in this thread, when its client asked for them (a progressToken in the call's _meta): "waiting: N in line,
    about S s" while it waits, "sampling: step i of n" as it runs. None when there is no MCP call here or no token.

    gradio runs the tool in an anyio worker thread with the MCP server's request context copied in (its
    contextvar), so the session is reachable here and `anyio.from_thread` sends on the server's loop."""
    try:
        import anyio.from_thread
        from mcp.server.lowlevel.server import request_ctx

        context = request_ctx.get()
    except (ImportError, LookupError):
        return None
    token = getattr(context.meta, "progressToken", None) if context.meta is not None else None
    if token is None:
        return None
    sent = {"waits": 0, "last": None}

    def told(what: str, step: int, total: int) -> None:
        # MCP's progress must grow with each notification: the waits count first, then the steps after them
        if what == "waiting":
            soon = usage.estimate(step) if usage is not None else None
            message = f"waiting: {step} in line" + (f", about {soon:.0f} s" if soon is not None else "")
            if message == sent["last"]:
                return  # the line asks every quarter second: tell a change only
            sent["waits"] += 1
            progress, of = float(sent["waits"]), None
        elif step >= 0 and total:
            message = f"sampling: step {step} of {total}"
            if message == sent["last"]:
                return
            progress, of = float(sent["waits"] + step), float(sent["waits"] + total)
        else:
            return
        sent["last"] = message
        try:
            anyio.from_thread.run(lambda: context.session.send_progress_notification(
                progress_token=token, progress=progress, total=of, message=message,
                related_request_id=str(context.request_id)))
        except Exception:  # a client gone, a closed stream: progress is a nicety, never the call's failure
            log.debug("MCP progress not sent", exc_info=True)

    return told
