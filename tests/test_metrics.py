"""The MMSA metric definitions, against values worked out by hand."""

import numpy as np
import pytest

from trml_edge.metrics import classification_metrics, regression_metrics, weighted_f1


def test_weighted_f1_by_hand():
    # class 1: tp=2 fp=1 fn=1 -> F1 = 4/6; class 0: tp=1 fp=1 fn=1 -> F1 = 2/4; supports 3 and 2
    truth = np.array([1, 1, 1, 0, 0])
    pred = np.array([1, 1, 0, 0, 1])
    assert weighted_f1(truth, pred) == pytest.approx((3 * 4 / 6 + 2 * 2 / 4) / 5)


def test_has0_counts_zero_as_positive_and_non0_drops_zero_labels():
    truth = np.array([0.0, 0.0, 1.0, -1.0, 2.0, -2.0])
    pred = np.array([0.0, -0.5, 0.5, 0.5, -1.0, -2.5])
    m = regression_metrics(pred, truth)
    # Has0: truth >= 0 -> [T,T,T,F,T,F]; pred >= 0 -> [T,F,T,T,F,F]: agree on samples 0, 2, 5
    assert m["has0_acc2"] == pytest.approx(3 / 6)
    # Non0: labels 0 dropped -> truth>0 [T,F,T,F], pred>0 [T,T,F,F]: agree on 2 of 4
    assert m["non0_acc2"] == pytest.approx(2 / 4)
    assert m["mae"] == pytest.approx(np.mean([0, 0.5, 0.5, 1.5, 3.0, 0.5]))


def test_prediction_of_exactly_zero_is_negative_for_non0():
    truth = np.array([1.0, -1.0, 2.0])
    pred = np.zeros(3)
    m = regression_metrics(pred, truth)
    assert m["non0_acc2"] == pytest.approx(1 / 3)  # 0 > 0 is False: [F,F,F] vs [T,F,T]; with >= it would be 2/3
    assert m["has0_acc2"] == pytest.approx(2 / 3)  # 0 >= 0 is True: [T,T,T] vs [T,F,T]; with > it would be 1/3


def test_acc7_and_acc5_clip_then_round_half_to_even():
    truth = np.array([3.0, -3.0, 0.5, 2.4])
    pred = np.array([3.6, -2.6, 0.4, 1.6])
    m = regression_metrics(pred, truth)
    # Acc-7: clip to [-3,3] -> pred [3,-2.6,0.4,1.6] round [3,-3,0,2]; truth round [3,-3,0 (half->even),2]
    assert m["acc7"] == pytest.approx(4 / 4)
    # Acc-5: clip to [-2,2] -> pred [2,-2,0.4,1.6] -> [2,-2,0,2]; truth [2,-2,0.5,2] -> [2,-2,0,2]
    assert m["acc5"] == pytest.approx(4 / 4)
    m2 = regression_metrics(np.array([1.4]), np.array([1.6]))
    assert m2["acc7"] == 0.0  # 1 vs 2


def test_correlation_and_shape_errors():
    truth = np.array([-2.0, -1.0, 1.0, 2.0])
    assert regression_metrics(truth * 0.5, truth)["corr"] == pytest.approx(1.0)
    assert regression_metrics(-truth, truth)["corr"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal"):
        regression_metrics(np.zeros(3), np.zeros(4))


def test_classification_metrics():
    m = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert m["acc"] == pytest.approx(3 / 4)
    # class0 F1=1 (support 1), class1: tp1 fn1 -> 2/3 (support 2), class2: tp1 fp1 -> 2/3 (support 1)
    assert m["f1"] == pytest.approx((1 + 2 * 2 / 3 + 2 / 3) / 4)


# --- cases that tell each comparison apart, and an independent re-derivation ---

def test_has0_counts_a_zero_label_as_non_negative():
    m = regression_metrics(np.array([1.0, 1.0, -1.0]), np.array([0.0, 0.0, -1.0]))
    assert m["has0_acc2"] == 1.0  # truth >= 0: [T,T,F]; with truth > 0 it would be 1/3


def test_non0_drops_zero_labels_before_comparing():
    m = regression_metrics(np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0]))
    assert m["non0_acc2"] == 1.0  # one sample left; kept zeros would give 1/3
    assert m["non0_f1"] == 1.0


def test_f1_is_support_weighted_by_hand():
    # has0: truth [T,T,T,F], pred [T,T,F,F]. Class T: tp 2, fp 0, fn 1 -> F1 4/5 (support 3);
    # class F: tp 1, fp 1, fn 0 -> F1 2/3 (support 1). Weighted (3*0.8 + 2/3)/4; macro would be 0.733,
    # the positive-class F1 0.8.
    want = (3 * 0.8 + 2 / 3) / 4
    assert regression_metrics(np.array([1.0, 1.0, -1.0, -1.0]), np.array([1.0, 2.0, 3.0, -1.0]))["has0_f1"] \
        == pytest.approx(want)
    # non0: the zero label is dropped, and the prediction 0 is negative: the same table as above
    m = regression_metrics(np.array([-5.0, 1.0, 1.0, 0.0, -1.0]), np.array([0.0, 1.0, 2.0, 3.0, -1.0]))
    assert m["non0_f1"] == pytest.approx(want)
    # has0 keeps the zero label: truth [T,T,T,T,F], pred [F,T,T,T,F].
    # T: tp 3, fp 0, fn 1 -> 6/7 (support 4); F: tp 1, fp 1, fn 0 -> 2/3 (support 1)
    assert m["has0_f1"] == pytest.approx((4 * 6 / 7 + 2 / 3) / 5)


