"""Bad input that must never lose a row or mislead: malformed CSV rows, clip paths that are directories,
a missing clip folder, a file given as the corpus, two corpora in one root, and the wording of what
`data check` and the training log report. Each corpus here is written by hand, with real mp4 files."""

import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_meld, mmsa_corpus as corpus, mmsa_row as row, write_corrupt

from trml_edge.data.check import FIXES, check_corpus
from trml_edge.data.corpus import load_split, open_corpus
from trml_edge.errors import DataError

def test_an_unterminated_quote_is_reported_at_its_line_and_loses_no_row(tmp_path):
    lines = [row("v", "0", "fine", 1.0),
             row("v", "1", '"he said hi, then left', -1.0),  # the quote never closes
             row("v", "2", "next row", 2.0),
             row("v", "3", '"a ""quoted"" word, kept"', -2.0),  # a quote that closes where its field ends
             row("v", "4", "last", 0.5, "test")]
    root = corpus(tmp_path / "c", lines, [("v", str(i)) for i in range(5)])
    records = {r.clip_id: r for r in open_corpus(root).records}
    assert len(records) == 5  # one record per physical row: none swallowed
    bad = records["v$_$1"]
    assert bad.problem.startswith("malformed row") and "quote" in bad.problem
    assert bad.where == "label.csv:3"  # the line where the quote opened (the header is line 1)
    assert records["v$_$2"].problem is None and records["v$_$2"].label == 2.0 and records["v$_$2"].text == "next row"
    assert records["v$_$3"].problem is None and records["v$_$3"].text == 'a "quoted" word, kept'
    assert records["v$_$4"].split == "test" and records["v$_$4"].label == 0.5
    report = check_corpus(root)
    assert [(p.kind, p.item, p.where) for p in report.problems if p.kind != "layout"] == [
        ("malformed_row", "v$_$1", "label.csv:3")]
    assert report.splits == {"train": 4, "test": 1}  # every physical row is counted
    assert report.usable == {"train": 3, "test": 1}


def test_an_unterminated_quote_on_the_last_row_is_reported_not_dropped(tmp_path):
    root = corpus(tmp_path / "c", [row("v", "0", "fine", 1.0), row("v", "1", '"open to the end', 1.0)],
                  [("v", "0"), ("v", "1")])
    records = open_corpus(root).records
    assert [r.clip_id for r in records] == ["v$_$0", "v$_$1"]
    assert records[1].problem.startswith("malformed row") and records[1].where == "label.csv:3"


def test_a_multiline_quoted_text_is_still_one_row(tmp_path):
    lines = [row("v", "0", '"first line\nsecond line, same row"', 1.0), row("v", "1", "after", -1.0)]
    root = corpus(tmp_path / "c", lines, [("v", "0"), ("v", "1")])
    records = open_corpus(root).records
    assert [(r.text, r.problem, r.where) for r in records] == [
        ("first line\nsecond line, same row", None, "label.csv:2"), ("after", None, "label.csv:4")]


def test_short_and_long_rows_are_named_as_such(tmp_path):
    lines = [row("v", "0", "fine", 1.0),
             "v,1,too short",  # 3 values
             row("v", "2", "an, unquoted comma", 1.0),  # 10 values
             row("v", "3", "trailing comma tolerated", 1.0) + ","]  # an empty 10th value
    root = corpus(tmp_path / "c", lines, [("v", str(i)) for i in range(4)])
    records = {r.clip_id: r for r in open_corpus(root).records}
    assert "3 values, the header has 9 columns" in records["v$_$1"].problem
    assert "10 values, the header has 9 columns" in records["v$_$2"].problem
    assert records["v$_$3"].problem is None and records["v$_$3"].label == 1.0
    kinds = {p.item: p.kind for p in check_corpus(root).problems if p.kind != "layout"}
    assert kinds == {"v$_$1": "malformed_row", "v$_$2": "malformed_row"}
    assert "mode" not in FIXES["malformed_row"] and "quote" in FIXES["malformed_row"]


def test_a_directory_named_like_a_clip_is_one_missing_video_not_also_an_orphan(tmp_path):
    root = corpus(tmp_path / "c", [row("v", "0", "fine", 1.0), row("v", "1", "dir", 1.0, "valid")], [("v", "0")])
    (root / "Raw" / "v" / "1.mp4").mkdir()
    report = check_corpus(root)
    clip_problems = [p for p in report.problems if p.kind != "layout"]
    assert [(p.kind, p.item) for p in clip_problems] == [("missing_video", "v$_$1")]
    assert "is a directory" in clip_problems[0].detail


def test_a_missing_clip_folder_is_said_once_as_such(tmp_path):
    root = corpus(tmp_path / "c", [row("v", "0", "a", 1.0), row("v", "1", "b", 1.0, "valid")], [])
    report = check_corpus(root)
    layout = [p.detail for p in report.problems if p.kind == "layout" and "Raw" in p.detail]
    assert len(layout) == 1 and "missing" in layout[0]
    missing = [p for p in report.problems if p.kind == "missing_video"]
    assert len(missing) == 2 and all("clip folder" in p.detail for p in missing)


