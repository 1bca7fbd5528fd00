"""The library: every kept image with its settings, and each browser's conversations, in one SQLite file.

`outputs/library.sqlite` (the standard library's sqlite3, WAL journal: a kill -9 mid-write loses at most the write
in progress, never the file) indexes the PNGs under the outputs folder (store/outputs.py writes them) and any
folder the user imports (AUTOMATIC1111, SD.Next, Fooocus, ComfyUI PNGs: their metadata read by
engine/images/metadata.py and store/comfy.py). Prompt, negative prompt, model and LoRA names are searchable with
SQLite full-text search (FTS5). Conversations are stored per browser id; a browser reads only its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .outputs import DiskError, Outputs

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, created REAL NOT NULL, source TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '', negative TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '',
    loras TEXT NOT NULL DEFAULT '', seed INTEGER, width INTEGER, height INTEGER, settings TEXT NOT NULL DEFAULT '{}',
    conversation TEXT, extras TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS images_created ON images(created DESC);
CREATE INDEX IF NOT EXISTS images_conversation ON images(conversation);
CREATE VIRTUAL TABLE IF NOT EXISTS images_text USING fts5(
    prompt, negative, model, loras, content='images', content_rowid='id', tokenize='unicode61');
CREATE TRIGGER IF NOT EXISTS images_ai AFTER INSERT ON images BEGIN
    INSERT INTO images_text(rowid, prompt, negative, model, loras)
    VALUES (new.id, new.prompt, new.negative, new.model, new.loras); END;
CREATE TRIGGER IF NOT EXISTS images_ad AFTER DELETE ON images BEGIN
    INSERT INTO images_text(images_text, rowid, prompt, negative, model, loras)
    VALUES ('delete', old.id, old.prompt, old.negative, old.model, old.loras); END;
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, browser TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    updated REAL NOT NULL, state TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS conversations_browser ON conversations(browser, updated DESC);
CREATE TABLE IF NOT EXISTS style_refs (
    owner TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, name));
"""
# whose each image is (a browser id, a signed-in account's key, an API client) and its bytes on disk, for quotas:
# added to libraries made before them, then indexed
OWNERS = (("owner", "TEXT NOT NULL DEFAULT ''"), ("bytes", "INTEGER NOT NULL DEFAULT 0"))
OWNERS_INDEX = "CREATE INDEX IF NOT EXISTS images_owner ON images(owner, created)"
STYLE_NAME = re.compile(r"[A-Za-z0-9][\w\-.]{0,39}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class Imported(NamedTuple):
    """What an import did."""

    added: int  # images indexed now
    unreadable: int = 0  # of them, without settings we can read (searchable by date only)
    not_images: int = 0  # files named like images that are not (an HTML page named .png) or are too large


@dataclass
class Entry:
    """One kept (or imported) image and what it was made with."""

    id: int
    path: str
    created: float
    source: str  # chat | api | cli | import
    prompt: str
    negative: str
    model: str
    loras: str  # "name:weight name:weight"
    seed: int | None
    width: int | None
    height: int | None
    settings: dict  # Request.to_json() of the image (or what an imported file's metadata gave)
    conversation: str | None
    extras: list  # paths of the control maps / init image kept beside it

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))


