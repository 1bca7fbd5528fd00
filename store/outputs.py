"""Every kept image as a PNG on disk: `outputs/YYYY-MM-DD/NNNNN-SEED.png`, numbered the way AUTOMATIC1111 does.

Writes are atomic and never overwrite: the PNG is written in full to a hidden temporary file in the same folder,
flushed to disk, then hard-linked to its final name (`os.link` fails if the name exists, so two processes or
sessions saving at once take different numbers), and the temporary name is removed. A crash at any point leaves
either no file or the whole file under its final name; stray temporary files are removed on the next start.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

NUMBERED = re.compile(r"(\d{5,})-")
TMP_PREFIX = ".tmp-"


class DiskError(Exception):
    """The outputs folder cannot take the file (full disk, no permission). The message says what to do."""


class Outputs:
    """The outputs folder. `save(png_bytes, seed, suffix)` -> the kept file's path."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self._next: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._clean_leftovers()

    def day_folder(self, when: float | None = None) -> Path:
        return self.root / time.strftime("%Y-%m-%d", time.localtime(when))

    def save(self, data: bytes, seed: int, suffix: str = "", when: float | None = None) -> Path:
        """Keep `data` (a PNG file's bytes) as the next NNNNN-SEED[suffix].png of today's folder."""
        folder = self.day_folder(when)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.png"
            try:  # a failed write (a full disk) removes its temporary file too, not only a kept one
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                for _ in range(10_000):
                    number = self._take_number(folder)
                    path = folder / f"{number:05d}-{seed}{suffix}.png"
                    if self._claim(folder, number, path, tmp):
                        return path
                raise DiskError(f"No free file name in {folder} after 10,000 tries.")
            finally:
                _remove(tmp)
        except DiskError:
            raise
        except OSError as e:
            raise DiskError(f"Could not keep the image in {folder} ({e.strerror or e}). Free some disk space, or "
                            "start the app with --outputs DIR (a writable folder) or --outputs none.") from None

    def save_image(self, image, seed: int, suffix: str = "") -> Path:
        """A PIL image (a control map, an init image) beside the result that used it."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self.save(buffer.getvalue(), seed, suffix)

    @staticmethod
    def _claim(folder: Path, number: int, path: Path, tmp: Path) -> bool:
        """Link `tmp` to `path` if nobody else, in this process or another (the CLI beside a server), has image
        `number` of the folder. The number is claimed with an exclusive create until the image holds it (its
        name carries the seed, so the name alone would let two writers share a number)."""
        claim = folder / f"{TMP_PREFIX}n{number:05d}"
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        try:
            if any(folder.glob(f"{number:05d}-*")):  # taken before this writer's count knew of it
                return False
            os.link(tmp, path)  # atomic, and never replaces a file another writer made
            return True
        except FileExistsError:
            return False
        finally:
            claim.unlink(missing_ok=True)

    def _take_number(self, folder: Path) -> int:
        with self._lock:
            if folder not in self._next:  # A1111's rule: one past the highest number in the folder
                numbers = [int(m[1]) for p in folder.iterdir() if (m := NUMBERED.match(p.name))]
                self._next[folder] = max(numbers, default=-1) + 1
            number = self._next[folder]
            self._next[folder] += 1
            return number

    def _clean_leftovers(self) -> None:
        if not self.root.is_dir():
            return
        for tmp in self.root.glob(f"*/{TMP_PREFIX}*"):
            if time.time() - tmp.stat().st_mtime > 60:  # not another process's write in progress
                tmp.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted save", tmp)


def _remove(tmp: Path) -> None:
    """Remove a temporary file; a failure is logged (the next start removes it), never raised over the real error."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove %s (%s); the next start removes it", tmp, e.strerror or e)
