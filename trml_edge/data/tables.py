"""Reading the CSV files of real corpora as they are shipped.

Community CSVs are not always clean UTF-8. MELD's, for instance, mix UTF-8 with cp1252 bytes (``\\x92``
for a right quote) and with text that was decoded as cp1252 and re-encoded (``â€™``). This module reads
bytes line by line, decodes each line as UTF-8 and falls back to cp1252 (then latin-1, which cannot fail)
for lines that are not UTF-8, repairs that double-encoding, and hands the text to the standard ``csv``
module, so quoted fields with commas, quotes and newlines parse as the format defines.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from trml_edge.errors import DataError

MOJIBAKE_MARKERS = ("â€", "Ã", "Â")  # what UTF-8 looks like after a wrong cp1252 decode


def decode_line(raw: bytes) -> str:
    """UTF-8, else cp1252, else latin-1 (every byte string decodes as latin-1)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def repair_mojibake(text: str) -> str:
    """Undo a UTF-8 -> cp1252 -> UTF-8 double encoding (``donâ€™t`` -> ``don’t``); other text is unchanged."""
    if not any(m in text for m in MOJIBAKE_MARKERS):
        return text
    try:
        return text.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return text  # not a clean double encoding: leave it as written


def read_lines(path: Path) -> list[str]:
    """The file's physical lines (with their line ends), each decoded on its own (see the module docstring),
    without a BOM."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; check the path and its permissions") from e
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return [decode_line(line) for line in raw.splitlines(keepends=True)]


def read_text(path: Path) -> str:
    """The whole file as text, decoded line by line (see the module docstring), without a BOM."""
    return "".join(read_lines(path))


class _Lines:
    """An iterator over physical lines whose position can be read and moved, to resynchronise after a
    malformed quote."""

    def __init__(self, lines: list[str]):
        self.lines, self.pos = lines, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _one_line(line: str, n: int) -> list[str]:
    """The fields of one physical line whose quoting is broken, split at every comma (quotes kept as
    written). When that gives more than the ``n`` header columns, the fields before the first one holding
    a quote keep their columns, the last fields keep theirs, and what lies between is the broken field."""
    fields = next(csv.reader([line.rstrip("\r\n")], quoting=csv.QUOTE_NONE), [])
    q = next((i for i, f in enumerate(fields) if '"' in f), None)
    if q is None or len(fields) <= n or q >= n:
        return fields
    tail = n - q - 1  # columns after the broken one
    return [*fields[:q], ",".join(fields[q : len(fields) - tail]), *fields[len(fields) - tail :]]


def read_rows(path: Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str], str | None]]:
    """Rows of a CSV as (line number, {column: stripped value}, problem); header names are matched without
    spaces. Every physical line is accounted for: a blank line is skipped, anything else is a row.

    ``problem`` is None for a well-formed row, else a sentence starting with ``"malformed row"``: a row
    with fewer or more values than the header (trailing empty values are tolerated), or a quote that does
    not close where a field ends. A broken quote would otherwise swallow the rest of its line and the
    following rows into one field; instead its line becomes one malformed row (fields split as written)
    and reading resumes on the next physical line, so no row is lost.

    Raises ``DataError`` when a required column is missing, naming the columns that were found.
    """
    lines = read_lines(path)
    if not lines:
        raise DataError(f"{path} is empty; expected the {what} header {list(required)}")
    header = [h.strip() for h in next(csv.reader([lines[0]]), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} lacks columns {missing} (found {header}); expected the {what} header")
    src = _Lines(lines)
    src.pos = 1
    reader = csv.reader(src, strict=True)
    rows = []
    while src.pos < len(lines):
        start = src.pos  # 0-based index of the record's first physical line
        problem = None
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            values = _one_line(lines[start], len(header))
            problem = f"the quote on this line does not close where a field ends ({e})"
        if problem is None and src.pos - start > 1 and len(values) != len(header):
            values = _one_line(lines[start], len(header))
            problem = (f"a quoted value opened on this line runs over {src.pos - start} lines and leaves "
                       f"{len(values)} values")
        if problem is not None:
            problem = (f"malformed row: {problem}; the header has {len(header)} columns. Close the quote, or "
                       'double it ("") inside a quoted field; the following lines are read as their own rows')
            src.pos = start + 1
            reader = csv.reader(src, strict=True)  # resume on the next physical line
        if not any(v.strip() for v in values) and problem is None:
            continue  # blank line
        extra = [v for v in values[len(header):] if v.strip()]
        if problem is None and len(values) < len(header):
            problem = (f"malformed row: {len(values)} values, the header has {len(header)} columns; quote a value "
                       "that holds a comma and fill every column")
        elif problem is None and extra:
            problem = (f"malformed row: {len(values)} values, the header has {len(header)} columns (extra: "
                       f"{extra[:3]}); quote a value that holds a comma")
        values = values + [""] * (len(header) - len(values))
        row = {h: repair_mojibake(v.strip()) for h, v in zip(header, values)}
        rows.append((start + 1, row, problem))
    return rows
