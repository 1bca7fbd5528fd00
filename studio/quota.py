"""How many kept images (or how many bytes of them) one user may have on a shared server: `--quota 500` or
`--quota 2GB`. A user at the quota is told before anything runs, with their oldest images offered for deletion
(`/forget-oldest N` in the chat, or the Library tab); nothing is deleted unasked. No gradio, no torch.

Users are the line's owners (studio/line.py) mapped to the library's: a signed-in account, a browser, an API
client's address.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from engine.request import UserError
from studio.accounts import account_key

UNITS = {"": 0, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
OFFER = 20  # how many of the oldest images a full user is offered to delete


class QuotaFull(UserError):
    """The user keeps as much as the server allows them."""


def library_owner(owner: str | None) -> str:
    """The library's owner id for a line owner: an account's key (the chat's, on every door), a browser's id, or
    the API client itself; '' for nobody."""
    if not owner:
        return ""
    if owner.startswith("user:"):
        return account_key(owner[5:])
    if owner.startswith("browser:"):
        return owner[8:]
    return owner


def size_text(n: int) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if n >= UNITS[unit]:
            return f"{n / UNITS[unit]:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Quota:
    images: int = 0  # kept images per user (0: no cap)
    bytes: int = 0  # their bytes on disk per user (0: no cap)

    @classmethod
    def parse(cls, text: str | None) -> Quota:
        """`--quota 500` (images) or `--quota 2GB` (bytes: KB, MB, GB, TB); '' or 0: none."""
        given = (text or "").strip()
        text = given.upper().replace(" ", "")
        found = re.fullmatch(r"(\d+(?:\.\d+)?)(KB|MB|GB|TB)?", text) if text else None
        if text and found is None:
            raise UserError(f"--quota {given}: give a number of images (--quota 500) or a size (--quota 2GB).")
        if not found:
            return cls()
        number, unit = float(found.group(1)), found.group(2) or ""
        return cls(bytes=int(number * UNITS[unit])) if unit else cls(images=int(number))

    def __bool__(self) -> bool:
        return bool(self.images or self.bytes)

    def check(self, library, owner: str | None) -> None:
        """QuotaFull, naming the user's oldest images and how to delete them, when `owner` keeps their quota."""
        who = library_owner(owner)
        if not self or library is None or not library.enabled or not who:
            return
        count, size = library.usage(who)
        if self.images and count >= self.images:
            what = f"{count} images kept, of the {self.images} this server keeps for each user"
        elif self.bytes and size >= self.bytes:
            what = f"{size_text(size)} of images kept, of the {size_text(self.bytes)} this server keeps for each user"
        else:
            return
        oldest = library.oldest(who, OFFER)
        span = ""
        if oldest:
            first, last = (time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)) for e in (oldest[0], oldest[-1]))
            span = f" (made {first} to {last})" if first != last else f" (made {first})"
        raise QuotaFull(f"Your library is full: {what}. Nothing was generated. Delete your {len(oldest)} oldest"
                        f"{span} by sending /forget-oldest {len(oldest)} in the chat, or pick images to delete in the "
                        "Library tab; then send this again.")


def forget_oldest(library, owner: str | None, n: int) -> str:
    """Delete `owner`'s `n` oldest kept images (their files too); the reply."""
    who = library_owner(owner)
    if library is None or not library.enabled or not who:
        return "Nothing is kept for you on this server."
    entries = library.oldest(who, n)
    for entry in entries:
        library.delete_image(entry.id)
    count, size = library.usage(who)
    return (f"Deleted your {len(entries)} oldest kept image(s). You keep {count} now ({size_text(size)})."
            if entries else "You keep no images on this server.")
