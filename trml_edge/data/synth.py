"""A deterministic synthetic benchmark that behaves like multimodal sentiment data (CMU-MOSI style).

The generative process is fixed here and documented in the README; it was set before any method was
compared and is not tuned to favour one.

Per labelled clip:

* a visual sentiment ``z_v`` and a text sentiment ``z_t`` are drawn from a standard bivariate normal with
  correlation ``RHO`` (0.6): related, not equal, so either modality predicts part of the other;
* the label is ``y = clip(0.9 * (z_v + z_t) + eps, -3, 3)`` with ``eps ~ N(0, 0.5^2)`` label noise, rounded
  to a multiple of 1/3 like an average of three integer annotations (so exact zeros occur, as in MOSI);
* the video is 3-6 frames of a rendered face whose mouth curve and brow slant follow ``z_v`` plus
  per-frame expression jitter, with nuisance variation (background, skin tone, position, size, occluders);
* the sentence says how the speaker found a movie, with an adjective, an intensity adverb and sometimes a
  negation whose combined lexicon score is close to ``1.2 * z_t``.

The foundation pool is a separate, larger set of unlabelled image/caption pairs (one face, one caption whose
sentiment phrase follows its expression with the same lexicon: a description, a transcript-like review
sentence, or one plain word; ``pool_caption``). It stands to the labelled set as CLIP's web-scale
pretraining stands to MOSI's 2,199 clips.

The labelled set is written in the MMSA raw layout (``label.csv`` + ``Raw/<video_id>/<clip_id>.mp4``),
so it is read by the same code as a real CMU-MOSI download.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trml_edge.data.video import write_mp4
from trml_edge.errors import DataError, require
from trml_edge.specs import SynthSpec  # noqa: F401  (defined in specs.py; imported from here too)

RHO = 0.6  # correlation between the visual and the text sentiment
LABEL_WEIGHT = 0.9  # y = LABEL_WEIGHT * (z_v + z_t) + noise
LABEL_NOISE = 0.5  # std of the label noise
EXPRESSION_JITTER = 0.3  # per-frame std of the face's expression around z_v
TEXT_SCALE = 1.2  # the sentence's lexicon score aims at TEXT_SCALE * z_t
TEXT_NOISE = 0.35  # how loosely the chosen phrase matches its target score
FRAME_SIZE = 64
SPLIT_FRACTIONS = {"train": 0.58, "valid": 0.10, "test": 0.32}  # MOSI's 1284/229/686

ADJECTIVES = {
    "excellent": 2.5, "amazing": 2.5, "great": 2.0, "enjoyable": 1.2, "good": 1.0, "nice": 1.0,
    "decent": 0.6, "fine": 0.5, "okay": 0.0, "average": 0.0, "ordinary": 0.0, "weak": -0.6,
    "dull": -0.8, "bad": -1.0, "boring": -1.0, "poor": -1.2, "terrible": -2.5, "awful": -2.5,
    "horrible": -2.5,
}
ADVERBS = {"": 1.0, "somewhat ": 0.6, "a bit ": 0.6, "quite ": 1.2, "very ": 1.5, "really ": 1.5,
           "extremely ": 2.0}
NEGATION = -0.5  # "not great" is mildly negative, not the opposite of great
OPENERS = ["", "honestly ", "i think ", "well ", "to be fair ", "so "]
TOPICS = ["movie", "plot", "acting", "ending", "soundtrack", "film", "story", "cast", "dialogue"]
CLOSERS = ["", " overall", " to me", " i guess", " in the end"]
COLORS = {"red": (170, 60, 60), "green": (60, 140, 70), "blue": (60, 80, 170), "grey": (120, 120, 120),
          "yellow": (190, 170, 60), "purple": (120, 60, 140), "teal": (50, 140, 140), "brown": (120, 85, 50)}


def _phrases() -> tuple[list[str], np.ndarray]:
    phrases, scores = [], []
    for adj, s in ADJECTIVES.items():
        for adv, m in ADVERBS.items():
            if s == 0.0 and adv:
                continue  # "very okay" is not something people say
            phrases.append(f"{adv}{adj}")
            scores.append(m * s)
            if s != 0.0 and adv in ("", "very ", "really "):
                phrases.append(f"not {adv}{adj}")
                scores.append(NEGATION * m * s)
    return phrases, np.array(scores)


PHRASES, PHRASE_SCORES = _phrases()


def sentiment_phrase(target: float, rng: np.random.Generator) -> str:
    """A phrase whose lexicon score is near ``target`` (soft nearest match, so wording varies)."""
    logits = -((PHRASE_SCORES - target) ** 2) / (2 * TEXT_NOISE**2)
    p = np.exp(logits - logits.max())
    return PHRASES[rng.choice(len(PHRASES), p=p / p.sum())]


def render_face(expr: float, rng: np.random.Generator, style: dict) -> np.ndarray:
    """One RGB face [64,64,3] whose smile and brows follow ``expr`` (about -3 .. 3)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), style["bg"])
    d = ImageDraw.Draw(img)
    cx = style["cx"] + rng.normal(0, 0.8)
    cy = style["cy"] + rng.normal(0, 0.8)
    r = style["r"]
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=style["skin"])
    smile = np.tanh(expr / 1.5)  # -1 frown .. 1 smile
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * r, cy - 0.2 * r
        d.ellipse([ex - 2, ey - 2, ex + 2, ey + 2], fill=(20, 20, 20))
        # brows: inner end lower when angry/sad, raised when happy
        inner_dy = -smile * 0.12 * r
        d.line([ex - side * 0.25 * r, ey - 0.3 * r + inner_dy * (side < 0) - inner_dy * (side > 0) * 0,
                ex + side * 0.25 * r, ey - 0.3 * r - inner_dy], fill=(30, 20, 10), width=2)
    xs = np.linspace(-0.45 * r, 0.45 * r, 12)
    ys = cy + 0.42 * r - smile * 0.35 * r * (1 - (xs / (0.45 * r)) ** 2)
    d.line(list(zip((cx + xs).tolist(), ys.tolist())), fill=(90, 20, 30), width=2)
    arr = np.asarray(img, dtype=np.int16)
    if rng.random() < 0.15:  # an occluder (a hand, a microphone) over part of the frame
        x0, y0 = rng.integers(0, FRAME_SIZE - 20, size=2)
        arr[y0 : y0 + 20, x0 : x0 + 14] = rng.integers(0, 255, size=3)
    arr = arr + rng.normal(0, 4, size=arr.shape)  # sensor noise
    return np.clip(arr, 0, 255).astype(np.uint8)