class Library:
    """Kept images and conversations. `root=None`: nothing is kept (a hosted Space), every call is a no-op."""

    def __init__(self, root: Path | None):
        self.root = Path(root).expanduser() if root is not None else None
        self.outputs = Outputs(self.root) if self.root is not None else None
        self._lock = threading.RLock()
        self._db = None
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=self.root, prefix=".tmp-"):  # a read-only mount: refused at start,
                    pass  # not at every image (and the file has no name to leave behind)
                self._db = sqlite3.connect(self.root / "library.sqlite", check_same_thread=False,
                                           isolation_level=None, timeout=10)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a killed process
                self._db.executescript(SCHEMA)
                have = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
                for column, kind in OWNERS:
                    if column not in have:
                        self._db.execute(f"ALTER TABLE images ADD COLUMN {column} {kind}")
                self._db.execute(OWNERS_INDEX)
            except (OSError, sqlite3.Error) as e:
                raise DiskError(f"The outputs folder {self.root} cannot hold the library "
                                f"({getattr(e, 'strerror', None) or e}). Start the app with --outputs DIR (a writable "
                                "folder) or --outputs none.") from None

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def browser_secret(self) -> str:
        """A random key made once per library (outputs/.browser-secret): gradio encrypts the ids each browser
        holds with it, so they still read after a server restart (a key made per start would lose them)."""
        path = self.root / ".browser-secret"
        try:
            return path.read_text().strip()
        except OSError:
            secret = uuid.uuid4().hex + uuid.uuid4().hex
            with open(path, "x") as f:
                f.write(secret)
            path.chmod(0o600)
            return secret

    # ----------------------------------------------------------------------------------- images
    def keep(self, result, i: int, source: str, conversation: str | None = None, init_image=None,
             owner: str = "") -> Entry | None:
        """Save image `i` of an engine Result as a PNG with its metadata (and its control maps and init image beside
        it) and index it as `owner`'s. Raises DiskError (the caller still has the image in memory)."""
        if not self.enabled:
            return None
        buffer = io.BytesIO()
        result.save_png(i, buffer)
        seed = result.seeds[i]
        path = self.outputs.save(buffer.getvalue(), seed)
        extras = [str(self.outputs.save_image(cmap, seed, f"-control{k}"))
                  for k, cmap in enumerate(result.control_maps)]
        if init_image is not None:
            extras.append(str(self.outputs.save_image(init_image, seed, "-init")))
        size = sum(_size(f) for f in [path, *extras])
        return self.add(path, result.image_request(i).to_json(), source, conversation, extras, model=result.model_name,
                        owner=owner, size=size)

    def add(self, path: Path, settings: dict, source: str, conversation: str | None = None,
            extras: list | None = None, model: str | None = None, created: float | None = None,
            owner: str = "", size: int = 0) -> Entry:
        """Index one image file with its settings (a Request's JSON, or what a file's metadata gave), as `owner`'s
        (`size`: its files' bytes, for the owner's quota)."""
        loras = " ".join(f"{x.get('name')}:{x.get('weight')}" for x in settings.get("loras") or []
                         if isinstance(x, dict))
        row = dict(path=str(Path(path).resolve()), created=created or time.time(), source=source,
                   prompt=str(settings.get("prompt") or ""), negative=str(settings.get("negative") or ""),
                   model=str(model or settings.get("model") or ""), loras=loras, seed=_int(settings.get("seed")),
                   width=_int(settings.get("width")), height=_int(settings.get("height")),
                   settings=json.dumps(settings, ensure_ascii=False), conversation=conversation,
                   extras=json.dumps(extras or []), owner=owner or "", bytes=int(size))
        with self._lock:
            try:
                cursor = self._db.execute(
                    f"INSERT INTO images({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                    "ON CONFLICT(path) DO NOTHING", list(row.values()))
            except sqlite3.Error as e:
                raise DiskError(f"The library database in {self.root} could not be written ({e}). The image file "
                                "is kept; free some disk space.") from None
            rowid = cursor.lastrowid if cursor.rowcount else self._db.execute(
                "SELECT id FROM images WHERE path = ?", (row["path"],)).fetchone()[0]
        return self.get(rowid)

    def get(self, image_id: int) -> Entry | None:
        if not self.enabled:
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return _entry(row) if row else None

    def search(self, text: str = "", model: str = "", lora: str = "", since: float | None = None,
               until: float | None = None, limit: int = 48, offset: int = 0,
               conversation: str | list[str] | None = None) -> tuple[list[Entry], int]:
        """Newest first, one page: entries matching every word of `text` (prefixes too), the model and LoRA name
        given, the time range and (when given) the conversation(s). Returns (page, total matches)."""
        if not self.enabled:
            return [], 0
        text, model, lora = _filter("search text", text), _filter("model", model), _filter("LoRA", lora)
        where, args = [], []
        query = _fts_query(text, lora)
        if query:
            where.append("id IN (SELECT rowid FROM images_text WHERE images_text MATCH ?)")
            args.append(query)
        if model:
            where.append("model LIKE ? ESCAPE '\\'")
            args.append(f"%{_like(model)}%")
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        if conversation is not None:
            ids = [conversation] if isinstance(conversation, str) else list(conversation)[:500]
            where.append(f"conversation IN ({', '.join('?' * len(ids)) or 'NULL'})")
            args += ids
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM images {clause}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM images {clause} ORDER BY created DESC, id DESC "
                                    "LIMIT ? OFFSET ?", [*args, max(1, min(limit, 500)), max(0, offset)]).fetchall()
        return [_entry(r) for r in rows], total

    def usage(self, owner: str) -> tuple[int, int]:
        """(images, bytes) kept for `owner`."""
        if not self.enabled or not owner:
            return 0, 0
        with self._lock:
            count, size = self._db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM images WHERE owner = ?",
                                           (owner,)).fetchone()
        return int(count), int(size)

    def oldest(self, owner: str, n: int) -> list[Entry]:
        """`owner`'s `n` oldest kept images, oldest first."""
        if not self.enabled or not owner:
            return []
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE owner = ? ORDER BY created, id LIMIT ?",
                                    (owner, max(0, min(int(n), 10_000)))).fetchall()
        return [_entry(r) for r in rows]

    def delete_image(self, image_id: int, remove_files: bool = True) -> None:
        entry = self.get(image_id)
        if entry is None:
            return
        with self._lock:
            self._db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        if remove_files and entry.source != "import":  # imported files are the user's own: never deleted
            for p in [entry.path, *entry.extras]:
                Path(p).unlink(missing_ok=True)

    def import_folder(self, folder: Path, progress=None) -> Imported:
        """Index the images of `folder` (and its subfolders) with the settings their metadata holds and the size
        the image really has; files already indexed are skipped, files that are not images are left out."""
        from engine.images.loading import open_image
        from engine.request import UserError

        from .comfy import read_settings

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            from engine.request import UserError

            raise UserError(f"{folder} is not a folder. Give the folder of PNGs to import (e.g. "
                            "stable-diffusion-webui/outputs).")
        known = self._known_paths()
        added = unreadable = not_images = 0
        paths = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".") and str(p.resolve()) not in known]
        for start in range(0, len(paths), 500):  # one transaction per 500 files: a kill loses at most those
            with self._transaction():
                for path in paths[start:start + 500]:
                    try:
                        image = open_image(path, f"The imported file {path.name}")  # its header: a real image?
                        size = image.size
                        image.close()
                    except (UserError, OSError):
                        not_images += 1
                        continue
                    settings = read_settings(path)
                    unreadable += settings is None
                    settings = {**(settings or {}), "width": size[0], "height": size[1]}  # the pixels, not a claim
                    self.add(path, settings, "import", created=path.stat().st_mtime)
                    added += 1
            if progress is not None:
                progress(added)
        return Imported(added, unreadable, not_images)

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def sync(self) -> int:
        """Index kept PNGs that are on disk but not in the database (a kill -9 between file and index)."""
        if not self.enabled:
            return 0
        from .comfy import read_settings

        known = self._known_paths()
        added = 0
        for path in sorted(self.root.glob("*/[0-9]*-*.png")):
            if str(path.resolve()) in known or "-control" in path.stem or path.stem.endswith("-init"):
                continue
            self.add(path, read_settings(path) or {}, "chat", created=path.stat().st_mtime)
            added += 1
        return added

    def _known_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM images")}

    # ---------------------------------------------------------------------------- conversations
    def save_conversation(self, browser: str, conversation: str, state: dict, title: str = "") -> None:
        if not self.enabled or not browser or not conversation:
            return
        now = time.time()
        with self._lock:
            owner = self._db.execute("SELECT browser FROM conversations WHERE id = ?", (conversation,)).fetchone()
            if owner is not None and owner[0] != browser:
                return  # another browser's id: never written over
            self._db.execute(
                "INSERT INTO conversations(id, browser, title, created, updated, state) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET title = excluded.title, updated = excluded.updated, "
                "state = excluded.state", (conversation, browser, title[:200], now, now,
                                           json.dumps(state, ensure_ascii=False)))

    def owner(self, conversation: str) -> str | None:
        """The browser id that created `conversation` (None: not stored yet)."""
        if not self.enabled or not conversation:
            return None
        with self._lock:
            row = self._db.execute("SELECT browser FROM conversations WHERE id = ?", (conversation,)).fetchone()
        return row[0] if row else None

    def conversations(self, browser: str, limit: int = 100) -> list[tuple[str, str, float]]:
        """(id, title, updated) of this browser's conversations, newest first."""
        if not self.enabled or not browser:
            return []
        with self._lock:
            return self._db.execute("SELECT id, title, updated FROM conversations WHERE browser = ? ORDER BY "
                                    "updated DESC LIMIT ?", (browser, limit)).fetchall()

    def load_conversation(self, browser: str, conversation: str) -> dict | None:
        """The stored state of `conversation`, only if it belongs to `browser`."""
        if not self.enabled or not browser:
            return None
        with self._lock:
            row = self._db.execute("SELECT state FROM conversations WHERE id = ? AND browser = ?",
                                   (conversation, browser)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_conversation(self, browser: str, conversation: str) -> int:
        """Delete a conversation of `browser` and the images it made (files too). Returns how many images."""
        if not self.enabled or not browser:
            return 0
        with self._lock:
            owner = self._db.execute("SELECT browser FROM conversations WHERE id = ?", (conversation,)).fetchone()
            if owner is None or owner[0] != browser:
                return 0
            ids = [r[0] for r in self._db.execute("SELECT id FROM images WHERE conversation = ?", (conversation,))]
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation,))
        for image_id in ids:
            self.delete_image(image_id)
        return len(ids)

    # ------------------------------------------------------------------------------ style references
    def save_style_ref(self, owner: str, name: str, image_path: str) -> Path:
        """Keep a copy of an image as the style reference `name` of `owner` (a browser id; "" on the CLI): a later
        `--sref NAME` uses it as an image prompt. A name used again is replaced."""
        if not self.enabled:
            raise DiskError("Nothing is kept on this server (--outputs none), so style references can't be saved.")
        if not STYLE_NAME.fullmatch(name or ""):
            raise ValueError(f"Style reference name {name!r}: use up to 40 letters, digits, '_', '-' or '.'.")
        folder = self.root / "styles"
        folder.mkdir(exist_ok=True)
        target = folder / f"{uuid.uuid4().hex[:12]}-{name}.png"
        shutil.copyfile(image_path, target)
        with self._lock:
            old = self._db.execute("SELECT path FROM style_refs WHERE owner = ? AND name = ?", (owner, name)).fetchone()
            self._db.execute("INSERT INTO style_refs(owner, name, path, created) VALUES (?, ?, ?, ?) ON CONFLICT"
                             "(owner, name) DO UPDATE SET path = excluded.path, created = excluded.created",
                             (owner, name, str(target), time.time()))
        if old:
            Path(old[0]).unlink(missing_ok=True)
        return target

    def style_ref(self, owner: str | None, name: str) -> str | None:
        """The image of style reference `name`: `owner`'s own, else (owner None: the CLI, on this machine) the
        newest of that name."""
        if not self.enabled:
            return None
        with self._lock:
            if owner is None:
                row = self._db.execute("SELECT path FROM style_refs WHERE name = ? ORDER BY created DESC LIMIT 1",
                                       (name,)).fetchone()
            else:
                row = self._db.execute("SELECT path FROM style_refs WHERE owner = ? AND name = ?",
                                       (owner, name)).fetchone()
        return row[0] if row and Path(row[0]).is_file() else None

    def style_refs(self, owner: str | None) -> list[str]:
        if not self.enabled:
            return []
        with self._lock:
            rows = (self._db.execute("SELECT DISTINCT name FROM style_refs ORDER BY name") if owner is None else
                    self._db.execute("SELECT name FROM style_refs WHERE owner = ? ORDER BY name", (owner,)))
            return [r[0] for r in rows.fetchall()]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def new_id() -> str:
    """A random id for a browser or a conversation (unguessable: it is the only key to a browser's history)."""
    return uuid.uuid4().hex


