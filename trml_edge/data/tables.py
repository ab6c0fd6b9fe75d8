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


def read_text(path: Path) -> str:
    """The whole file as text, decoded line by line (see the module docstring), without a BOM."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; check the path and its permissions") from e
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return "".join(decode_line(line) for line in raw.splitlines(keepends=True))


def read_rows(path: Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {column: stripped value}); header names are matched without spaces.

    Raises ``DataError`` when a required column is missing, naming the columns that were found.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path} is empty; expected the {what} header {list(required)}") from None
    except csv.Error as e:
        raise DataError(f"{path}: cannot parse the header ({e}); expected the {what} header") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} lacks columns {missing} (found {header}); expected the {what} header")
    rows, start = [], reader.line_num + 1
    try:
        for values in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: report the first
            if not any(v.strip() for v in values):
                continue  # blank line
            values = values + [""] * (len(header) - len(values))
            row = {h: repair_mojibake(v.strip()) for h, v in zip(header, values)}
            rows.append((line, row))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}; fix the quoting on that line") from e
    return rows