def _style(rng: np.random.Generator) -> tuple[dict, str]:
    color = rng.choice(list(COLORS))
    bg = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in COLORS[color])
    tone = rng.uniform(0.6, 1.0)
    style = {
        "bg": bg,
        "skin": (int(235 * tone), int(190 * tone), int(150 * tone)),
        "cx": FRAME_SIZE / 2 + rng.normal(0, 4),
        "cy": FRAME_SIZE / 2 + rng.normal(0, 4),
        "r": rng.uniform(17, 24),
    }
    return style, str(color)


def sentence(z_t: float, rng: np.random.Generator) -> str:
    phrase = sentiment_phrase(TEXT_SCALE * z_t, rng)
    return f"{rng.choice(OPENERS)}the {rng.choice(TOPICS)} was {phrase}{rng.choice(CLOSERS)}"


def generate(out: Path, spec: SynthSpec) -> dict:
    """Write the benchmark to ``out`` and return its summary (also saved as ``synth.json``)."""
    if spec.n < 10:
        raise DataError(f"--n must be at least 10 so every split has clips, got {spec.n}")
    out = Path(out)
    _check_captions(spec.pool_captions)  # before anything is written
    if (out / "label.csv").exists():
        raise DataError(f"{out} already holds a dataset; choose an empty directory or delete it first")
    require("PIL", "train")
    rng = np.random.default_rng(spec.seed)
    cov = np.array([[1.0, RHO], [RHO, 1.0]])
    z = rng.multivariate_normal([0.0, 0.0], cov, size=spec.n)  # (n, 2): z_v, z_t
    noise = rng.normal(0.0, LABEL_NOISE, size=spec.n)
    y = np.clip(LABEL_WEIGHT * (z[:, 0] + z[:, 1]) + noise, -3, 3)
    y = np.round(y * 3) / 3
    splits = rng.permutation(np.repeat(list(SPLIT_FRACTIONS), _split_counts(spec.n)))

    rows = []
    for i in range(spec.n):
        z_v, z_t = float(z[i, 0]), float(z[i, 1])
        style, _ = _style(rng)
        n_frames = int(rng.integers(3, 7))
        frames = np.stack([render_face(z_v + rng.normal(0, EXPRESSION_JITTER), rng, style)
                           for _ in range(n_frames)])
        video_id = f"vid{i // 8:04d}"  # several clips per source video, as in MOSI
        clip_id = str(i % 8)
        write_mp4(out / "Raw" / video_id / f"{clip_id}.mp4", frames)
        rows.append({
            "video_id": video_id, "clip_id": clip_id, "text": sentence(z_t, rng),
            "label": f"{y[i]:.4f}", "label_T": f"{np.clip(1.5 * z_t, -3, 3):.4f}", "label_A": "0.0",
            "label_V": f"{np.clip(1.5 * z_v, -3, 3):.4f}", "annotation": _annotation(y[i]),
            "mode": splits[i],
        })
    tmp = out / ".label.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "label.csv")

    write_pool(out / "pretrain", spec.pool, spec.seed + 1, spec.pool_captions)
    summary = {
        "spec": asdict(spec),
        "rho": RHO, "label_weight": LABEL_WEIGHT, "label_noise": LABEL_NOISE,
        "splits": {s: int((splits == s).sum()) for s in SPLIT_FRACTIONS},
        "empirical_corr_zv_zt": float(np.corrcoef(z[:, 0], z[:, 1])[0, 1]),
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


POOL_CAPTIONS = ("mixed", "face", "speech", "coarse", "v1")  # "v1": the first pool's, to reproduce old results
FACE_TEMPLATES = ["a face that looks {}", "a {} face", "someone looking {}", "a person who seems {}",
                  "a photo of a face that looks {}"]
# the web's plainest captions of a face: a word for its expression, five levels from a scowl to a beam
COARSE = [(-1.5, "a scowling face"), (-0.5, "a frowning face"), (0.5, "a neutral face"), (1.5, "a smiling face"),
          (np.inf, "a beaming face")]


def _check_captions(captions: str) -> None:
    if captions not in POOL_CAPTIONS:
        raise DataError(f"unknown pool captions {captions!r}; choose one of {', '.join(POOL_CAPTIONS)}")


def pool_caption(expr: float, color: str, rng: np.random.Generator, captions: str = "mixed") -> str:
    """The caption of one pool face with expression ``expr``: its phrase follows ``expr`` by the lexicon's rule.

    * ``face``: a description of the face in one of a few phrasings;
    * ``speech``: what the face says, a review sentence built like a transcript (opener, topic, closer);
    * ``coarse``: one word for the expression, five levels ("a smiling face");
    * ``mixed``: any of the three, a third each: the web holds every kind of text next to a face;
    * ``v1``: the first pool's single template, which also names the background colour (a shortcut: the
      colour is far easier to see than the mouth, so the contrastive loss is partly met by colour alone).
    """
    phrase = sentiment_phrase(expr, rng)  # drawn for every kind, so the kinds share one random stream
    if captions == "v1":
        return f"a face that looks {phrase} on a {color} background"
    kind = captions if captions != "mixed" else ("face", "speech", "coarse")[int(rng.integers(3))]
    if kind == "coarse":
        return next(text for upper, text in COARSE if expr < upper)
    if kind == "face":
        return FACE_TEMPLATES[int(rng.integers(len(FACE_TEMPLATES)))].format(phrase)
    return f"{rng.choice(OPENERS)}the {rng.choice(TOPICS)} was {phrase}{rng.choice(CLOSERS)}"


def write_pool(out: Path, n: int, seed: int, captions: str = "mixed") -> None:
    """The unlabelled foundation pool: ``images.npy`` uint8 [n,64,64,3] and ``captions.txt``.

    Its own random stream (``seed``), its own faces and captions: no labelled clip or label is read (a caption
    can equal a labelled sentence by chance, as web text can).
    """
    _check_captions(captions)
    out = Path(out)
    rng = np.random.default_rng(seed)
    images = np.empty((n, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    caption_list = []
    for i in range(n):
        expr = float(np.clip(rng.normal(0, 1.2), -3, 3))
        style, color = _style(rng)
        images[i] = render_face(expr, rng, style)
        caption_list.append(pool_caption(expr, color, rng, captions))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / ".images.tmp.npy", images)
    (out / ".images.tmp.npy").replace(out / "images.npy")
    tmp = out / ".captions.txt.tmp"
    tmp.write_text("\n".join(caption_list) + "\n", encoding="utf-8")
    tmp.replace(out / "captions.txt")


def _split_counts(n: int) -> list[int]:
    counts = [int(round(n * f)) for f in SPLIT_FRACTIONS.values()]
    counts[0] += n - sum(counts)
    return counts


def _annotation(y: float) -> str:
    return "Positive" if y > 0 else "Negative" if y < 0 else "Neutral"
