"""A CLIP-format BPE tokenizer learned from the shapes world's words (plus common English).

Written as `vocab.json` + `merges.txt` in the layout OpenAI's CLIP uses (byte-level alphabet, `</w>`
word ends, `<|startoftext|>`/`<|endoftext|>`), so `CLIPTokenizer.from_pretrained` loads it anywhere.
Any text tokenizes: words the world never saw fall back to smaller pieces and single bytes.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from .world import corpus_words

# words a user may type that are not in the grammar; the model knows them only as pieces
EXTRA_WORDS = ("the of in with on at to is dot ball box shape man woman figure picture image photo "
               "painting drawing color colour dark light bright pink grey gray brown cyan").split()
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_merges(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """Classic BPE (Sennrich et al.): repeatedly merge the most frequent adjacent pair."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in word_counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        words = merged
    return merges


def build_tokenizer(folder: Path, max_length: int = 32) -> int:
    """Write the tokenizer files into `folder`; returns the vocabulary size."""
    counts = {w: 100 for w in corpus_words()}
    counts.update({w: 10 for w in EXTRA_WORDS if w not in counts})
    merges = learn_merges(counts, num_merges=400)
    alphabet = list(bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": BOS,
              "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return len(vocab)
