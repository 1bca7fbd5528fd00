"""Saved styles and wildcards: text a prompt is built from before the model reads it.

- styles: `plugins/styles/*.toml`, each with `name`, `prompt` (a template with `{prompt}` where the user's text
  goes; without it the text is put first) and `negative` (added to the negative prompt). Several apply in order.
- wildcards: `__name__` in a prompt takes one line of `plugins/wildcards/name.txt` (blank lines and `#` comments
  skipped), picked by the seed: the same seed picks the same line, another seed maybe another. A picked line may
  hold wildcards of its own (at most 5 levels).

`expand` returns the request with its final prompt (what the PNG keeps, so it restores as drawn) and the metadata
naming the styles and picks. A missing style or wildcard file is a SettingsError listing the ones there are.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

from .request import Request, SettingsError

WILDCARD = re.compile(r"__([A-Za-z0-9][\w\-/]{0,63})__")
MAX_DEPTH = 5
MAX_FILE = 1 << 20  # bytes of one wildcard or style file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def styles(dirs) -> dict[str, dict]:
    """name -> {"prompt", "negative", "file"} of every style in `dirs`/styles (a later folder's same name wins)."""
    found = {}
    for folder in dirs:
        for path in sorted((Path(folder) / "styles").glob("*.toml")):
            try:
                if path.stat().st_size > MAX_FILE:
                    continue
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            name = data.get("name") or path.stem
            if isinstance(name, str) and isinstance(data.get("prompt", ""), str) and isinstance(
                    data.get("negative", ""), str):
                found[name] = {"prompt": data.get("prompt", ""), "negative": data.get("negative", ""),
                               "file": str(path)}
    return found


def wildcard_names(dirs) -> list[str]:
    return sorted({p.relative_to(Path(d) / "wildcards").with_suffix("").as_posix() for d in dirs
                   for p in (Path(d) / "wildcards").rglob("*.txt")})


def _lines(dirs, name: str) -> list[str]:
    for folder in reversed(list(dirs)):
        root = (Path(folder) / "wildcards").resolve()
        path = (root / f"{name}.txt").resolve()
        if path.is_relative_to(root) and path.is_file() and path.stat().st_size <= MAX_FILE:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            return [ln for ln in lines if ln and not ln.startswith("#")]
    have = ", ".join(f"__{n}__" for n in wildcard_names(dirs)) or "none"
    raise SettingsError(f"There is no wildcard file for __{name}__ (plugins/wildcards/{name}.txt, one choice a "
                        f"line). Wildcards here: {have}.", field="prompt")


def has_wildcards(req: Request) -> bool:
    return bool(WILDCARD.search(req.prompt or "") or WILDCARD.search(req.negative or ""))


def expand(req: Request, dirs) -> tuple[Request, dict]:
    """`req` with its styles applied and wildcards picked (by its seed), and the metadata that says so."""
    extra: dict = {}
    prompt, negative = req.prompt, req.negative
    if req.styles:
        known = styles(dirs)
        missing = [s for s in req.styles if s not in known]
        if missing:
            have = ", ".join(sorted(known)) or "none (add plugins/styles/NAME.toml)"
            raise SettingsError(f"There is no style {missing[0]!r}. Styles here: {have}.", field="styles")
        for name in req.styles:
            style = known[name]
            template = style["prompt"] or "{prompt}"
            prompt = template.replace("{prompt}", prompt) if "{prompt}" in template else f"{prompt}, {template}"
            negative = ", ".join(x for x in (negative, style["negative"]) if x)
        extra["Styles"] = ", ".join(req.styles)
    if WILDCARD.search(prompt) or WILDCARD.search(negative):
        rng = random.Random(req.seed * 1_000_003 + 17 if req.seed is not None else None)
        picks: list[str] = []
        prompt, negative = _pick(prompt, dirs, rng, picks), _pick(negative, dirs, rng, picks)
        extra["Wildcards"] = "; ".join(picks)
    if not extra:
        return req, extra
    return dataclasses.replace(req, prompt=prompt, negative=negative, styles=[]), extra


def _pick(text: str, dirs, rng: random.Random, picks: list[str], depth: int = 0) -> str:
    def one(match) -> str:
        name = match.group(1)
        lines = _lines(dirs, name)
        if not lines:
            raise SettingsError(f"The wildcard file for __{name}__ has no lines to pick from.", field="prompt")
        choice = rng.choice(lines)
        picks.append(f"{name}={choice}")
        return _pick(choice, dirs, rng, picks, depth + 1) if depth < MAX_DEPTH else choice

    return WILDCARD.sub(one, text)
