"""Which modality goes missing: `--*-missing-modality visual` removes the visual side, `text` the text side,
in the training/evaluation masks and in the export gate's scenarios."""

import numpy as np
import pytest

from trml_edge.config import MissingConfig
from trml_edge.missing import sample_masks


@pytest.mark.parametrize("n", [1, 7, 20])
def test_visual_removes_the_visual_side_and_text_the_text_side(n):
    has_v, has_t = sample_masks(n, MissingConfig(rate=1.0, modality="visual"), 0)
    assert not has_v.any() and has_t.all()
    has_v, has_t = sample_masks(n, MissingConfig(rate=1.0, modality="text"), 0)
    assert has_v.all() and not has_t.any()


def test_rate_is_exact_and_either_drops_one_side_per_sample():
    for modality in ("visual", "text", "either"):
        has_v, has_t = sample_masks(40, MissingConfig(rate=0.3, modality=modality), [1, 2])
        assert int((~has_v | ~has_t).sum()) == 12  # round(0.3 * 40) samples lose a modality
        assert (has_v | has_t).all()  # never both
        if modality == "visual":
            assert has_t.all()
        if modality == "text":
            assert has_v.all()
    has_v, has_t = sample_masks(400, MissingConfig(rate=1.0, modality="either"), 0)
    assert (has_v ^ has_t).all() and 150 < int((~has_v).sum()) < 250  # both kinds occur


def test_export_gate_scenarios_remove_the_modality_they_name():
    from trml_edge.export.parity import scenario_masks

    has_v, has_t = scenario_masks(9, "visual_missing", 0)
    assert not has_v.any() and has_t.all()
    has_v, has_t = scenario_masks(9, "text_missing", 0)
    assert has_v.all() and not has_t.any()
    has_v, has_t = scenario_masks(9, "complete", 0)
    assert has_v.all() and has_t.all()


def test_evaluation_with_visual_missing_feeds_the_generated_visual_embedding():
    """evaluate_model under modality=visual predicts exactly what the model predicts from (t, gen(t))."""
    import torch

    from trml_edge.config import TRMLConfig
    from trml_edge.eval.evaluate import evaluate_model
    from trml_edge.metrics import regression_metrics
    from trml_edge.model.checkpoint import new_model
    from trml_edge.train.features import SplitTensors

    torch.manual_seed(0)
    m = new_model(TRMLConfig()).eval()
    with torch.no_grad():
        for p in list(m.gen_text_to_visual.parameters()) + list(m.gen_visual_to_text.parameters()):
            p.add_(torch.randn_like(p) * 0.3)  # generated != real, so a swap changes the predictions
    n, d = 12, m.dim
    g = torch.Generator().manual_seed(1)
    frames = torch.nn.functional.normalize(torch.randn(n, 3, d, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    labels = torch.linspace(-2.5, 2.5, n)
    mask = torch.ones(n, 3, dtype=torch.bool)
    data = SplitTensors(labels, mask, torch.zeros(n, 4, dtype=torch.long), None, frames, text)
    with torch.no_grad():
        v = m.temporal(frames, mask)
        want_visual_missing = m.head(text, m.gen_text_to_visual(text)).numpy()
        want_text_missing = m.head(m.gen_visual_to_text(v), v).numpy()
    got = evaluate_model(m, data, MissingConfig(rate=1.0, modality="visual"), "generator")
    assert got == pytest.approx(regression_metrics(want_visual_missing, labels.numpy()), nan_ok=True)
    got = evaluate_model(m, data, MissingConfig(rate=1.0, modality="text"), "generator")
    assert got == pytest.approx(regression_metrics(want_text_missing, labels.numpy()), nan_ok=True)
    assert not np.allclose(want_visual_missing, want_text_missing, atol=1e-4)
