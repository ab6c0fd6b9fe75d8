"""The benchmark's Bayes limits: checked against closed forms and brute force where those exist."""

import math

import numpy as np
import pytest

from trml_edge.eval.bayes import Process, bayes_limits, conditional_losses, mixture_limit, normal_cdf

# no clipping, a fine rounding step, Gaussian text noise and a fixed frame count: everything is jointly
# Gaussian, so the conditional median is linear and the Bayes MAE is sigma_residual * sqrt(2 / pi)
GAUSS = Process(clip=None, quantum=0.02, text="gaussian", frames=(4,))


def _closed_form(p: Process, see_v: str | None, see_t: str | None) -> float:
    """sqrt(2/pi) * the residual std of y given the observations, by Gaussian conditioning."""
    # latent vector x = (z_v, z_t, e_v, e_t, eps), independent except z_v, z_t
    cov = np.eye(5)
    cov[0, 1] = cov[1, 0] = p.rho
    noise_v = p.jitter**2 / p.frames[0]
    y = np.array([p.label_weight, p.label_weight, 0, 0, p.label_noise])
    cov[4, 4] = 1.0  # eps enters y scaled by label_noise above
    rows = []
    if see_v == "latent":
        rows.append([1, 0, 0, 0, 0])
    elif see_v == "observed":
        rows.append([1, 0, math.sqrt(noise_v), 0, 0])
    if see_t == "latent":
        rows.append([0, 1, 0, 0, 0])
    elif see_t == "observed":
        rows.append([0, p.text_scale, 0, p.text_noise, 0])
    a = np.array(rows, dtype=float)
    var_y = y @ cov @ y
    c = a @ cov @ y
    s = a @ cov @ a.T
    res = var_y - c @ np.linalg.solve(s, c)
    return math.sqrt(res) * math.sqrt(2 / math.pi)


@pytest.mark.parametrize("see_v,see_t", [("latent", "latent"), ("observed", "observed"), (None, "observed"),
                                         ("observed", None), (None, "latent"), ("latent", None)])
def test_gaussian_case_matches_the_closed_form(see_v, see_t):
    got = conditional_losses(GAUSS, see_v, see_t, n=60, seed=1, chunk=20).mean()
    assert got == pytest.approx(_closed_form(GAUSS, see_v, see_t), rel=0.01)


def test_latent_complete_with_rounding_and_clipping_matches_brute_force():
    p = Process()
    rng = np.random.default_rng(0)
    u = rng.normal(0, math.sqrt(2 + 2 * p.rho), 500)  # z_v + z_t
    y = np.round(np.clip(p.label_weight * u[:, None] + rng.normal(0, p.label_noise, (500, 2000)), -3, 3) * 3) / 3
    brute = np.abs(y - np.median(y, axis=1, keepdims=True)).mean()
    got = conditional_losses(p, "latent", "latent", n=1500, seed=2).mean()
    assert got == pytest.approx(brute, abs=0.01)


def test_limits_are_ordered_and_mixtures_interpolate():
    lim = bayes_limits(n=600)
    for level in ("latent", "observed"):
        c, vm, tm = (lim[level][s]["mae"] for s in ("complete", "visual_missing", "text_missing"))
        assert c < min(vm, tm)
        assert mixture_limit(lim[level], 0.0) == pytest.approx(c)
        assert mixture_limit(lim[level], 1.0, "visual") == pytest.approx(vm)
        assert mixture_limit(lim[level], 0.5) == pytest.approx(0.5 * c + 0.25 * (vm + tm))
    # observation noise only adds error
    for s in ("complete", "visual_missing", "text_missing"):
        assert lim["observed"][s]["mae"] > lim["latent"][s]["mae"] - 3 * lim["latent"][s]["se"]


def test_normal_cdf_is_accurate():
    x = np.linspace(-6, 6, 101)
    ref = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(normal_cdf(x) - ref).max() < 1e-6


def test_latent_r2_matches_gaussian_conditioning():
    from trml_edge.eval.bayes import latent_r2

    r = latent_r2(GAUSS, n=4000)
    noise_v = GAUSS.jitter**2 / GAUSS.frames[0]
    assert r["z_v|visual"] == pytest.approx(1 / (1 + noise_v), abs=0.01)
    snr = GAUSS.text_scale**2 / (GAUSS.text_scale**2 + GAUSS.text_noise**2)
    assert r["z_t|text"] == pytest.approx(snr, abs=0.01)
    assert r["z_v|text"] == pytest.approx(GAUSS.rho**2 * snr, abs=0.02)


def test_results_table_carries_the_bayes_limit_row_per_rate():
    from rich.console import Console

    from trml_edge.eval.experiment import table

    rows = [{"method": m, "test_missing_rate": r, "mae": 1.0 + r, "corr": 0.5, "has0_acc2": 0.7, "has0_f1": 0.7,
             "non0_acc2": 0.7, "acc7": 0.3} for r in (0.0, 0.5) for m in ("TRML", "zero-fill")]
    console = Console(width=120, record=True)
    console.print(table(rows, limits={0.0: 0.4291, 0.5: 0.5655}))
    lines = [ln for ln in console.export_text().splitlines() if "Bayes limit" in ln]
    assert len(lines) == 2 and "0.429" in lines[0] and "0.566" in lines[1]
    assert "0.700" not in lines[0]  # the limit is an MAE: the other columns stay empty
