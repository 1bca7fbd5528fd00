"""Two small ASGI helpers the server's layers share: read a request's whole body, and hand it on again."""

from __future__ import annotations


async def read_all(receive, keep: int | None = None) -> bytes:
    """The request's body, all of it read; at most `keep` bytes of it kept (None: all)."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        if keep is None or len(body) < keep:
            body += message.get("body", b"")
        more = message.get("more_body", False)
    return bytes(body if keep is None else body[:keep])


def replay(body: bytes, receive):
    """A `receive` that gives `body` once, then what the client sends next (its disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
