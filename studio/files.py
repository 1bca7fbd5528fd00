"""Folders of files handed out by link (the OpenAI door's `url`, MCP's image URLs, gradio's /generate), each file
kept an hour and then removed: one place for the naming, the expiry and the lookup. No gradio, no torch."""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from pathlib import Path

TTL_S = 3600
NAME = re.compile(r"studio-[0-9a-f]{32}-seed\d+\.png")  # what `save` names a file: nothing else is handed out


class LinkedFiles:
    """PNGs written for a client to fetch by name within `ttl_s` seconds."""

    def __init__(self, prefix: str = "studio-files-", ttl_s: float = TTL_S, folder: Path | None = None):
        self.folder, self.ttl_s = Path(folder) if folder else Path(tempfile.mkdtemp(prefix=prefix)), ttl_s
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, result, i: int) -> Path:
        """Image `i` of an engine Result as a PNG with its metadata, under a name nobody can guess."""
        path = self.folder / f"studio-{secrets.token_hex(16)}-seed{result.seeds[i]}.png"
        result.save_png(i, path)
        self.forget_old()
        return path

    def find(self, name: str) -> Path | None:
        """The file a link names, while it is kept; None for any other name (never a path outside the folder)."""
        if not isinstance(name, str) or len(name) > 80 or not NAME.fullmatch(name):
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def forget_old(self) -> None:
        now = time.time()
        for old in self.folder.glob("*.png"):
            try:
                if now - old.stat().st_mtime > self.ttl_s:
                    old.unlink(missing_ok=True)
            except OSError:
                pass
