"""The prompt language AUTOMATIC1111 users type, parsed once, in linear time, without recursion limits to hit.

- emphasis: `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.3)` an explicit weight; `\\(` is a literal (.
- prompt editing: `[from:to:when]` (`when` a fraction of the steps, or a step number above 1), `[to:when]` (added
  from then on), `[from::when]` (removed then), and `[from:to]` (at half the steps).
- alternation: `[a|b|c]`: a on step 1, b on step 2, ...
- `BREAK`: the text after it starts a new 75-token chunk.

`schedule(prompt, steps)` gives the plain prompts a generation steps through: [(last step, text with weights)],
one entry when nothing changes over the steps. `weighted(text)` splits one of those into (text, weight) pieces and
BREAK marks. An unbalanced bracket is text, as in A1111. `plain(prompt)` is the prompt with every mark removed: what
a model that reads no weights (T5, an LLM) is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UP, DOWN = 1.1, 1 / 1.1
BREAK = "BREAK"
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_BREAK = re.compile(r"\bBREAK\b")


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float = 1.0


def has_syntax(prompt: str) -> bool:
    """Whether the prompt uses any of the language (a plain prompt goes to the model as it is)."""
    return any(c in prompt for c in "()[]\\") or bool(_BREAK.search(prompt))


# --------------------------------------------------------------------------------------- editing, alternation

MAX_DEPTH = 8  # editing brackets nested deeper are text: no prompt needs more, and the rendering recurses per level


def _matching(text: str) -> dict[int, int]:
    """Index of each '[' -> its ']' (escaped ones skipped; unbalanced ones and those nested past MAX_DEPTH left
    out), in one pass."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            stack.append(i)
        elif c == "]" and stack:
            open_ = stack.pop()
            if len(stack) < MAX_DEPTH:
                pairs[open_] = i
        i += 1
    return pairs


def _split_top(text: str, start: int, end: int, sep: str) -> list[tuple[int, int]]:
    """The ranges of text[start:end] between `sep`s outside any brackets (escapes kept)."""
    parts, depth, first, i = [], 0, start, start
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append((first, i))
            first = i + 1
        i += 1
    return parts + [(first, end)]


def _when(text: str, steps: int) -> int | None:
    """The step a `when` names: a fraction of the steps (<= 1), or a step number; None when it is no number."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value * steps) if value <= 1 else int(value)


def _kinds(text: str, pairs: dict[int, int], steps: int) -> dict[int, tuple]:
    """What each matched '[' is, worked out once (not per step): ("alt", ranges), ("edit", from, to, when) or
    ("keep",) (emphasis, left for `weighted`)."""
    kinds = {}
    for open_, close in pairs.items():
        options = _split_top(text, open_ + 1, close, "|")
        if len(options) > 1:
            kinds[open_] = ("alt", options)
            continue
        parts = _split_top(text, open_ + 1, close, ":")
        empty = (open_ + 1, open_ + 1)
        if len(parts) == 3 and _when(text[slice(*parts[2])], steps) is not None:
            kinds[open_] = ("edit", parts[0], parts[1], _when(text[slice(*parts[2])], steps))
        elif len(parts) == 2 and _when(text[slice(*parts[1])], steps) is not None:
            kinds[open_] = ("edit", empty, parts[0], _when(text[slice(*parts[1])], steps))  # [to:when]
        elif len(parts) == 2:
            kinds[open_] = ("edit", parts[0], parts[1], steps // 2)  # [from:to]
        else:
            kinds[open_] = ("keep",)
    return kinds


def _render(text: str, step: int, kinds: dict, pairs: dict[int, int], start: int, end: int) -> str:
    """The text at `step` (1-based): each [from:to:when] and [a|b] resolved (nested ones too)."""
    out, i = [], start
    while i < end:
        c = text[i]
        if c == "\\":
            out.append(text[i:i + 2])
            i += 2
            continue
        if c == "[" and i in kinds and pairs[i] < end:
            kind = kinds[i]
            if kind[0] == "alt":
                out.append(_render(text, step, kinds, pairs, *kind[1][(step - 1) % len(kind[1])]))
            elif kind[0] == "edit":
                out.append(_render(text, step, kinds, pairs, *(kind[1] if step <= kind[3] else kind[2])))
            else:
                out.append("[" + _render(text, step, kinds, pairs, i + 1, pairs[i]) + "]")
            i = pairs[i] + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, prompt)] over steps 1..steps; one entry when the prompt does not change."""
    if "[" not in prompt:
        return [(steps, prompt)]
    pairs = _matching(prompt)
    kinds = _kinds(prompt, pairs, steps)
    if all(k[0] == "keep" for k in kinds.values()):
        return [(steps, prompt)]
    out: list[tuple[int, str]] = []
    for step in range(1, steps + 1):
        text = _render(prompt, step, kinds, pairs, 0, len(prompt))
        if out and out[-1][1] == text:
            out[-1] = (step, text)
        else:
            out.append((step, text))
    return out


