"""The baseline comparison (eval.compare): each method's fill, the upper bound's complete input, the dropout
model, and the same test masks for every method, against predictions worked out from the model's parts."""

import numpy as np
import pytest
import torch

from trml_edge.config import MissingConfig, TRMLConfig
from trml_edge.data.records import ClipArrays
from trml_edge.eval.evaluate import TEST_SEED, compare, methods
from trml_edge.metrics import regression_metrics
from trml_edge.missing import sample_masks
from trml_edge.model.checkpoint import new_model
from trml_edge.train.features import SplitTensors

N, T = 16, 3


def _model(seed, fill):
    torch.manual_seed(seed)
    cfg = TRMLConfig()
    cfg.fill = fill
    m = new_model(cfg).eval()
    with torch.no_grad():
        for p in list(m.gen_text_to_visual.parameters()) + list(m.gen_visual_to_text.parameters()):
            p.add_(torch.randn_like(p) * 0.3)  # generated != real
        m.mean_v.copy_(torch.nn.functional.normalize(torch.randn(m.dim), dim=0))
        m.mean_t.copy_(torch.nn.functional.normalize(torch.randn(m.dim), dim=0))
    return m


@pytest.fixture(scope="module")
def setup():
    trml, complete, dropout = _model(0, "generator"), _model(1, "zero"), _model(2, "zero")
    g = torch.Generator().manual_seed(3)
    d = trml.dim
    frames = torch.nn.functional.normalize(torch.randn(N, T, d, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=-1)
    labels = torch.linspace(-2.8, 2.8, N)
    mask = torch.ones(N, T, dtype=torch.bool)
    data = SplitTensors(labels, mask, torch.zeros(N, 4, dtype=torch.long), None, frames, text)
    arrays = ClipArrays([str(i) for i in range(N)], ["x"] * N, labels.numpy(), None, mask.numpy())
    return trml, complete, dropout, data, arrays


def _by_hand(model, data, has_v, has_t, fill):
    """head(t', v') with v', t' chosen per sample: real, generated, zero or the stored mean."""
    with torch.no_grad():
        v, t = model.temporal(data.frame_emb, data.frame_mask), data.text_emb
        v_fill = {"generator": model.gen_text_to_visual(t), "zero": torch.zeros_like(v),
                  "mean": model.mean_v.expand_as(v)}[fill]
        t_fill = {"generator": model.gen_visual_to_text(v), "zero": torch.zeros_like(t),
                  "mean": model.mean_t.expand_as(t)}[fill]
        hv, ht = torch.from_numpy(has_v)[:, None], torch.from_numpy(has_t)[:, None]
        return model.head(torch.where(ht, t, t_fill), torch.where(hv, v, v_fill)).numpy()


def test_each_method_fills_as_documented_on_the_same_masks(setup):
    trml, complete, dropout, data, arrays = setup
    ms = methods(trml, complete, dropout)
    assert [m.name for m in ms] == ["TRML", "zero-fill", "mean-fill", "modality dropout", "upper bound"]
    inputs = {id(m): data for m in (trml, complete, dropout)}
    rates = [0.0, 0.5, 1.0]
    rows = {(r["test_missing_rate"], r["method"]): r for r in compare(ms, arrays, rates, "either", 5, inputs)}
    everything = np.ones(N, bool)
    for rate in rates:
        has_v, has_t = sample_masks(N, MissingConfig(rate=rate, modality="either"), [5, TEST_SEED, round(rate * 1000)])
        want = {"TRML": _by_hand(trml, data, has_v, has_t, "generator"),
                "zero-fill": _by_hand(complete, data, has_v, has_t, "zero"),
                "mean-fill": _by_hand(complete, data, has_v, has_t, "mean"),
                "modality dropout": _by_hand(dropout, data, has_v, has_t, "zero"),
                "upper bound": _by_hand(complete, data, everything, everything, "zero")}
        for name, pred in want.items():
            got = {k: v for k, v in rows[rate, name].items() if k not in ("method", "test_missing_rate")}
            assert got == pytest.approx(regression_metrics(pred, arrays.labels), abs=1e-6, nan_ok=True), (rate, name)
    # the fills differ when something is missing, so the checks above tell them apart
    assert rows[1.0, "zero-fill"]["mae"] != rows[1.0, "mean-fill"]["mae"]
    assert rows[1.0, "upper bound"] == {**rows[0.0, "upper bound"], "test_missing_rate": 1.0}
    assert rows[0.0, "zero-fill"]["mae"] == rows[0.0, "mean-fill"]["mae"] == rows[0.0, "upper bound"]["mae"]
