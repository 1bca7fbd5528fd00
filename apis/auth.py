"""Who may call the APIs: with `--auth USER:PASS` HTTP basic auth with those, with `--api-token TOKEN` the header
`Authorization: Bearer TOKEN` (what the OpenAI client sends as its api_key); `Bearer USER:PASS` works too. With
neither flag the APIs are open, like the page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import secrets
from dataclasses import dataclass, field

from studio.accounts import Accounts
from studio.throttle import Throttle


@dataclass(frozen=True)
class Gate:
    auth: Accounts | None = None  # the accounts of --auth / --auth-file
    token: str | None = None  # --api-token
    throttle: Throttle = field(default_factory=lambda: Throttle())

    def __post_init__(self):  # one (user, password) works too, as --auth gave it before accounts
        object.__setattr__(self, "auth", Accounts.of(self.auth))

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
            return self.auth is not None and self.auth.check(*_pair(value))
        if scheme.lower() == "basic" and self.auth is not None:
            try:
                pair = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.auth.check(*_pair(pair))
        return False

    async def check(self, client: str, authorization: str | None) -> bool:
        """`allows`, after the wait this client's earlier wrong credentials for the same account have earned (see
        `studio.throttle.Throttle`: parallel guesses queue behind each other)."""
        if self.open:
            return True
        key = f"{client} {account(authorization)}"
        wait = self.throttle.reserve(key)
        if wait == math.inf:  # guesses for this account already queue past the cap: refused unchecked
            return False
        await asyncio.sleep(wait)
        ok = self.allows(authorization)
        if ok:
            self.throttle.succeeded(key)
        return ok

    def who(self, authorization: str | None) -> str:
        """The caller's account for owning jobs: the basic-auth user, 'token' for a bearer, '' when open."""
        return "" if self.open else account(authorization)

    def owner(self, client: str, authorization: str | None) -> str:
        """Who a job belongs to, for stopping it: the client's address and the account it signed in with (the
        address alone on an open server). Programs on one address with one account are one owner."""
        return f"{client} {self.who(authorization)}".rstrip()

    def hint(self) -> str:
        """What to send, for the 401 message."""
        ways = []
        if self.auth is not None:
            ways.append("HTTP basic auth with the server's --auth user and password")
        if self.token:
            ways.append("the header 'Authorization: Bearer <the server's --api-token>'")
        return "This server needs " + " or ".join(ways) + "."


def _pair(text: str) -> tuple[str, str]:
    user, _, password = text.partition(":")
    return user, password


def account(authorization: str | None) -> str:
    """The account an `Authorization` header claims (never checked here): the basic-auth user, or the bearer's
    user before a ':' ('token' for a plain token); '' for none."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            return "user:" + base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0][:64]
        except (binascii.Error, UnicodeDecodeError):
            return "unreadable"
    if scheme.lower() == "bearer":
        user, sep, _ = value.strip().partition(":")
        return "user:" + user[:64] if sep else "token"
    return ""
