"""Reading MOSI/MOSEI (MMSA layout) and MELD (official layout) as they are shipped, and `data check`."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
from data_fixtures import CP1252_TEXT, GOOD, MOJIBAKE_TEXT, TRICKY_TEXTS, make_meld, make_mmsa

from trml_edge.data.check import FIXES, check_corpus
from trml_edge.data.corpus import corpus_task, open_corpus, open_for_model
from trml_edge.data.meld import EMOTIONS, SENTIMENTS
from trml_edge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def mmsa(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmsa")
    return root, make_mmsa(root)


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    return root, make_meld(root)


def test_mmsa_rows_keep_quoting_and_unicode_and_flag_bad_labels(mmsa):
    root, problems = mmsa
    records = {r.clip_id: r for r in open_corpus(root).records}
    texts = [r.text for r in records.values()]
    for i, t in enumerate(TRICKY_TEXTS):  # commas, quotes, a newline and non-ASCII survive exactly
        assert f"{t} #{i}" in texts
    assert records[problems["bad_label"]].problem == "label 4.5 is outside [-3, 3]"
    assert records[problems["missing_video"]].video is None
    assert records[problems["corrupt"]].problem is None  # a file problem, found when decoding
    assert sum(r.split == "train" for r in records.values()) == GOOD["train"] + 2
    assert corpus_task(root) == ("regression", 1, ())


def test_meld_decodes_cp1252_and_mojibake_and_maps_classes(meld):
    root, problems = meld
    corpus = open_corpus(root, "emotion")
    texts = [r.text for r in corpus.records]
    assert CP1252_TEXT in texts and MOJIBAKE_TEXT in texts
    first = corpus.records[0]  # train dialogue 0, utterance 0: "neutral" in the fixture
    assert first.clip_id == "train/dia0_utt0" and first.label == EMOTIONS.index("neutral")
    surprise = next(r for r in corpus.records if r.clip_id == "train/dia0_utt1")
    assert surprise.label == EMOTIONS.index("surprise")
    sentiment = {r.clip_id: r for r in open_corpus(root, "sentiment").records}
    assert sentiment["train/dia0_utt1"].label == SENTIMENTS.index("positive")
    bad = next(r for r in corpus.records if r.clip_id == problems["bad_label"])
    assert "excited" in bad.problem
    assert corpus_task(root, "emotion") == ("classification", 7, EMOTIONS)
    assert corpus_task(root, "sentiment") == ("classification", 3, SENTIMENTS)
    with pytest.raises(ConfigError, match="emotion .* or sentiment"):
        corpus_task(root, "mood")


def test_meld_folders_are_configurable_and_found_one_level_down(meld, tmp_path):
    root, _ = meld
    nested = tmp_path / "MELD.Raw"
    shutil.copytree(root, nested / "data")  # the archives unpack one level down
    (nested / "data" / "output_repeated_splits_test").rename(nested / "data" / "test_clips")
    corpus = open_corpus(nested)
    assert corpus.notes and "output_repeated_splits_test" in corpus.notes[0]
    assert all(r.video is None for r in corpus.records if r.split == "test")
    (nested / "meld_layout.json").write_text(json.dumps({"folders": {"test": "test_clips"}}))
    corpus = open_corpus(nested)
    assert not corpus.notes
    assert sum(r.video is not None for r in corpus.records if r.split == "test") == GOOD["test"] + 1
    (nested / "meld_layout.json").write_text(json.dumps({"folders": {"tset": "x"}}))
    with pytest.raises(ConfigError, match="train, valid, test"):
        open_corpus(nested)


def test_a_head_that_does_not_fit_the_corpus_is_refused_with_the_fix(meld, mmsa):
    with pytest.raises(DataError, match="num_classes=7"):
        open_for_model(meld[0], "regression", 1)
    with pytest.raises(DataError, match="task=regression"):
        open_for_model(mmsa[0], "classification", 3)
    assert open_for_model(meld[0], "classification", 3).class_names == SENTIMENTS


class _Trap:
    """Unpickling this would create a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_in_a_dataset_are_never_loaded(mmsa, tmp_path):
    root = tmp_path / "mosi"
    shutil.copytree(mmsa[0], root)
    flag = tmp_path / "pickle_was_loaded"
    (root / "aligned_50.pkl").write_bytes(pickle.dumps(_Trap(str(flag))))
    check_corpus(root)
    open_corpus(root)
    assert not flag.exists()
    only_pkl = tmp_path / "features_only"
    only_pkl.mkdir()
    shutil.copy(root / "aligned_50.pkl", only_pkl)
    with pytest.raises(DataError, match="not supported"):
        open_corpus(only_pkl)
    assert not flag.exists()


@pytest.mark.parametrize("name", ["mmsa", "meld"])
def test_check_reports_each_problem_of_the_corpus(name, request):
    root, problems = request.getfixturevalue(name)
    report = check_corpus(root)
    found = {p.kind: p.item for p in report.problems}
    assert found == problems  # exactly the planted problems, each once, and nothing else
    assert report.usable == GOOD
    assert sum(report.splits.values()) == sum(GOOD.values()) + len(problems) - 1  # the orphan has no row
    if name == "mmsa":
        for split, summary in report.labels.items():
            assert -3 <= summary["min"] <= summary["max"] <= 3, split  # the 4.5 row is not counted
    else:
        assert sum(report.labels["train"].values()) == GOOD["train"]
    quick = check_corpus(root, decode=False)  # existence only: the broken files are not opened
    assert {p.kind for p in quick.problems} <= {"missing_video", "bad_label", "orphan_video", "empty"}


def _cli(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "trml_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_data_check_exit_code_lists_problems_and_fixes(mmsa, tmp_path):
    root, problems = mmsa
    r = _cli("data", "check", root, "--json", tmp_path / "report.json")
    assert r.returncode == 1, r.stderr
    for kind in problems:
        assert kind in r.stdout and FIXES[kind] in r.stdout
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["problem_counts"] == {k: 1 for k in problems}
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    shutil.rmtree(clean / "Raw" / "bad")
    shutil.rmtree(clean / "Raw" / "orphan")
    lines = (clean / "label.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    (clean / "label.csv").write_text("".join(x for x in lines if not x.startswith("bad,")), encoding="utf-8")
    r = _cli("data", "check", clean)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no problems found" in r.stdout
