"""Export paths the other tests do not take: `export --force` over an existing bundle, the end-to-end gate
of an FP16 bundle, and a classification (MELD) bundle through export and the torch-free runtime."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import GOOD, make_meld
from export_fixtures import bundle, synth_data, trained_run

from trml_edge.export.parity import DEFAULT_BUDGETS
from trml_edge.runtime.bundle import MANIFEST, load_bundle
from trml_edge.runtime.pipeline import Pipeline


FP16 = DEFAULT_BUDGETS["fp16"]


def _cli(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "trml_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_export_refuses_an_existing_bundle_and_force_replaces_it_fp16_gate_included(tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle("fp32"), out)
    (out / "marker").write_text("the old bundle")
    r = _cli("export", trained_run(), "--out", out, "--precision", "fp16", "--data", synth_data())
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert (out / "marker").is_file()  # refused before touching anything
    r = _cli("export", trained_run(), "--out", out, "--precision", "fp16", "--data", synth_data(), "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (out / "marker").exists()  # replaced, not merged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old copy left
    b = load_bundle(out)
    assert {e["precision"] for e in b.graphs.values()} == {"fp16"}
    rows = b.manifest["parity"]["end_to_end"]  # the FP16 bundle passed the end-to-end gate ...
    assert [r["scenario"] for r in rows] == ["complete", "visual_missing", "text_missing"]
    for row in rows:
        assert row["ok"] and row["samples"] > 10
        assert row["budget"] == {"acc_drop": FP16.acc_drop, "mae_rise": FP16.mae_rise}  # fp16's, not fp32's
        assert row["onnx"]["has0_acc2"] >= row["torch"]["has0_acc2"] - row["budget"]["acc_drop"]
        assert 0 < row["pred_max_abs"] < 0.05  # ... with FP16 rounding visible, and small


@pytest.fixture(scope="module")
def meld_bundle(tmp_path_factory):
    from trml_edge.config import TRMLConfig
    from trml_edge.data.corpus import corpus_task
    from trml_edge.export.exporter import export_bundle
    from trml_edge.export.recipe import ExportConfig
    from trml_edge.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("meld")
    make_meld(root / "data")
    task, k, _ = corpus_task(root / "data", "emotion")
    cfg = TRMLConfig()
    cfg.head.task, cfg.head.num_classes = task, k
    train(TrainConfig(data=str(root / "data"), out=str(root / "run"), epochs=2, batch_size=8), cfg, progress=False)
    export_bundle(ExportConfig(run=str(root / "run"), out=str(root / "bundle"), data=str(root / "data")))
    return root


@pytest.mark.slow
def test_a_classification_bundle_exports_gates_and_runs_without_torch_models(meld_bundle):
    from trml_edge.data.corpus import load_split, open_for_model
    from trml_edge.export.parity import torch_predict
    from trml_edge.model.checkpoint import load_run

    b = load_bundle(meld_bundle / "bundle")
    assert b.task == "classification"
    assert b.graphs["fusion_head"]["outputs"][0]["shape"][-1] == 7
    rows = b.manifest["parity"]["end_to_end"]
    assert [r["scenario"] for r in rows] == ["complete", "visual_missing", "text_missing"]
    assert all(r["ok"] and set(r["onnx"]) == {"acc", "f1"} and "mae_rise" not in r for r in rows)
    assert rows[0]["samples"] == GOOD["test"]
    model = load_run(meld_bundle / "run").eval()
    arrays = load_split(open_for_model(meld_bundle / "data", "classification", 7).records, "test",
                        model.cfg.temporal.max_frames, model.cfg.preprocess.image_size)
    pipe = Pipeline(b)
    n = len(arrays)
    has_v = np.arange(n) % 3 != 1
    has_t = np.arange(n) % 3 != 2
    want = torch_predict(model, arrays, has_v, has_t)  # (n, 7) logits
    got = pipe.predict_batch(arrays.frames, arrays.frame_mask, list(arrays.texts), has_v, has_t, batch=3)
    assert got.shape == (n, 7)
    np.testing.assert_allclose(got, want, atol=1e-4)
    one = pipe.predict(arrays.frames[0][arrays.frame_mask[0]], arrays.texts[0])
    assert one.output.shape == (7,) and one.virtual_modality == ""
    np.testing.assert_allclose(one.output, want[0], atol=1e-4)
    assert json.loads((meld_bundle / "bundle" / MANIFEST).read_text())["model"]["task"] == "classification"
