"""The prompt language (engine/prompt_syntax.py) applied to a model: weights on CLIP text encoders, prompt editing
and alternation by swapping the conditioning between steps, plain text for the models that read no weights.

CLIP families (built-in, SD1.5, SDXL): AUTOMATIC1111's method. The text is tokenized piece by piece, cut into chunks
of the tokenizer's length less its two end tokens (a BREAK starts a new chunk), each chunk encoded as the pipeline
does, each token's embedding multiplied by its weight, and the chunk scaled back to its own mean; the chunks are
joined along the sequence (a long prompt is no longer cut at 75 tokens). A prompt whose every weight is 1 and that
does not change over the steps goes to the pipeline as plain text: `(red:1.0)` gives the plain prompt's pixels.
T5 and LLM families get the plain text and a note saying the marks were read as plain words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import prompt_syntax as syntax
from .request import Note


@dataclass
class Conditioning:
    """What the pipeline call gets for the prompt: plain text, or embeddings (and a per-step swap)."""

    kwargs: dict = field(default_factory=dict)  # prompt / negative_prompt, or *_embeds
    notes: list = field(default_factory=list)
    at_step: dict = field(default_factory=dict)  # step index where the conditioning changes -> its kwargs


def conditioning(pipe, kin, prompt: str, negative: str | None, steps: int) -> Conditioning:
    """The prompt and negative of one generation as the pipeline takes them."""
    marked = syntax.has_syntax(prompt) or syntax.has_syntax(negative or "")
    plain_prompt = syntax.plain(prompt, steps) if marked else prompt
    plain_negative = (syntax.plain(negative, steps) if negative else negative) if marked else negative
    out = Conditioning()
    if not marked or (syntax.uniform(prompt) and syntax.uniform(negative or "")):
        out.kwargs = {"prompt": plain_prompt, **({"negative_prompt": plain_negative} if kin.negative_prompt else {})}
        return out
    encoder = _encoder(pipe)
    if encoder is None:
        out.kwargs = {"prompt": plain_prompt, **({"negative_prompt": plain_negative} if kin.negative_prompt else {})}
        out.notes.append(Note(f"{kin.label} models read no prompt weights, editing or alternation: the marks were "
                              f"dropped and the prompt read as '{plain_prompt[:80]}'.", kind="weights"))
        return out
    schedule = syntax.schedule(prompt, steps)
    negatives = syntax.schedule(negative or "", steps)
    changes = sorted({end for end, _ in schedule[:-1]} | {end for end, _ in negatives[:-1]})
    for k, start in enumerate([0, *changes]):
        text = next(t for end, t in schedule if end > start)
        neg = next(t for end, t in negatives if end > start)
        kwargs = encoder(pipe, text, neg)
        if k == 0:
            out.kwargs = kwargs
        else:
            out.at_step[start] = kwargs
    return out


def _encoder(pipe):
    """The function that encodes weighted text for this pipeline, or None (no CLIP text encoder to weight)."""
    tokenizer = getattr(pipe, "tokenizer", None)
    name = type(tokenizer).__name__ if tokenizer is not None else ""
    if "CLIP" not in name or not hasattr(pipe, "unet"):
        return None
    return _sdxl if getattr(pipe, "text_encoder_2", None) is not None else _sd


def _tokens(tokenizer, text: str) -> tuple[list[list[int]], list[list[float]]]:
    """Token ids and weights of weighted `text`, cut into chunks (a BREAK starts a new one)."""
    size = tokenizer.model_max_length - 2
    chunks, weights, ids, ws = [], [], [], []
    for piece in syntax.weighted(text):
        if piece.weight < 0:  # BREAK
            if ids:
                chunks.append(ids)
                weights.append(ws)
            ids, ws = [], []
            continue
        for token in tokenizer(piece.text, add_special_tokens=False).input_ids:
            if len(ids) == size:
                chunks.append(ids)
                weights.append(ws)
                ids, ws = [], []
            ids.append(token)
            ws.append(piece.weight)
    if ids or not chunks:
        chunks.append(ids)
        weights.append(ws)
    return chunks, weights


def _pad(tokenizer, chunk: list[int], ws: list[float]) -> tuple[list[int], list[float]]:
    size = tokenizer.model_max_length - 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ([tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id, *[pad] * (size - len(chunk))],
            [1.0, *ws, 1.0, *[1.0] * (size - len(chunk))])


def _weigh(z, weights):
    """Each token's embedding times its weight, the chunk scaled back to its own mean (A1111)."""
    import torch

    w = torch.tensor(weights, dtype=z.dtype, device=z.device).view(1, -1, 1)
    before = z.mean()
    z = z * w
    return z * (before / z.mean())


def _encode_chunks(tokenizer, text: str, neg: str):
    pos, pos_w = _tokens(tokenizer, text)
    nega, neg_w = _tokens(tokenizer, neg)
    n = max(len(pos), len(nega))  # both sides the same length
    pos, pos_w = pos + [[]] * (n - len(pos)), pos_w + [[]] * (n - len(pos_w))
    nega, neg_w = nega + [[]] * (n - len(nega)), neg_w + [[]] * (n - len(neg_w))
    return [_pad(tokenizer, c, w) for c, w in zip(pos, pos_w)], [_pad(tokenizer, c, w) for c, w in zip(nega, neg_w)]


def _sd(pipe, text: str, neg: str) -> dict:
    import torch

    device = pipe._execution_device
    sides = []
    with torch.no_grad():
        for chunks in _encode_chunks(pipe.tokenizer, text, neg):
            parts = [_weigh(pipe.text_encoder(torch.tensor([ids], device=device))[0], ws) for ids, ws in chunks]
            sides.append(torch.cat(parts, dim=1))
    return {"prompt_embeds": sides[0], "negative_prompt_embeds": sides[1]}


def _sdxl(pipe, text: str, neg: str) -> dict:
    import torch

    device = pipe._execution_device
    out = {}
    with torch.no_grad():
        for side, (first, second) in zip(("", "negative_"), zip(_encode_chunks(pipe.tokenizer, text, neg),
                                                                 _encode_chunks(pipe.tokenizer_2, text, neg))):
            parts, pooled = [], None
            for (ids1, ws1), (ids2, ws2) in zip(first, second):
                h1 = pipe.text_encoder(torch.tensor([ids1], device=device), output_hidden_states=True)
                h2 = pipe.text_encoder_2(torch.tensor([ids2], device=device), output_hidden_states=True)
                pooled = h2[0] if pooled is None else pooled  # the first chunk's, as A1111
                parts.append(torch.cat([_weigh(h1.hidden_states[-2], ws1), _weigh(h2.hidden_states[-2], ws2)], -1))
            out[f"{side}prompt_embeds"] = torch.cat(parts, dim=1)
            out[f"{side}pooled_prompt_embeds"] = pooled
    return out
