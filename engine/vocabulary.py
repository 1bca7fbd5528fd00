"""What the built-in model understands: the words of its training captions, which its folder lists in
studio.json ("vocabulary", written when the model is assembled). A prompt's other words are read as text but were
never seen in training, so the reply names them (instead of a silent, puzzling blob)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

EXAMPLE = "a big red circle on the left, blue background"
_FILLER = frozenset({"an", "with", "of", "image", "picture", "please", "draw"})  # harmless; not worth a note
WORD = re.compile(r"[a-z]+")
# words people write for what the captions say otherwise: the model reads the captions' word instead
SAME_AS = {"centre": "center", "middle": "center", "centered": "center", "centred": "center", "large": "big",
           "huge": "big", "little": "small", "tiny": "small"}
_ANY_CASE = re.compile(r"[A-Za-z]+")


def caption_words(prompt: str) -> str:
    """`prompt` with the words of SAME_AS spelt as the captions spell them ('in the centre' -> 'in the center')."""
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
    if not words:
        return None
    shown = ", ".join(f"'{w}'" for w in words[:8]) + (f" and {len(words) - 8} more" if len(words) > 8 else "")
    return (f"The built-in model knows only its shapes world (colours, circle/square/triangle/person, small/big, "
            f"left/right/top/bottom/center, a background colour); it ignored {shown}. Try e.g. '{EXAMPLE}', or pick "
            "an SD/Flux model for anything else.")
