"""CLIP's byte-level BPE tokenizer in plain Python + numpy, reading the vocabulary file shipped in a bundle.

Behaviour matched to open_clip's ``SimpleTokenizer`` with its default ``clean="lower"``:

1. clean: HTML entities unescaped (twice), whitespace runs collapsed to one space, stripped, lower-cased;
2. split into pieces: contractions ('s 't 're 've 'm 'll 'd), letter runs, single digits, and runs of
   anything that is neither space, letter nor digit;
3. each piece's UTF-8 bytes are mapped to printable characters, the last one marked end-of-word, and
   merged pair by pair in the order of the merge list;
4. wrapped in SOT ... EOT and padded with 0 (or cut, keeping EOT last) to the context length.

open_clip first runs ``ftfy.fix_text``; we reproduce the parts of it that change valid text (curly quotes,
ligatures, full-width forms, NFC) but not its mojibake repair, so only text that was decoded with the wrong
codec (``"cafÃ©"``) can tokenize differently.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x2 (with/without end-of-word) + merges + 2 specials
SOT, EOT = "<start_of_text>", "<end_of_text>"
_NEVER = 1 << 62  # rank of a pair that is not in the merge list

# Python's ``re`` has no \p{L}; ``[^\W\d_]`` is "word character that is not a digit or underscore" = letters.
_PIECES = re.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE,
)


def _byte_alphabet() -> dict[int, str]:
    """Every byte -> a printable character: printable Latin-1 bytes map to themselves, the rest to 256+.

    The dict's order is the vocabulary's order: the printable bytes first, then the others in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


_QUOTES = {**{c: "'" for c in "\u02bc\u2018\u2019\u201a\u201b"}, **{c: '"' for c in "\u201c\u201d\u201e\u201f"}}
_LIGATURES = "\u0132\u0133\u013f\u0140\u0149\u01c4\u01c5\u01c6\u01c7\u01c8\u01c9\u01ca\u01cb\u01cc" \
             "\u01f1\u01f2\u01f3\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"
_PLAIN = str.maketrans({**_QUOTES, **{c: unicodedata.normalize("NFKC", c) for c in _LIGATURES}})


def _plain(text: str) -> str:
    """The parts of ftfy.fix_text that change valid text: ligatures and full-width forms spelled out,
    curly quotes straightened, NFC normalization. (Mojibake repair is not reproduced.)"""
    text = text.translate(_PLAIN)
    text = "".join(unicodedata.normalize("NFKC", c) if c == "\u3000" or "\uff01" <= c <= "\uffef" else c
                   for c in text)
    return unicodedata.normalize("NFC", text)


def clean(text: str) -> str:
    text = html.unescape(html.unescape(_plain(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class BPETokenizer:
    def __init__(self, vocab_path: str | Path, context_length: int = 77):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        self.byte_table = _byte_alphabet()
        symbols = list(self.byte_table.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.ids[SOT], self.ids[EOT]
        self.context_length = context_length
        self._merge = lru_cache(maxsize=65536)(self._merge_uncached)

    def _merge_uncached(self, piece: str) -> tuple[str, ...]:
        """Apply the merge list to one piece (already byte-mapped). Lowest-ranked adjacent pair first."""
        parts = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(parts) > 1:
            rank, pair = min((self.ranks.get(p, _NEVER), p) for p in zip(parts, parts[1:]))
            if rank == _NEVER:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in _PIECES.findall(clean(text)):
            if piece in (SOT, EOT):
                out.append(self.ids[piece])
                continue
            mapped = "".join(self.byte_table[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[p] for p in self._merge(mapped))
        return out

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        """Texts -> int64 (N, context_length): SOT, BPE ids, EOT, zero padding."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out
