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
    truth = np.array([1.0, -1.0])
    pred = np.array([0.0, 0.0])
    m = regression_metrics(pred, truth)
    assert m["non0_acc2"] == pytest.approx(0.5)  # 0 > 0 is False: counted as negative
    assert m["has0_acc2"] == pytest.approx(0.5)  # 0 >= 0 is True: counted as non-negative


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