_FIELDS = [f.name for f in dataclasses.fields(Entry)]
_COLUMNS = ", ".join(_FIELDS)


def _size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _entry(row) -> Entry:
    data = dict(zip(_FIELDS, row))
    data["settings"] = json.loads(data["settings"] or "{}")
    data["extras"] = json.loads(data["extras"] or "[]")
    return Entry(**data)


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63 else None


MAX_FILTER = 1000  # characters in one search box: a few words of a prompt, part of a name


def _filter(what: str, value: str) -> str:
    """A search box's text as SQLite takes it: NUL and other control characters dropped, lone surrogates as U+FFFD
    (as kept prompts hold them); longer than MAX_FILTER (SQLite refuses LIKE patterns of 50,000) a UserError."""
    from engine.request import UserError, clean_text

    value = clean_text(str(value or ""))
    if len(value) > MAX_FILTER:
        raise UserError(f"The {what} filter is {len(value)} characters long; search with at most {MAX_FILTER} "
                        "(a few words of the prompt, part of a model or LoRA name).")
    return value


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fts_query(text: str, lora: str = "") -> str:
    """Every word of `text` as a quoted prefix term (so no user text is read as FTS syntax), ANDed."""
    terms = [f'"{w.replace(chr(34), chr(34) * 2)}"*' for w in text.split() if w.strip()]
    terms += [f'loras : "{w.replace(chr(34), chr(34) * 2)}"*' for w in lora.split() if w.strip()]
    return " AND ".join(terms[:32])


def open_library(where: str | None, on_space: bool = False) -> Library:
    """The library of kept images at `where` (--outputs DIR; "none" keeps nothing); by default outputs/ beside the
    app, and nothing on a hosted Space (its disk is not the user's)."""
    from engine.config import ROOT
    from engine.request import UserError

    where = where or ("none" if on_space else str(ROOT / "outputs"))
    try:
        return Library(None if where.strip().lower() == "none" else Path(where))
    except DiskError as e:  # at start: one `error:` line from app.py, not a traceback
        raise UserError(str(e)) from None
