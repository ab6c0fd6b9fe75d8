r"""CLIP's byte-level BPE tokenizer in plain Python + numpy, reading the vocabulary file shipped in a bundle.

Behaviour matched to open_clip's ``SimpleTokenizer`` with its default ``clean="lower"``:

1. clean: what ``ftfy.fix_text`` does to valid text (below), HTML entities unescaped twice more,
   whitespace runs collapsed to one space, stripped, lower-cased;
2. split into pieces: contractions ('s 't 're 've 'm 'll 'd), letter runs, single digits, and runs of
   anything that is neither space, letter nor number (Unicode categories L* and N*, as ``regex``'s
   ``\p{L}`` and ``\p{N}``);
3. each piece's UTF-8 bytes are mapped to printable characters, the last one marked end-of-word, and
   merged pair by pair in the order of the merge list;
4. wrapped in SOT ... EOT and padded with 0 (or cut, keeping EOT last) to the context length.

From ``ftfy.fix_text`` (6.x, default settings) we reproduce, line by line and repeated until the line no
longer changes: HTML entities unescaped (only up to the first line holding a ``<``), C1 control
characters read as Windows-1252, Latin ligatures spelled out, full-width forms made normal width, curly
quotes straightened, line breaks unified, surrogates repaired, terminal escapes and other control
characters removed, NFC. Not reproduced: its mojibake repair (``"cafÃ©"`` -> ``"café"``), so only text
that was decoded with the wrong codec can tokenize differently, and characters that Python's Unicode
database does not know yet (unassigned in it, assigned in ``regex``'s newer one).
"""

from __future__ import annotations

import gzip
import html
import html.entities
import itertools
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x2 (with/without end-of-word) + merges + 2 specials
SOT, EOT = "<start_of_text>", "<end_of_text>"
_NEVER = 1 << 62  # rank of a pair that is not in the merge list

_CONTRACTIONS = r"<start_of_text>|<end_of_text>|'[s\u017f]|'t|'re|'ve|'m|'ll|'d"  # 'ſ: 's under IGNORECASE
# regex's \s (Unicode White_Space); Python's \s would also take \x1c-\x1f
_SPACE = " \t\n\x0b\x0c\r\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NEITHER = "\u0345"  # casefolds to a letter: under IGNORECASE no branch of open_clip's pattern matches it


def _char_class(categories: str) -> str:
    """A ``re`` character class body for every code point whose Unicode category starts with one of
    ``categories`` (Python's ``re`` has no ``\\p{L}``)."""
    out, start, prev = [], None, None
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp))[0] in categories and chr(cp) != _NEITHER:
            if prev is not None and cp == prev + 1:
                prev = cp
                continue
            if start is not None:
                out.append((start, prev))
            start = prev = cp
    out.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in out)


@lru_cache(maxsize=1)
def _pieces() -> re.Pattern:
    """open_clip's ``[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` split, built once (0.3 s) on first use."""
    letters, numbers = _char_class("L"), _char_class("N")
    # no IGNORECASE: the text is lower-cased already, and under it Python's re matches U+0345 as a letter
    return re.compile(rf"{_CONTRACTIONS}|[{letters}]+|[{numbers}]|[^{_SPACE}{letters}{numbers}{_NEITHER}]+")


def _byte_alphabet() -> dict[int, str]:
    """Every byte -> a printable character: printable Latin-1 bytes map to themselves, the rest to 256+.

    The dict's order is the vocabulary's order: the printable bytes first, then the others in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


# --- ftfy.fix_text on valid text (ftfy 6.x, default settings), with its own tables ---
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ENTITIES = {f"&{name}": char for name, char in html.entities.html5.items() if name.endswith(";")}
_ENTITIES.update({f"&{name.upper()}": char.upper() for name, char in html.entities.html5.items()
                  if name.endswith(";") and name == name.lower()
                  and html.unescape(f"&{name.upper()}") == f"&{name.upper()}"})  # &NTILDE; -> Ñ
_C1 = re.compile("[\x80-\x9f]")
_ANSI = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SINGLE_QUOTES, _DOUBLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]"), re.compile("[\u201c-\u201f]")
_LIGATURES = {0x132: "IJ", 0x133: "ij", 0x149: "\u02bcn", 0x1F1: "DZ", 0x1F2: "Dz", 0x1F3: "dz", 0x1C4: "D\u017d",
              0x1C5: "D\u017e", 0x1C6: "d\u017e", 0x1C7: "LJ", 0x1C8: "Lj", 0x1C9: "lj", 0x1CA: "NJ", 0x1CB: "Nj",
              0x1CC: "nj", 0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft",
              0xFB06: "st"}
_WIDTH = {0x3000: " ", **{i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)
                         if unicodedata.normalize("NFKC", chr(i)) != chr(i)}}
_CONTROL = dict.fromkeys(itertools.chain(range(0x00, 0x09), [0x0B], range(0x0E, 0x20), [0x7F], range(0x206A, 0x2070),
                                         [0xFEFF], range(0xFFF9, 0xFFFD)))
_SURROGATE_PAIR, _SURROGATE = re.compile("[\ud800-\udbff][\udc00-\udfff]"), re.compile("[\ud800-\udfff]")


def _entity(m: re.Match) -> str:
    text = m.group(0)
    if text in _ENTITIES:
        return _ENTITIES[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped  # a numeric reference decoded whole, or left alone
    return text


def _c1(m: re.Match) -> str:
    """A C1 control character read as the Windows-1252 byte it most likely was (ftfy's sloppy codec keeps
    the five bytes Windows-1252 leaves undefined)."""
    try:
        return m.group(0).encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:
        return m.group(0)


def _fix_line(text: str, unescape: bool) -> str:
    while True:
        orig = text
        if unescape:
            text = _ENTITY.sub(_entity, text)
        text = _C1.sub(_c1, text).translate(_LIGATURES).translate(_WIDTH)
        text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
        for brk in ("\r\n", "\r", "\u2028", "\u2029", "\u0085"):
            text = text.replace(brk, "\n")
        text = _SURROGATE_PAIR.sub(lambda m: chr(0x10000 + (ord(m.group(0)[0]) - 0xD800) * 0x400
                                                 + ord(m.group(0)[1]) - 0xDC00), text)
        text = _SURROGATE.sub("\ufffd", text)
        text = _ANSI.sub("", text).translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def _plain(text: str) -> str:
    """``ftfy.fix_text`` without its mojibake repair: line by line (a line is cut at 1e6 characters), HTML
    unescaping switched off from the first line that holds a ``<``."""
    out, pos, unescape = [], 0, True
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + 1_000_000)
        line = text[pos:end]
        unescape = unescape and "<" not in line
        out.append(_fix_line(line, unescape))
        pos = end
    return "".join(out)


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
        for piece in _pieces().findall(clean(text)):
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
