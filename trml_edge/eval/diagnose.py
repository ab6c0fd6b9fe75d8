"""Where the accuracy goes: linear probes of the frozen embeddings, and the generators' quality.

Stages, each measured on the test split:

1. the foundation model: how much of ``z_v`` / ``z_t`` (``label_V`` / ``label_T`` in ``label.csv``, divided by
   1.5) a ridge probe reads off the frozen visual (masked mean of the frame embeddings) / text embedding;
2. the head: its MAE against a ridge probe of the label from the same embeddings and the same labelled clips;
3. the generators: cosine of the generated embedding to the real one, the real one's retrieval rank among
   the test split, and how much of the missing latent a probe reads off the generated embedding.

Ridge penalties are chosen on the valid split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trml_edge.data.corpus import ClipArrays
from trml_edge.model.trml import TRML
from trml_edge.train.features import SplitTensors
from trml_edge.train.pairs import match_stats, mean_frame_embedding

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def latents(data: str | Path, ids: list[str]) -> np.ndarray:
    """(N, 2) array of (z_v, z_t) for clip ids, from ``label.csv``'s label_V / label_T (= clip(1.5 z, -3, 3))."""
    table = {}
    with open(Path(data) / "label.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table[f"{row['video_id']}$_${row['clip_id']}"] = (float(row["label_V"]) / 1.5, float(row["label_T"]) / 1.5)
    return np.array([table[i] for i in ids])


def mean_visual(d: SplitTensors) -> np.ndarray:
    """The masked mean of the frame embeddings, normalized (what the temporal encoder starts from)."""
    return mean_frame_embedding(d.frame_emb, d.frame_mask).numpy()


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    mu, ym = x.mean(0), y.mean()
    xc = x - mu
    w = np.linalg.solve(xc.T @ xc + lam * len(x) * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - mu @ w)


def probe(xtr, ytr, xva, yva, xte, yte) -> dict[str, float]:
    """Ridge probe: penalty chosen by valid MSE; test R^2, MAE and Pearson r."""
    best = None
    for lam in LAMBDAS:
        w, b = _ridge(xtr, ytr, lam)
        mse = float(((xva @ w + b - yva) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, lam, w, b)
    _, lam, w, b = best
    pred = xte @ w + b
    r2 = 1.0 - float(((pred - yte) ** 2).mean() / yte.var())
    return {"r2": r2, "mae": float(np.abs(np.clip(pred, -3, 3) - yte).mean()),
            "corr": float(np.corrcoef(pred, yte)[0, 1]), "lambda": lam, "w": w, "b": b}


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("w", "b")}


def embedding_probes(data: str | Path, arrays: dict[str, ClipArrays], inputs: dict[str, SplitTensors],
                     train_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Probes of z_v, z_t and y from the frozen embeddings, fitted on ``train_idx`` of the train split."""
    feats, lat, y = {}, {}, {}
    for s in ("train", "valid", "test"):
        feats[s] = {"v": mean_visual(inputs[s]), "t": inputs[s].text_emb.numpy()}
        feats[s]["tv"] = np.concatenate([feats[s]["t"], feats[s]["v"]], 1)
        lat[s] = latents(data, arrays[s].ids)
        y[s] = arrays[s].labels.astype(np.float64)
    idx = np.arange(len(y["train"])) if train_idx is None else train_idx
    out = {}
    for name, feat, target in (("z_v|visual", "v", 0), ("z_t|text", "t", 1), ("z_v|text", "t", 0),
                               ("z_t|visual", "v", 1)):
        out[name] = _strip(probe(feats["train"][feat][idx], lat["train"][idx, target], feats["valid"][feat],
                                 lat["valid"][:, target], feats["test"][feat], lat["test"][:, target]))
    for name, feat in (("y|both", "tv"), ("y|text", "t"), ("y|visual", "v")):
        out[name] = _strip(probe(feats["train"][feat][idx], y["train"][idx], feats["valid"][feat], y["valid"],
                                 feats["test"][feat], y["test"]))
    # the latents themselves, for reference: how well a linear read of z predicts y on this test split
    out["y|latents"] = _strip(probe(lat["train"][idx], y["train"][idx], lat["valid"], y["valid"], lat["test"],
                                    y["test"]))
    return out


@torch.no_grad()
def generator_quality(model: TRML, data: str | Path, arrays: dict[str, ClipArrays], inputs: dict[str, SplitTensors],
                      split: str = "test") -> dict[str, Any]:
    """Generated against real embeddings on ``split`` (and the probes that read z off them: fitted on the
    train split, penalty chosen on valid)."""
    model.eval()
    emb = {}
    for s in dict.fromkeys(("train", "valid", split)):
        d = inputs[s]
        v = model.temporal(d.frame_emb, d.frame_mask)
        t = d.text_emb
        emb[s] = {"v": v, "t": t, "v_hat": model.gen_text_to_visual(t), "t_hat": model.gen_visual_to_text(v)}
    lat = {s: latents(data, arrays[s].ids) for s in emb}
    out: dict[str, Any] = {}
    te = emb[split]
    for gen, real, src, target in (("v_hat", "v", "t", 0), ("t_hat", "t", "v", 1)):
        g, r = te[gen], te[real]
        p = probe(emb["train"][real].numpy(), lat["train"][:, target], emb["valid"][real].numpy(),
                  lat["valid"][:, target], r.numpy(), lat[split][:, target])
        z = lat[split][:, target]
        read = g.numpy() @ p["w"] + p["b"]  # the real-embedding probe applied to the generated embedding
        out[gen] = {
            **match_stats(g, r, emb["train"][real].mean(0)),
            "cos_identity": float((te[src] * r).sum(1).mean()),  # the identity generator's output
            "probe_r2_real": p["r2"],
            "probe_corr_generated": float(np.corrcoef(read, z)[0, 1]),
        }
    return out


# --- the foundation model alone, on the valid split (how pretraining recipes are compared) ---

def cv_probe(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, folds: int = 5) -> dict[str, float]:
    """Ridge probe whose penalty is chosen by k-fold CV on the training rows alone; R^2 and MAE on ``xva``.

    The valid split only scores, so it can compare pretraining recipes without choosing the probe too.
    """
    fold = np.arange(len(xtr)) % folds
    best = None
    for lam in LAMBDAS:
        mse = 0.0
        for k in range(folds):
            w, b = _ridge(xtr[fold != k], ytr[fold != k], lam)
            mse += float(((xtr[fold == k] @ w + b - ytr[fold == k]) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, lam)
    w, b = _ridge(xtr, ytr, best[1])
    pred = xva @ w + b
    return {"r2": 1.0 - float(((pred - yva) ** 2).mean() / yva.var()),
            "mae": float(np.abs(np.clip(pred, -3, 3) - yva).mean()), "lambda": best[1]}


class FoundationProbe:
    """Valid-split probes of a frozen CLIP: ``z_v`` from the mean frame embedding, ``z_t`` from the sentence
    embedding, and the label from both (fitted on the whole train split). The clips are decoded once, at
    the image tower's size; call it with a CLIP (e.g. after each pretraining epoch) to score it."""

    def __init__(self, data: str | Path, image_size: int, max_frames: int = 8):
        from trml_edge.data.corpus import load_split, read_corpus

        self.data = Path(data)
        records = read_corpus(self.data)
        self.arrays = {s: load_split(records, s, max_frames, image_size) for s in ("train", "valid")}
        self.lat = {s: latents(self.data, a.ids) for s, a in self.arrays.items()}

    @torch.no_grad()
    def embed(self, clip, split: str, context_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
        from trml_edge.config import PreprocessConfig
        from trml_edge.model.backbone import tokenize
        from trml_edge.model.trml import text_features, trim_tokens
        from trml_edge.preprocess import normalize

        a, pp = self.arrays[split], PreprocessConfig()
        mask = torch.from_numpy(a.frame_mask)
        px = torch.from_numpy(normalize(a.frames[a.frame_mask], pp.mean, pp.std))  # the real frames only
        frames = torch.cat([F.normalize(clip.encode_image(px[i : i + 256]), dim=-1) for i in range(0, len(px), 256)])
        full = torch.zeros(*mask.shape, frames.shape[1])
        full[mask] = frames
        m = mask.float().unsqueeze(-1)
        v = F.normalize((full * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1).numpy()
        tok = tokenize(a.texts, context_length)
        t = torch.cat([F.normalize(text_features(clip, trim_tokens(clip, tok[i : i + 256])), dim=-1)
                       for i in range(0, len(tok), 256)]).numpy()
        return v, t

    def __call__(self, clip) -> dict[str, float]:
        was_training = clip.training
        clip.eval()
        (vtr, ttr), (vva, tva) = self.embed(clip, "train"), self.embed(clip, "valid")
        clip.train(was_training)
        ytr, yva = (self.arrays[s].labels.astype(np.float64) for s in ("train", "valid"))
        return {"z_v|visual r2": cv_probe(vtr, self.lat["train"][:, 0], vva, self.lat["valid"][:, 0])["r2"],
                "z_t|text r2": cv_probe(ttr, self.lat["train"][:, 1], tva, self.lat["valid"][:, 1])["r2"],
                "y|both mae": cv_probe(np.concatenate([ttr, vtr], 1), ytr, np.concatenate([tva, vva], 1), yva)["mae"]}


def main() -> None:
    """``python -m trml_edge.eval.diagnose DATA CLIP_DIR``: the valid-split probes of a pretrained CLIP."""
    import argparse
    import json

    from trml_edge.model.backbone import build_clip, image_size

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("data", type=Path)
    ap.add_argument("clip", type=Path, help="open_clip local dir (open_clip_config.json + open_clip_model.safetensors)")
    args = ap.parse_args()
    cfg = json.loads((args.clip / "open_clip_config.json").read_text())["model_cfg"]
    clip = build_clip(cfg, args.clip / "open_clip_model.safetensors")
    print(json.dumps({k: round(v, 3) for k, v in FoundationProbe(args.data, image_size(cfg))(clip).items()}))


if __name__ == "__main__":
    main()
