"""Who may call the APIs: with `--auth USER:PASS` HTTP basic auth with those, with `--api-token TOKEN` the header
`Authorization: Bearer TOKEN` (what the OpenAI client sends as its api_key); `Bearer USER:PASS` works too. With
neither flag the APIs are open, like the page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gate:
    auth: tuple[str, str] | None = None  # (user, password) of --auth
    token: str | None = None  # --api-token
    throttle: Throttle = field(default_factory=lambda: Throttle())

    @property
    def open(self) -> bool:
        return self.auth is None and not self.token

    def allows(self, authorization: str | None) -> bool:
        """Does this `Authorization` header value let the caller in?"""
        if self.open:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            if self.token and secrets.compare_digest(value.encode(), self.token.encode()):
                return True
            return self.auth is not None and _same(value, f"{self.auth[0]}:{self.auth[1]}")
        if scheme.lower() == "basic" and self.auth is not None:
            try:
                pair = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(pair, f"{self.auth[0]}:{self.auth[1]}")
        return False

    async def check(self, client: str, authorization: str | None) -> bool:
        """`allows`, after the wait this client's earlier wrong credentials have earned (see `Throttle`)."""
        if self.open:
            return True
        await asyncio.sleep(self.throttle.delay(client))
        ok = self.allows(authorization)
        self.throttle.record(client, ok)
        return ok

    def hint(self) -> str:
        """What to send, for the 401 message."""
        ways = []
        if self.auth is not None:
            ways.append("HTTP basic auth with the server's --auth user and password")
        if self.token:
            ways.append("the header 'Authorization: Bearer <the server's --api-token>'")
        return "This server needs " + " or ".join(ways) + "."


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


class Throttle:
    """After `free` wrong credentials from one client address, each further try waits `base_s * 2**(n - free)`
    seconds (at most `cap_s`); a success clears the count. The page's /login has the same rule (ui/serve.py)."""

    def __init__(self, free: int = 3, base_s: float = 0.5, cap_s: float = 30.0, clients: int = 10000):
        self.free, self.base_s, self.cap_s, self.clients = free, base_s, cap_s, clients
        self.failures: OrderedDict[str, int] = OrderedDict()

    def delay(self, client: str) -> float:
        n = self.failures.get(client, 0)
        return 0.0 if n < self.free else min(self.cap_s, self.base_s * 2 ** (n - self.free))

    def record(self, client: str, ok: bool) -> None:
        if ok:
            self.failures.pop(client, None)
            return
        self.failures[client] = self.failures.get(client, 0) + 1
        self.failures.move_to_end(client)
        while len(self.failures) > self.clients:
            self.failures.popitem(last=False)
