"""The Bayes limit of retrieval (``trml_edge.eval.bayes.retrieval_limit``) against closed forms."""

import numpy as np
import pytest

from trml_edge.eval.bayes import Process, retrieval_limit


def _gaussian_median_rank(rho: float, n: int, draws: int, seed: int) -> float:
    """Latent level, computed here from the bivariate normal alone: rank candidates z_v by the log likelihood
    ratio log N(z_v; rho z_t, 1 - rho^2) - log N(z_v; 0, 1) of the query z_t."""
    rng = np.random.default_rng(seed)
    medians = []
    for _ in range(draws):
        zt = rng.normal(size=n)
        zv = rho * zt + np.sqrt(1 - rho**2) * rng.normal(size=n)
        score = -(zv[None, :] - rho * zt[:, None]) ** 2 / (2 * (1 - rho**2)) + zv[None, :] ** 2 / 2
        medians.append(np.median((score > np.diag(score)[:, None]).sum(1) + 1))
    return float(np.mean(medians))


def test_nearly_exact_observations_reach_the_latent_ranking():
    sharp = Process(jitter=0.05, text="gaussian", text_noise=0.05, text_scale=1.0)
    got = retrieval_limit(sharp, n=200, draws=12, seed=1, grid_points=601)
    expected = _gaussian_median_rank(0.6, 200, 200, seed=2)
    assert got["text→visual"]["median_rank"] == pytest.approx(expected, abs=6)
    assert got["visual→text"]["median_rank"] == pytest.approx(expected, abs=6)  # symmetric at the latent level
    assert expected < 0.35 * 200  # and far from chance


def test_independent_modalities_retrieve_at_chance():
    got = retrieval_limit(Process(rho=0.0), n=200, draws=20, seed=3)
    for v in got.values():
        assert v["median_rank"] == pytest.approx(100.5, abs=8)  # the middle of 200
        assert v["r_at_1"] < 0.02


def test_the_benchmarks_own_process_is_near_a_third_of_the_candidates():
    got = retrieval_limit(n=384, draws=8, seed=0)
    latent = _gaussian_median_rank(0.6, 384, 50, seed=4)
    for v in got.values():  # what is observed carries less than the latents, so it ranks no better
        assert latent - 6 <= v["median_rank"] < 0.4 * 384
