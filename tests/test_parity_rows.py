"""The export gate's comparison row (export.parity.compare_predictions), on hand-worked predictions."""

import numpy as np
import pytest

from trml_edge.export.parity import Budget, compare_predictions


def _budget(acc_drop, mae_rise):
    return Budget(max_abs=1.0, min_cos=0.0, acc_drop=acc_drop, mae_rise=mae_rise)


def test_regression_row_by_hand():
    labels = np.array([1.0, -1.0, 2.0, -2.0])
    ref = np.array([0.5, -0.2, 0.0, -1.0])  # decisions (>= 0): T F T F -> all four right: Acc-2 1.0
    got = np.array([0.4, 0.1, -0.1, -1.0])  # decisions: T T F F -> samples 1 and 2 changed: Acc-2 0.5
    row = compare_predictions("regression", ref, got, labels, _budget(0.4, 1.0))
    assert row["decision_agreement"] == 0.5
    assert row["pred_max_abs"] == pytest.approx(0.3)
    assert row["acc_drop"] == pytest.approx(0.5) and row["samples"] == 4
    # MAE: ref (0.5 + 0.8 + 2 + 1) / 4 = 1.075; got (0.6 + 1.1 + 2.1 + 1) / 4 = 1.2
    assert row["mae_rise"] == pytest.approx(1.2 - 1.075)
    assert row["ok"] is False  # a drop of 0.5 is over a budget of 0.4
    assert compare_predictions("regression", ref, got, labels, _budget(0.5, 0.125))["ok"] is True
    assert compare_predictions("regression", ref, got, labels, _budget(0.5, 0.12))["ok"] is False  # MAE rise


def test_classification_row_by_hand():
    labels = np.array([0, 1, 2])
    ref = np.array([[2.0, 0, 0], [0, 2, 0], [0, 0, 2]])  # argmax 0 1 2: all right
    got = np.array([[2.0, 0, 0], [0, 2, 3], [0, 0, 2]])  # argmax 0 2 2: one changed
    row = compare_predictions("classification", ref, got, labels, _budget(0.5, 0.0))
    assert row["decision_agreement"] == pytest.approx(2 / 3)
    assert row["acc_drop"] == pytest.approx(1 / 3) and row["ok"] is True and "mae_rise" not in row
