"""What the built-in model understands: the words of its shapes world. A prompt's other words are read as text
but were never seen in training, so the reply names them (instead of a silent, puzzling blob)."""

from __future__ import annotations

import re

EXAMPLE = "a big red circle on the left, blue background"
_FILLER = {"an", "with", "of", "image", "picture", "please", "draw"}  # harmless; not worth a note
WORD = re.compile(r"[a-z]+")


def unknown_words(prompt: str, known: set[str] | None = None) -> list[str]:
    """The prompt's words the built-in model never saw, in order, once each (LoRA trigger words aside)."""
    from .train.world import corpus_words

    known = known if known is not None else set(corpus_words()) | _FILLER
    seen, out = set(), []
    for word in WORD.findall(prompt.lower()):
        if word not in known and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def vocabulary_note(prompt: str, extra_known: tuple[str, ...] = ()) -> str | None:
    """A one-line note for the built-in model when the prompt has words outside its world, else None."""
    from .train.world import corpus_words

    known = set(corpus_words()) | _FILLER | {w for t in extra_known for w in WORD.findall(t.lower())}
    words = unknown_words(prompt, known)
    if not words:
        return None
    shown = ", ".join(f"'{w}'" for w in words[:8]) + (f" and {len(words) - 8} more" if len(words) > 8 else "")
    return (f"The built-in model knows only its shapes world (colours, circle/square/triangle/person, small/big, "
            f"left/right/top/bottom/center, a background colour); it ignored {shown}. Try e.g. '{EXAMPLE}', or pick "
            "an SD/Flux model for anything else.")
