"""What the built-in model understands: the words of its training captions, which its folder lists in
studio.json ("vocabulary", written when the model is assembled). A prompt's other words are read as text but were
never seen in training, so the reply names them (instead of a silent, puzzling blob)."""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

EXAMPLE = "a big red circle on the left, blue background"
_FILLER = frozenset({"an", "with", "of", "image", "picture", "please", "draw"})  # harmless; not worth a note
WORD = re.compile(r"[a-z]+")
# words people write for what the captions say otherwise: the model reads the captions' word instead
SAME_AS = {"centre": "center", "middle": "center", "centered": "center", "centred": "center", "large": "big",
           "huge": "big", "little": "small", "tiny": "small"}
_ANY_CASE = re.compile(r"[A-Za-z]+")
# a position word used as part of a thing ("a top hat", "a left hand"): the model still reads a position
POSITION_AS_WORD = re.compile(r"\b(left|right|top|bottom|center)\s+(?!of\b|and\b|or\b|side\b|corner\b|half\b)"
                              r"([a-z]+)")


def symbols(prompt: str) -> list[str]:
    """Emoji and other symbols in the prompt (what no caption has), once each."""
    out = []
    for c in prompt:
        if unicodedata.category(c)[0] == "S" or unicodedata.category(c) in ("Co", "Cn") or c == "\ufffd":
            if c not in out and not c.isascii():
                out.append(c)
    return out


def caption_words(prompt: str) -> str:
    """`prompt` as the captions spell it: the words of SAME_AS in their captions' spelling ('in the centre' ->
    'in the center'), and no emoji or other symbols (the tokenizer made a blob of colour of them)."""
    shown = symbols(prompt)
    if shown:
        prompt = "".join(c for c in prompt if c not in shown)
    return _ANY_CASE.sub(lambda m: SAME_AS.get(m.group().lower(), m.group()), prompt)


@lru_cache(maxsize=8)
def model_vocabulary(folder: str) -> frozenset[str]:
    """The caption words a model folder's studio.json lists (empty when it lists none)."""
    try:
        words = json.loads((Path(folder) / "studio.json").read_text()).get("vocabulary") or []
    except (OSError, ValueError, AttributeError):
        return frozenset()
    return frozenset(w for w in words if isinstance(w, str))


def unknown_words(prompt: str, known: frozenset[str] | set[str]) -> list[str]:
    """The prompt's words not in `known`, in order, once each."""
    seen, out = set(), []
    for word in WORD.findall(caption_words(prompt).lower()):
        if word not in known and word not in _FILLER and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def vocabulary_note(prompt: str, folder: str, extra_known: tuple[str, ...] = ()) -> str | None:
    """A one-line note when the prompt has words outside the model's captions (None if it lists no vocabulary)."""
    known = model_vocabulary(folder)
    if not known:
        return None
    words = unknown_words(prompt, known | {w for t in extra_known for w in WORD.findall(t.lower())})
    marks = symbols(prompt)
    read_as_place = [f"'{where}' (in '{where} {thing}')" for where, thing
                     in POSITION_AS_WORD.findall(caption_words(prompt).lower()) if thing in words]
    if not words and not marks:
        return None
    shown = ", ".join(f"'{w}'" for w in words[:8]) + (f" and {len(words) - 8} more" if len(words) > 8 else "")
    ignored = " and ".join(x for x in (shown, "the symbols " + " ".join(marks) if marks else "") if x)
    place = f" It read {', '.join(read_as_place)} as a position, the only sense its captions have." if (
        read_as_place) else ""
    return (f"The built-in model knows only its shapes world (colours, circle/square/triangle/person, small/big, "
            f"left/right/top/bottom/center, a background colour); it ignored {ignored}.{place} Try e.g. "
            f"'{EXAMPLE}', or pick an SD/Flux model for anything else.")
