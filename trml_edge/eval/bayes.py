"""Bayes limits of the synthetic benchmark: the lowest test MAE any predictor can reach. numpy only.

The generative process is ``trml_edge.data.synth``'s (read, never changed here):

* ``(z_v, z_t) ~ N(0, [[1, RHO], [RHO, 1]])``;
* ``y = round3(clip(LABEL_WEIGHT * (z_v + z_t) + eps, -3, 3))``, ``eps ~ N(0, LABEL_NOISE^2)``, rounded to
  a multiple of 1/3;
* video: 3-6 frames (uniform), each showing the expression ``z_v + N(0, EXPRESSION_JITTER^2)``;
* text: one phrase drawn with ``P(i | z_t) ∝ exp(-(s_i - TEXT_SCALE * z_t)^2 / (2 TEXT_NOISE^2))`` over the
  lexicon scores ``s_i``; the phrase is the only part of the sentence that depends on ``z_t``.

Two observation levels:

* ``latent``: the predictor sees ``z_v`` and/or ``z_t`` themselves (only the label noise and rounding remain);
* ``observed``: it sees what the generator renders: the mean of the per-frame expressions (a sufficient
  statistic for ``z_v`` given the frame count) and the phrase. This assumes the face's expression can be
  read exactly off every frame; rendering (pixel quantization of the mouth, ``tanh`` saturation, occluders,
  sensor noise, video compression) only loses more, so the observed limit is still a lower bound.

For each sampled observation the exact posterior of the label is computed (a 1-D grid over ``z_t``; ``z_v``
given ``z_t`` is Gaussian), its median is the Bayes prediction under absolute error, and the conditional
expected absolute error is averaged over observations (Monte Carlo over observations only, so the estimate
has low variance). Under a missing-modality protocol the limit is the mixture of the per-scenario limits,
because which modality is missing is known to the predictor and independent of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trml_edge.data import synth

SCENARIOS = ("complete", "visual_missing", "text_missing")


@dataclass(frozen=True)
class Process:
    """The parameters of the generative process (defaults: ``trml_edge.data.synth``'s constants)."""

    rho: float = synth.RHO
    label_weight: float = synth.LABEL_WEIGHT
    label_noise: float = synth.LABEL_NOISE
    jitter: float = synth.EXPRESSION_JITTER
    frames: tuple[int, ...] = (3, 4, 5, 6)  # synth draws integers(3, 7)
    text_scale: float = synth.TEXT_SCALE
    text_noise: float = synth.TEXT_NOISE
    clip: float | None = 3.0  # label clipping; None: no clipping
    quantum: float = 1.0 / 3.0  # label rounding step (the tests use a fine step to mimic "no rounding")
    text: str = "phrase"  # "phrase": synth's lexicon; "gaussian": s = text_scale * z_t + N(0, text_noise^2)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-7 (Abramowitz & Stegun 7.1.26), vectorized; numpy has none and scipy is optional."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def label_grid(p: Process) -> tuple[np.ndarray, np.ndarray]:
    """Label values (K,) and the K-1 inner bin edges of ``y_cont`` that round to them."""
    span = p.clip if p.clip is not None else 12.0  # unclipped: wide enough that the tails carry ~no mass
    k = int(round(span / p.quantum))
    values = np.arange(-k, k + 1) * p.quantum
    return values, values[:-1] + p.quantum / 2


def _sample(p: Process, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cov = np.array([[1.0, p.rho], [p.rho, 1.0]])
    z = rng.multivariate_normal([0.0, 0.0], cov, size=n)
    frames = rng.choice(np.array(p.frames), size=n)
    var_v = p.jitter**2 / frames  # variance of the mean per-frame expression around z_v
    m_v = z[:, 0] + rng.normal(size=n) * np.sqrt(var_v)
    if p.text == "phrase":
        logits = -((synth.PHRASE_SCORES[None, :] - p.text_scale * z[:, 1:2]) ** 2) / (2 * p.text_noise**2)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        u = rng.random((n, 1))
        phrase = np.minimum((prob.cumsum(1) < u).sum(1), len(synth.PHRASE_SCORES) - 1)
        s = synth.PHRASE_SCORES[phrase]
    else:
        s = p.text_scale * z[:, 1] + rng.normal(size=n) * p.text_noise
    return {"z_v": z[:, 0], "z_t": z[:, 1], "m_v": m_v, "var_v": var_v, "s": s}


def _text_loglik(p: Process, s: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """log P(observed text | z_t) for each sample (B,) and grid point (G,) -> (B, G)."""
    if p.text == "gaussian":
        return -((s[:, None] - p.text_scale * grid[None, :]) ** 2) / (2 * p.text_noise**2)
    own = -((s[:, None] - p.text_scale * grid[None, :]) ** 2) / (2 * p.text_noise**2)  # (B, G)
    all_ = -((synth.PHRASE_SCORES[:, None] - p.text_scale * grid[None, :]) ** 2) / (2 * p.text_noise**2)  # (P, G)
    mx = all_.max(0)
    log_norm = mx + np.log(np.exp(all_ - mx).sum(0))  # (G,)
    return own - log_norm[None, :]


def _components(p: Process, obs: dict[str, np.ndarray], see_v: str | None, see_t: str | None, grid: np.ndarray):
    """The label's pre-rounding posterior as a Gaussian mixture: weights (B,G), means (B,G), stds (B,G).

    ``see_v`` / ``see_t``: None (absent), "latent" (the latent itself) or "observed" (what the generator renders).
    """
    b = len(obs["z_t"])
    if see_t == "latent":
        zt = obs["z_t"][:, None]  # one component at the true z_t
        logw = np.zeros((b, 1))
    else:
        zt = np.broadcast_to(grid[None, :], (b, len(grid)))
        logw = np.broadcast_to(-0.5 * grid[None, :] ** 2, (b, len(grid))).copy()  # N(0,1) prior of z_t
        if see_t == "observed":
            logw += _text_loglik(p, obs["s"], grid)
    prior_var = 1.0 - p.rho**2  # z_v | z_t ~ N(rho z_t, 1 - rho^2)
    prior_mean = p.rho * zt
    if see_v is None:
        mu_v, var_v = prior_mean, np.full_like(zt, prior_var)
    else:
        nv = np.zeros(b) if see_v == "latent" else obs["var_v"]
        m, nv = obs["m_v"][:, None] if see_v == "observed" else obs["z_v"][:, None], nv[:, None]
        tot = prior_var + nv
        logw = logw - (m - prior_mean) ** 2 / (2 * tot)  # p(m_v | z_t); the normalizer is constant per sample
        mu_v = (prior_mean * nv + m * prior_var) / tot
        var_v = np.broadcast_to(prior_var * nv / tot, zt.shape)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    mean = p.label_weight * (zt + mu_v)
    std = np.sqrt(p.label_weight**2 * var_v + p.label_noise**2)
    return w, mean, np.broadcast_to(std, mean.shape)


def conditional_losses(p: Process, see_v: str | None, see_t: str | None, n: int = 20000, seed: int = 0,
                       grid_points: int = 481, chunk: int = 400) -> np.ndarray:
    """E[|y - median(y | obs)| | obs] for ``n`` sampled observations: the Bayes predictor's per-sample loss."""
    rng = np.random.default_rng(seed)
    obs = _sample(p, n, rng)
    grid = np.linspace(-6.0, 6.0, grid_points)
    values, edges = label_grid(p)
    out = np.empty(n)
    for a in range(0, n, chunk):
        sl = {k: v[a : a + chunk] for k, v in obs.items()}
        w, mean, std = _components(p, sl, see_v, see_t, grid)  # (B, G)
        cdf = (w[:, :, None] * normal_cdf((edges[None, None, :] - mean[:, :, None]) / std[:, :, None])).sum(1)
        pmf = np.diff(np.concatenate([np.zeros((len(cdf), 1)), cdf, np.ones((len(cdf), 1))], axis=1), axis=1)
        pmf = np.clip(pmf, 0.0, None)  # (B, K)
        med = values[np.argmax(pmf.cumsum(1) >= 0.5 * pmf.sum(1, keepdims=True), axis=1)]  # (B,)
        out[a : a + chunk] = (pmf * np.abs(values[None, :] - med[:, None])).sum(1) / pmf.sum(1)
    return out


def bayes_limits(p: Process | None = None, n: int = 20000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{level: {scenario: {"mae", "se", "sd"}}} for levels "latent" and "observed".

    ``se`` is the Monte Carlo standard error; ``sd`` the spread of the per-observation expected loss (the
    MAE realized on a finite test split varies more than ``sd / sqrt(m)``: it also draws the labels).
    """
    p = p or Process()
    res: dict[str, dict[str, dict[str, float]]] = {}
    for level in ("latent", "observed"):
        res[level] = {}
        for scen, (sv, st) in {"complete": (level, level), "visual_missing": (None, level),
                               "text_missing": (level, None)}.items():
            loss = conditional_losses(p, sv, st, n=n, seed=seed)
            res[level][scen] = {"mae": float(loss.mean()), "se": float(loss.std() / math.sqrt(n)),
                                "sd": float(loss.std())}
    return res


def mixture_limit(limits: dict[str, dict[str, float]], rate: float, modality: str = "either") -> float:
    """The limit under a test protocol: ``rate`` of the samples lose one modality (``trml_edge.missing``).

    ``modality``: "either" (half lose the visual, half the text), "visual" or "text". ``limits`` is one
    level of ``bayes_limits``'s result.
    """
    c, vm, tm = (limits[s]["mae"] for s in SCENARIOS)
    missing = {"either": 0.5 * (vm + tm), "visual": vm, "text": tm}[modality]
    return (1.0 - rate) * c + rate * missing


def latent_r2(p: Process | None = None, n: int = 20000, seed: int = 0) -> dict[str, float]:
    """The best R^2 any probe can reach for ``z_v`` from the video and ``z_t`` from the text (and each
    from the other modality): 1 - E[Var(z | obs)] / Var(z), by the exact posterior mean."""
    p = p or Process()
    obs = _sample(p, n, np.random.default_rng(seed))
    grid = np.linspace(-6.0, 6.0, 481)
    logw = -0.5 * grid[None, :] ** 2 + _text_loglik(p, obs["s"], grid)  # (n, G): z_t | phrase
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    zt_hat = (w * grid[None, :]).sum(1)
    shrink = 1.0 / (1.0 + obs["var_v"])  # z_v | mean expression: Gaussian, prior N(0, 1)
    zv_hat = shrink * obs["m_v"]

    def r2(pred, z):
        return float(1.0 - ((pred - z) ** 2).mean() / z.var())

    return {"z_v|visual": r2(zv_hat, obs["z_v"]), "z_t|text": r2(zt_hat, obs["z_t"]),
            "z_v|text": r2(p.rho * zt_hat, obs["z_v"]), "z_t|visual": r2(p.rho * zv_hat, obs["z_t"])}


def _log_normal(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * math.pi * var)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def retrieval_limit(p: Process | None = None, n: int = 384, draws: int = 40, seed: int = 0,
                    grid_points: int = 161) -> dict[str, dict[str, float]]:
    """The best retrieval any embedding can reach on this process (observed level): among ``n`` clips, the
    real partner's rank when every candidate is scored by the exact likelihood ratio
    ``p(candidate | query) / p(candidate)`` (the ranking that maximizes the chance of each candidate being
    the partner). Text -> visual: the query is the phrase, a candidate is a clip's mean expression (its
    frame count known); visual -> text: the reverse. Ties (texts with the same phrase) are broken at random,
    as the sentences' other words would. Returns the median rank and R@1 per direction, averaged over
    ``draws`` sets of ``n`` clips."""
    p = p or Process()
    rng = np.random.default_rng(seed)
    grid = np.linspace(-6.0, 6.0, grid_points)
    log_prior = -0.5 * grid**2 - 0.5 * math.log(2 * math.pi)  # N(0, 1) of z_t
    res: dict[str, list[tuple[float, float]]] = {"text→visual": [], "visual→text": []}
    for _ in range(draws):
        o = _sample(p, n, rng)
        text_ll = _text_loglik(p, o["s"], grid)  # (n, G): log P(phrase | z_t)
        # log p(m_v | z_t): z_v | z_t ~ N(rho z_t, 1 - rho^2), m_v | z_v ~ N(z_v, var_v)
        var = (1.0 - p.rho**2) + o["var_v"][:, None]  # (n, 1)
        video_ll = _log_normal(o["m_v"][:, None], p.rho * grid[None, :], var)  # (n, G)
        log_post_text = text_ll + log_prior  # unnormalized log p(z_t | phrase)
        log_post_text -= _logsumexp(log_post_text, 1)[:, None]
        log_post_video = video_ll + log_prior
        log_post_video -= _logsumexp(log_post_video, 1)[:, None]
        # score[i, j] = log sum_g p(g | query i) p(candidate j | g) - log p(candidate j)
        t2v = _logsumexp(log_post_text[:, None, :] + video_ll[None, :, :], 2) - \
            _log_normal(o["m_v"], 0.0, 1.0 + o["var_v"])[None, :]
        v2t = _logsumexp(log_post_video[:, None, :] + text_ll[None, :, :], 2) - \
            _logsumexp(text_ll + log_prior[None, :], 1)[None, :]
        for name, score in (("text→visual", t2v), ("visual→text", v2t)):
            true = np.diag(score)[:, None]
            tol = 1e-9 * (1.0 + np.abs(true))
            ties = (np.abs(score - true) <= tol).sum(1) - 1  # equal scores (texts with the same phrase)
            rank = (score > true + tol).sum(1) + 1 + rng.integers(0, ties + 1)  # ties in random order
            res[name].append((float(np.median(rank)), float((rank == 1).mean())))
    return {name: {"median_rank": float(np.mean([r[0] for r in v])), "r_at_1": float(np.mean([r[1] for r in v])),
                   "n": n} for name, v in res.items()}
