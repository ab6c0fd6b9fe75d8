"""JSON reports are strict JSON: an undefined metric is null with a reason, never a bare NaN."""

import json
import os
import subprocess
import sys

import numpy as np
from data_fixtures import mmsa_corpus as corpus, mmsa_row as row

from trml_edge.config import MissingConfig, TRMLConfig
from trml_edge.train.loop import TrainConfig, train


def _strict(text: str):
    def refuse(c):
        raise AssertionError(f"{c} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_writes_null_and_a_reason_when_every_label_is_zero(tmp_path):
    from trml_edge.eval.evaluate import evaluate_run

    rng = np.random.default_rng(0)
    lines = [row("t", str(i), f"train text {i}", float(rng.choice([-2.0, 2.0]))) for i in range(8)]
    lines += [row("v", str(i), f"valid text {i}", 1.0 - 2 * (i % 2), "valid") for i in range(4)]
    lines += [row("z", str(i), f"test text {i}", 0.0, "test") for i in range(4)]  # every test label is 0
    clips = [(r.split(",")[0], r.split(",")[1]) for r in lines]
    root = corpus(tmp_path / "zero", lines, clips, rng)
    train(TrainConfig(data=str(root), out=str(tmp_path / "run"), epochs=1, batch_size=4), TRMLConfig(),
          progress=False)
    res = evaluate_run(tmp_path / "run", root, MissingConfig(rate=0.0), split="test")
    assert res["metrics"]["non0_acc2"] is None and res["metrics"]["non0_f1"] is None
    assert "every label is 0" in res["undefined"]["non0_acc2"]
    assert res["metrics"]["mae"] is not None
    json.dumps(res, allow_nan=False)
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "trml_edge", "evaluate", tmp_path / "run", "--data", root,
                        "--json", tmp_path / "e.json"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    saved = _strict((tmp_path / "e.json").read_text())
    assert saved["metrics"]["non0_acc2"] is None and "non0_acc2" in saved["undefined"]
    assert _strict(r.stdout[r.stdout.index("{"):])["metrics"]["non0_f1"] is None  # what is printed too


def test_comparison_rows_are_written_with_null_and_a_reason():
    from trml_edge.eval.experiment import _json_row

    row = {"method": "zero-fill", "test_missing_rate": 0.5, "mae": 1.25, "corr": float("nan"),
           "non0_acc2": float("nan")}
    out = _json_row(row)
    assert out["corr"] is None and out["non0_acc2"] is None and out["mae"] == 1.25
    assert set(out["undefined"]) == {"corr", "non0_acc2"} and "constant" in out["undefined"]["corr"]
    assert _strict(json.dumps(out, allow_nan=False)) == out
    assert "undefined" not in _json_row({"method": "x", "test_missing_rate": 0.0, "mae": 1.0})
