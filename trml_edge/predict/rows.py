"""The rows ``predict`` writes: one per prediction (or per input that could not be scored), JSONL or CSV.

Every row is written whole and flushed before the next one starts, so a reader that tails the file, or a run
stopped by Ctrl-C or SIGTERM, only ever sees complete rows. Columns, in order:

* ``source``: the video file, the manifest row (``FILE:LINE``) or the live URL;
* ``item``: the utterance's number in its source (0, 1, ... for the cues of a subtitle file or track), empty
  for a whole clip and for a live source;
* ``time``, ``end``: seconds from the start of the source (live: ``time`` is when the score was taken, since
  ``predict`` began reading the source, across reconnects; ``end`` is empty);
* ``output``: the score (regression), or ``{"class": ..., "probabilities": [...]}`` (classification; CSV: the
  class, with the probabilities in ``probabilities``); empty when there is no prediction;
* ``virtual_modality``: ``""`` (both present), ``"visual"`` (video missing: generated from the text) or
  ``"text"``, as the server's ``VIRTUAL_MODALITY``; empty when there is no prediction;
* ``text``: the text used; ``frames``: how many frames were sent; ``span``: the times of the first and last of
  them (``[t0, t1]``; CSV: two columns ``span_start``, ``span_end``);
* ``latency_ms``: from the window's last input (its last frame decoded or received) to the score;
* ``dropped``: live only, frames the decoder dropped since the previous row because the model fell behind;
* ``wall``: the Unix time of the score; ``error``: why this row has no prediction, else empty.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from trml_edge.errors import ConfigError

FIELDS = ("source", "item", "time", "end", "output", "virtual_modality", "text", "frames", "span", "latency_ms",
          "dropped", "wall", "error")
CSV_FIELDS = ("source", "item", "time", "end", "output", "probabilities", "virtual_modality", "text", "frames",
              "span_start", "span_end", "latency_ms", "dropped", "wall", "error")
FORMATS = (".jsonl", ".csv")


def output_value(out: np.ndarray, classes: tuple[str, ...] | None) -> float | dict:
    """A score, or the class and softmax probabilities of class logits (named by ``classes`` when given)."""
    out = np.asarray(out, np.float64)
    if out.ndim == 0 or out.size == 1:
        return round(float(out.reshape(-1)[0]), 6)
    p = np.exp(out - out.max())
    p /= p.sum()
    k = int(p.argmax())
    if classes is not None and len(classes) != len(p):
        raise ConfigError(f"--classes names {len(classes)} classes but the model answers {len(p)} logits; give "
                          f"{len(p)} names, in the head's class order")
    return {"class": classes[k] if classes else k, "probabilities": [round(float(x), 6) for x in p]}


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isinf(x)) else round(float(x), nd)


def make_row(source: str, item: int | None, time: float, end: float | None, output, virtual: str | None,
             text: str | None, frames: int, span, latency_ms: float | None, dropped: int | None, wall: float,
             error: str | None = None) -> dict:
    return {"source": source, "item": item, "time": _r(time, 3), "end": _r(end, 3), "output": output,
            "virtual_modality": virtual, "text": text, "frames": int(frames),
            "span": None if span is None else [_r(span[0], 3), _r(span[1], 3)],
            "latency_ms": _r(latency_ms, 2), "dropped": dropped, "wall": _r(wall, 3), "error": error}


class RowWriter:
    """JSONL (``.jsonl``, or standard output when no file is given) or CSV (``.csv``), a whole row a write."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.kind = ".jsonl" if self.path is None else self.path.suffix.lower()
        if self.kind not in FORMATS:
            raise ConfigError(f"--out {path}: the file name must end in .jsonl (one JSON object a line) or .csv")
        if self.path is not None and self.path.is_dir():
            raise ConfigError(f"--out {path} is a folder; give a file name ending in .jsonl or .csv")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8", newline="") if self.path is not None else sys.stdout
        self.rows = 0
        if self.kind == ".csv":
            self._write(self._csv_line(CSV_FIELDS))

    def write(self, row: dict) -> None:
        if self.kind == ".jsonl":
            self._write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._write(self._csv_line([_csv_cell(row, k) for k in CSV_FIELDS]))
        self.rows += 1

    @staticmethod
    def _csv_line(cells) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    def _write(self, line: str) -> None:
        self._f.write(line)  # one call with the whole row, then flushed: a reader never sees half a row
        self._f.flush()

    def close(self) -> None:
        if self._f is not sys.stdout:
            self._f.close()


def _csv_cell(row: dict, key: str):
    out = row["output"]
    if key == "output":
        return out["class"] if isinstance(out, dict) else ("" if out is None else out)
    if key == "probabilities":
        return json.dumps(out["probabilities"]) if isinstance(out, dict) else ""
    if key in ("span_start", "span_end"):
        return "" if row["span"] is None else row["span"][0 if key == "span_start" else 1]
    value = row[key]
    return "" if value is None else value


def terminal_line(row: dict) -> str:
    """One short line per live score, for the terminal."""
    out = row["output"]
    if row["error"]:
        what = f"no prediction: {row['error']}"
    elif isinstance(out, dict):
        what = f"class={out['class']} p={max(out['probabilities']):.3f}"
    else:
        what = f"score={out:+.4f}"
    vm = row["virtual_modality"]
    scenario = {"": "complete", "visual": "video missing", "text": "text missing"}.get(vm, "-")
    extra = f"  dropped={row['dropped']}" if row.get("dropped") else ""
    lat = f"  {row['latency_ms']:.0f} ms" if row["latency_ms"] is not None else ""
    return f"t={row['time']:8.2f}s  {what}  [{scenario}, {row['frames']} frames]{lat}{extra}"