# ---------------------------------------------------------------------------------------------- weights

def _tail_weight(text: str, close: int, floor: int) -> tuple[int, float] | None:
    """For a ')' at `close`: (where ':number' starts, the number) when the text before it ends so; the number is
    read from at most 24 characters back, so the whole parse stays linear."""
    start = max(floor, close - 24)
    match = _WEIGHT.search(text, start, close)
    return (match.start(), float(match.group(1))) if match else None


def weighted(text: str) -> list[Piece]:
    """`text` (no editing left) as pieces of (text, weight); a BREAK is a Piece("BREAK", -1). Two passes over the
    text: the brackets are matched first, then each character takes the product of the factors around it."""
    factor: dict[int, float] = {}  # index of an opening bracket -> its factor
    cut: dict[int, int] = {}  # index of a ')' with a weight -> where its ':number' starts
    stacks: dict[str, list[int]] = {"(": [], "[": []}
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            stacks[c].append(i)
        elif c == ")" and stacks["("]:
            open_ = stacks["("].pop()
            tail = _tail_weight(text, i, open_ + 1)
            factor[open_] = tail[1] if tail else UP
            if tail:
                cut[i] = tail[0]
        elif c == "]" and stacks["["]:
            factor[stacks["["].pop()] = DOWN
        i += 1
    for open_ in stacks["("]:  # unclosed: A1111 still weights the rest
        factor[open_] = UP
    for open_ in stacks["["]:
        factor[open_] = DOWN
    skip_until = {start: close for close, start in cut.items()}  # the ':1.3' of a weight is no text
    pieces: list[Piece] = []
    weights, buffer = [1.0], []

    def flush():
        if buffer:
            pieces.append(Piece("".join(buffer), weights[-1]))
            buffer.clear()

    closing = {")": "(", "]": "["}
    opened: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if i in skip_until:
            i = skip_until[i]
            continue
        if c == "\\" and i + 1 < len(text):
            buffer.append(text[i + 1])
            i += 2
            continue
        if c in "([" and i in factor:
            flush()
            weights.append(weights[-1] * factor[i])
            opened.append(c)
        elif c in ")]" and opened and opened[-1] == closing[c]:
            flush()
            weights.pop()
            opened.pop()
        elif c in ")]" and closing[c] in opened:  # closes an outer bracket past an inner one: A1111 does too
            flush()
            while opened and opened[-1] != closing[c]:
                opened.pop()
                weights.pop()
            opened.pop()
            weights.pop()
        else:
            buffer.append(c)
        i += 1
    flush()
    out: list[Piece] = []
    for p in pieces:  # BREAK splits the text it is in
        for k, part in enumerate(_BREAK.split(p.text)):
            if k:
                out.append(Piece(BREAK, -1.0))
            if part:
                out.append(Piece(part, p.weight))
    merged: list[Piece] = []
    for p in out:
        if merged and p.weight >= 0 and merged[-1].weight == p.weight:
            merged[-1] = Piece(merged[-1].text + p.text, p.weight)
        else:
            merged.append(p)
    return merged


def plain(prompt: str, steps: int = 2) -> str:
    """The prompt without any mark: the text of its last scheduled step, weights and BREAKs dropped."""
    text = schedule(prompt, steps)[-1][1]
    return " ".join("".join(p.text for p in weighted(text) if p.weight >= 0).split())


def uniform(prompt: str) -> bool:
    """Whether every piece weighs 1, no BREAK splits it and nothing changes over the steps (then the plain text is
    the same prompt)."""
    if "[" in prompt and len(schedule(prompt, 20)) > 1:
        return False
    return all(p.weight == 1.0 for p in weighted(schedule(prompt, 1)[0][1]))