def test_a_file_given_as_the_corpus_says_a_directory_is_expected(tmp_path):
    root = corpus(tmp_path / "c", [row("v", "0", "a", 1.0)], [("v", "0")])
    with pytest.raises(DataError, match="is a file; give the dataset directory") as e:
        open_corpus(root / "label.csv")
    assert "data synth" not in str(e.value)


def test_a_root_with_both_an_mmsa_and_a_meld_corpus_is_refused(tmp_path):
    root = tmp_path / "both"
    make_meld(root)
    corpus(root, [row("v", "0", "a", 1.0)], [("v", "0")])
    with pytest.raises(DataError, match="both an MMSA corpus .* and a MELD corpus"):
        open_corpus(root)


def _cli(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "trml_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_corrupt_clip_report_is_in_words_and_counts_in_good_english(tmp_path):
    rng = np.random.default_rng(0)
    root = corpus(tmp_path / "c", [row("v", "0", "a", 1.0), row("v", "1", "b", 1.0, "valid"),
                                   row("v", "2", "c", 1.0, "test"), row("v", "3", "broken", 1.0)],
                  [("v", "0"), ("v", "1"), ("v", "2")])
    write_corrupt(root / "Raw" / "v" / "3.mp4", rng)
    [p] = check_corpus(root).problems
    assert p.kind == "corrupt" and "Invalid data found" in p.detail
    assert "[Errno" not in p.detail and "data check" not in p.detail  # no raw errno, no "run what you ran"
    r = _cli("data", "check", root, "--json", tmp_path / "r.json")
    assert r.returncode == 1, r.stderr
    assert "1 problem;" in r.stdout and "1 problems" not in r.stdout
    json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_the_skip_log_counts_an_undecodable_clip_once(tmp_path, caplog):
    rng = np.random.default_rng(0)
    lines = [row("v", str(i), f"t{i}", 0.5) for i in range(3)] + [row("v", "3", "broken", 1.0)]
    root = corpus(tmp_path / "c", lines, [("v", str(i)) for i in range(3)])
    write_corrupt(root / "Raw" / "v" / "3.mp4", rng)
    with caplog.at_level(logging.WARNING, logger="trml_edge.data.corpus"):
        arrays = load_split(open_corpus(root).records, "train", 4, 32)
    assert len(arrays) == 3 and list(arrays.skipped) == ["v$_$3"]
    assert "skipped 1 of 4 clips" in caplog.text  # a split of 4 rows, 1 undecodable
    assert caplog.text.count("data check") == 1 and "[Errno" not in caplog.text  # said once, in words


def test_corpus_readers_form_a_tree():
    """records <- meld <- corpus: the shared records import neither reader, and meld does not import corpus."""
    pkg = Path(__file__).resolve().parents[1] / "trml_edge" / "data"

    def imports(name):
        tree = ast.parse((pkg / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    assert not {"trml_edge.data.corpus", "trml_edge.data.meld"} & imports("records")
    assert "trml_edge.data.corpus" not in imports("meld")
    assert "trml_edge.data.records" in imports("meld") and "trml_edge.data.records" in imports("corpus")


def test_load_split_skips_broken_clips_and_keeps_each_clip_with_its_own_frames(tmp_path):
    """The loader behind export --data, calibrate and trainable-backbone training, on a corpus with every
    kind of broken clip: each kept row has its own frames (decoded again here, one clip at a time)."""
    from data_fixtures import make_mmsa

    from trml_edge.data.video import read_frames

    problems = make_mmsa(tmp_path / "mosi")
    records = {r.clip_id: r for r in open_corpus(tmp_path / "mosi").records}
    for split, broken in (("train", {"corrupt", "missing_video"}), ("valid", {"empty"}),
                          ("test", {"bad_label", "no_video_stream"})):
        arrays = load_split(list(records.values()), split, 6, 24)
        assert set(arrays.skipped) == {problems[k] for k in broken}
        want = [c for c, r in records.items() if r.split == split and c not in arrays.skipped]
        assert arrays.ids == want  # in CSV order, nothing else dropped
        for i, clip in enumerate(arrays.ids):
            frames, mask = read_frames(records[clip].video, 6, size=24)
            assert np.array_equal(arrays.frames[i], frames) and np.array_equal(arrays.frame_mask[i], mask), clip
            assert arrays.labels[i] == np.float32(records[clip].label) and arrays.texts[i] == records[clip].text


def test_the_training_log_counts_an_undecodable_clip_once(tmp_path, caplog):
    """The streamed path `trml-edge train` takes with a frozen backbone (feature store, not load_split)."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.model.checkpoint import new_model
    from trml_edge.train.features import prepare_inputs

    rng = np.random.default_rng(0)
    lines = [row("v", str(i), f"t{i}", 0.5) for i in range(3)] + [row("v", "3", "broken", 1.0)]
    lines += [row("w", "0", "valid", 1.0, "valid")]
    root = corpus(tmp_path / "c", lines, [("v", str(i)) for i in range(3)] + [("w", "0")])
    write_corrupt(root / "Raw" / "v" / "3.mp4", rng)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="trml_edge.data.corpus"):  # whatever other tests set on trml_edge
        arrays, _ = prepare_inputs(new_model(TRMLConfig()), root)
    assert len(arrays["train"]) == 3 and list(arrays["train"].skipped) == ["v$_$3"]
    assert "train: skipped 1 of 4 clips" in caplog.text
