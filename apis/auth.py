"""Who may call the APIs: with `--auth USER:PASS` (or `--auth-file`) HTTP basic auth with those, or `Bearer USER:PASS`,
or `Bearer TOKEN` with a user's own token from the auth file (`app.py users token NAME`); with `--api-token TOKEN`
the header `Authorization: Bearer TOKEN` (what the OpenAI client sends as its api_key). With neither flag the APIs
are open, like the page. A caller signed in as a user is that user everywhere: the chat's `user:NAME`, in the line
and for stopping.
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
            if self.auth is not None and ":" not in value:
                return self.auth.token_user(value) is not None
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
        """The caller's account (asked after `allows`): 'user:NAME' for a user's password or own token, 'token'
        for the server's --api-token, '' when open."""
        if self.open:
            return ""
        claimed = account(authorization)
        if claimed == "token" and self.auth is not None:
            user = self.auth.token_user((authorization or "").strip().partition(" ")[2].strip())
            if user is not None:
                return "user:" + user
        return claimed

    def owner(self, client: str, authorization: str | None) -> str:
        """Who a job belongs to, for its turns in the line and for stopping it: a signed-in user is 'user:NAME'
        (as in the chat: one user, one share of the line, on any door or machine); else the client's address and
        the account ('token') it used, or the address alone on an open server."""
        who = self.who(authorization)
        return who if who.startswith("user:") else f"{client} {who}".rstrip()

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
