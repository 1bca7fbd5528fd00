"""Accounts: who may sign in to a shared server, from `--auth USER:PASS` (repeatable) and `--auth-file FILE`.

The file holds one `user:password` a line, or `user:pbkdf2_sha256$ITERATIONS$SALT$HASH` (what `python app.py users add
NAME` writes: the password itself is never stored). An API token of a user is a line `@token user sha256$HASH`
(`python app.py users token NAME` writes it and shows the token once): a program sends `Authorization: Bearer
TOKEN` and is that user, on every API door, in the line and in the library. Blank lines and `#` comments are
skipped. `check` compares in constant time, hashed or not, and is what gradio's login, the APIs' basic auth and
their `Bearer USER:PASS` ask. No gradio, no torch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from engine.request import UserError

ITERATIONS = 240_000
NAME = re.compile(r"[A-Za-z0-9][\w.\-@]{0,63}")
SCHEME = "pbkdf2_sha256"
TOKEN_LINE = "@token"
TOKEN_PREFIX = "st-"  # the studio's tokens, told apart from an OpenAI key pasted by mistake


def token_hash(token: str) -> str:
    """A token as the auth file keeps it: its SHA-256 (a token is 32 random bytes; no salt or stretching needed)."""
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def account_key(name: str) -> str:
    """The id a signed-in account's chats and images are stored under (in place of a browser's): the same on every
    browser and door, of the form the library's browser ids have."""
    return "u" + hashlib.sha256(name.encode()).hexdigest()[:31] if name else ""


def hash_password(password: str, salt: str | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt or os.urandom(12).hex()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{SCHEME}${iterations}${salt}${digest}"


def _matches(stored: str, password: str) -> bool:
    if stored.startswith(SCHEME + "$"):
        try:
            _, iterations, salt, digest = stored.split("$")
            again = hash_password(password, salt, int(iterations)).rsplit("$", 1)[1]
        except ValueError:
            return False
        return hmac.compare_digest(again, digest)
    return hmac.compare_digest(stored.encode(), password.encode())


@dataclass(frozen=True)
class Accounts:
    users: dict = field(default_factory=dict)  # name -> password, or its pbkdf2 hash
    tokens: dict = field(default_factory=dict)  # token_hash(token) -> name

    def token_user(self, token) -> str | None:
        """The user whose API token `token` is, else None."""
        if not isinstance(token, str) or not token:
            return None
        wanted = token_hash(token)
        found = None
        for stored, name in self.tokens.items():  # every one compared, in constant time each
            if hmac.compare_digest(stored, wanted):
                found = name
        return found

    def check(self, user, password) -> bool:
        """Whether `user` signs in with `password` (constant time for a known user)."""
        if not isinstance(user, str) or not isinstance(password, str):
            return False
        stored = self.users.get(user)
        if stored is None:
            _matches(hash_password("x", "0" * 24, 1000), password)  # about the same work for an unknown user
            return False
        return _matches(stored, password)

    @property
    def names(self) -> list[str]:
        return sorted(self.users)

    @classmethod
    def of(cls, auth) -> Accounts | None:
        """Accounts from what a ServeConfig holds: None, Accounts, one (user, password) or a list of them."""
        if auth is None or isinstance(auth, Accounts):
            return auth
        pairs = [auth] if isinstance(auth, tuple) else list(auth)
        return cls({user: password for user, password in pairs}) if pairs else None


def parse_pair(text: str, flag: str = "--auth") -> tuple[str, str]:
    user, sep, password = (text or "").partition(":")
    if not sep or not NAME.fullmatch(user) or not password:
        raise UserError(f"{flag} must be USER:PASSWORD (a user name of letters, digits, '.', '-', '_' or '@'), e.g. "
                        f"{flag} alice:correct-horse-battery")
    return user, password


def read_file(path: str | Path) -> dict[str, str]:
    """name -> password or hash from an auth file; a UserError naming the line that is wrong."""
    return read_accounts(path).users


def read_accounts(path: str | Path) -> Accounts:
    """The users and their API tokens in an auth file; a UserError naming the line that is wrong."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--auth-file {path}: {e.strerror or e}. Write one user:password a line, or add users with "
                        "`python app.py users add NAME --file FILE`.") from None
    users, tokens = {}, {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(TOKEN_LINE + " "):
            _, name, stored = (line.split() + ["", ""])[:3]
            if not NAME.fullmatch(name) or not re.fullmatch(r"sha256\$[0-9a-f]{64}", stored):
                raise UserError(f"--auth-file {path}, line {number}: write {TOKEN_LINE} USER sha256$HASH (as "
                                "`python app.py users token USER` writes).")
            tokens[stored] = name
            continue
        try:
            user, password = parse_pair(line, "a line")
        except UserError:
            raise UserError(f"--auth-file {path}, line {number}: write user:password (or user:{SCHEME}$... as "
                            "`python app.py users add` writes).") from None
        users[user] = password
    unknown = sorted(set(tokens.values()) - set(users))
    if unknown:
        raise UserError(f"--auth-file {path}: a token for {unknown[0]!r}, who has no user:password line. Add the "
                        f"user (`python app.py users add {unknown[0]} --file {path}`) or remove the token.")
    return Accounts(users, tokens)


def from_flags(auth: list[str] | str | None, auth_file: str | None) -> Accounts | None:
    """The accounts of `--auth` (repeatable) and `--auth-file`; None when neither is given."""
    pairs = [auth] if isinstance(auth, str) else list(auth or [])
    users, tokens = dict(parse_pair(p) for p in pairs), {}
    if auth_file:
        found = read_accounts(auth_file)
        users.update(found.users)
        tokens.update(found.tokens)
    return Accounts(users, tokens) if users else None


def add_user(path: str | Path, name: str, password: str) -> bool:
    """Write `name` with its hashed password into the auth file at `path` (made if missing); True when it
    replaced an existing user."""
    if not NAME.fullmatch(name or ""):
        raise UserError(f"User name {name!r}: use letters, digits, '.', '-', '_' or '@' (at most 64).")
    if len(password) < 8:
        raise UserError("Use a password of at least 8 characters.")
    path = Path(path).expanduser()
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [ln for ln in lines if ln.strip().partition(":")[0] != name]
    kept.append(f"{name}:{hash_password(password)}")
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return len(kept) == len(lines)


def add_token(path: str | Path, name: str) -> str:
    """A new API token for `name` (a user of the auth file at `path`), its hash written there; returns the token,
    the only time it is shown. A user may hold several (one per program); remove a line to revoke one."""
    path = Path(path).expanduser()
    users = read_accounts(path).users if path.exists() else {}
    if name not in users:
        raise UserError(f"{name!r} is not a user of {path}. Add them first: `python app.py users add {name} --file "
                        f"{path}`.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{TOKEN_LINE} {name} {token_hash(token)}\n")
    path.chmod(0o600)
    return token