def _reference(pred, truth):
    """The MMSA definitions re-derived with plain Python loops and the textbook formulas."""
    def f1w(t, p):
        total = 0.0
        for c in set(t):
            tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
            fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
            fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
            total += t.count(c) * (2 * tp / (2 * tp + fp + fn))
        return total / len(t)

    pred, truth = [float(x) for x in pred], [float(x) for x in truth]
    n = len(pred)
    h_t, h_p = [y >= 0 for y in truth], [x >= 0 for x in pred]
    keep = [i for i in range(n) if truth[i] != 0]
    n_t, n_p = [truth[i] > 0 for i in keep], [pred[i] > 0 for i in keep]
    mx, my = sum(pred) / n, sum(truth) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(pred, truth))
    sxx, syy = sum((x - mx) ** 2 for x in pred), sum((y - my) ** 2 for y in truth)

    def acc(lo, hi):
        clip = (lambda v: min(max(v, lo), hi))
        return sum(round(clip(x)) == round(clip(y)) for x, y in zip(pred, truth)) / n  # round(): half to even

    return {"has0_acc2": sum(a == b for a, b in zip(h_t, h_p)) / n, "has0_f1": f1w(h_t, h_p),
            "non0_acc2": sum(a == b for a, b in zip(n_t, n_p)) / len(keep), "non0_f1": f1w(n_t, n_p),
            "acc5": acc(-2, 2), "acc7": acc(-3, 3), "mae": sum(abs(x - y) for x, y in zip(pred, truth)) / n,
            "corr": sxy / (sxx * syy) ** 0.5}


def test_every_regression_metric_matches_an_independent_derivation():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(3, 40))
        truth = np.round(rng.uniform(-3.5, 3.5, n) * 2) / 2  # halves: zeros and .5 rounding ties occur
        pred = np.round(rng.normal(0, 2, n) * 2) / 2
        truth[0], truth[1], pred[2] = 0.0, 1.5, 0.0
        m = regression_metrics(pred, truth)
        ref = _reference(pred, truth)
        assert m.keys() == ref.keys()
        for k in ref:
            assert m[k] == pytest.approx(ref[k], abs=1e-12), (trial, k)


def test_classification_metrics_match_a_loop_derivation():
    rng = np.random.default_rng(1)
    for _ in range(50):
        truth = rng.integers(0, 7, 30)
        pred = np.where(rng.random(30) < 0.5, truth, rng.integers(0, 7, 30))
        m = classification_metrics(pred, truth)
        t, p = truth.tolist(), pred.tolist()
        f1 = sum(t.count(c) * 2 * sum(a == b == c for a, b in zip(t, p))
                 / (t.count(c) + p.count(c)) for c in set(t)) / len(t)
        assert m["acc"] == pytest.approx(sum(a == b for a, b in zip(t, p)) / 30)
        assert m["f1"] == pytest.approx(f1)


def test_pearson_of_a_constant_is_undefined_not_zero():
    truth = np.array([-2.0, -1.0, 1.0, 2.0])
    assert np.isnan(regression_metrics(np.full(4, 0.3), truth)["corr"])
    assert np.isnan(regression_metrics(truth, np.full(4, 1.0))["corr"])


def test_undefined_metrics_become_null_with_a_reason():
    import json

    from trml_edge.metrics import json_ready

    m = regression_metrics(np.full(3, 0.5), np.zeros(3))  # every label 0, and a constant prediction
    values, why = json_ready(m)
    assert set(why) == {"non0_acc2", "non0_f1", "corr"}
    assert "every label is 0" in why["non0_acc2"] and "constant" in why["corr"]
    assert values["non0_acc2"] is None and values["corr"] is None and values["has0_acc2"] == 1.0
    json.dumps(values, allow_nan=False)  # strict JSON


def test_written_json_is_strict(tmp_path, caplog):
    import json

    from trml_edge.config import write_json_atomic

    import logging

    class Keep(logging.Handler):  # on the logger itself: whatever levels or handlers other tests left behind
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    log, keep = logging.getLogger("trml_edge.config"), Keep()
    level, disabled = log.level, log.disabled
    log.addHandler(keep)
    log.setLevel(logging.WARNING)
    log.disabled = False
    try:
        write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2.0})
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
        log.disabled = disabled
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == \
        {"a": None, "b": [1.0, None], "c": 2.0}
    assert any("a, b[1] not finite" in line for line in keep.lines)


def test_model_selection_is_robust_to_a_nan_score():
    from trml_edge.train.loop import improves

    fresh = {"score": float("inf"), "state": None}
    assert improves(float("nan"), fresh)  # the first epoch is kept whatever its score
    nan_best = {"score": float("nan"), "state": {}}
    assert improves(0.9, nan_best)  # a number beats NaN
    best = {"score": 0.5, "state": {}}
    assert not improves(float("nan"), best) and not improves(0.6, best) and improves(0.4, best)
